"""shardwise: a sharded, Raft-replicated key-value store with a distributed SQL layer."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from shardwise.errors import ShardwiseError

if TYPE_CHECKING:
    from shardwise.client import Client, SyncClient

__version__ = "0.1.0"

__all__ = ["Client", "ShardwiseError", "SyncClient", "__version__"]

_LAZY = {"Client", "SyncClient"}


def __getattr__(name: str) -> Any:
    # The client pulls in the network stack and the controller: import it on first use
    # only, so importing any submodule (placement, storage, ...) stays light and no
    # submodule's import can cycle back through this package.
    if name in _LAZY:
        from shardwise import client  # noqa: PLC0415

        return getattr(client, name)
    raise AttributeError(f"module 'shardwise' has no attribute {name!r}")
