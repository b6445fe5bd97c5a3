"""shardwise: a sharded, Raft-replicated key-value store with a distributed SQL layer."""

from shardwise.errors import ShardwiseError

__version__ = "0.1.0"

__all__ = ["ShardwiseError", "__version__"]
