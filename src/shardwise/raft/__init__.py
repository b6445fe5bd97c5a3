"""Raft: a sans-IO core (:class:`RaftNode`) and the types it exchanges with its host.

Only the pure core is re-exported here; the asyncio host around it is
``shardwise.raft.host``, imported by the services that run one.
"""

from shardwise.raft.messages import (
    MESSAGE_TYPES,
    ConfChange,
    ConfChangeKind,
    EntryKind,
    Membership,
    Message,
)
from shardwise.raft.node import RaftNode
from shardwise.raft.ready import RaftConfig, ReadState, Ready, Role

__all__ = [
    "MESSAGE_TYPES",
    "ConfChange",
    "ConfChangeKind",
    "EntryKind",
    "Membership",
    "Message",
    "RaftConfig",
    "RaftNode",
    "ReadState",
    "Ready",
    "Role",
]
