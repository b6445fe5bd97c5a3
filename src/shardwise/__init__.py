"""shardwise: a sharded, Raft-replicated key-value store with a distributed SQL layer."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from shardwise.errors import ShardwiseError

if TYPE_CHECKING:
    from shardwise.client import Client, SyncClient
    from shardwise.clusterfile import connect, connect_async
    from shardwise.embedded import EmbeddedCluster

__version__ = "0.1.0"

__all__ = [
    "Client",
    "EmbeddedCluster",
    "ShardwiseError",
    "SyncClient",
    "__version__",
    "connect",
    "connect_async",
]

_LAZY = {
    "Client": "client",
    "SyncClient": "client",
    "connect": "clusterfile",
    "connect_async": "clusterfile",
    "EmbeddedCluster": "embedded",
}


def __getattr__(name: str) -> Any:
    # The client pulls in the network stack and the controller: import it on first use
    # only, so importing any submodule (placement, storage, ...) stays light and no
    # submodule's import can cycle back through this package.
    if name in _LAZY:
        import importlib  # noqa: PLC0415

        return getattr(importlib.import_module(f"shardwise.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'shardwise' has no attribute {name!r}")
