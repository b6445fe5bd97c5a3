"""Raft: a sans-IO core (:class:`RaftNode`) and the types it exchanges with its host."""

from shardwise.raft.host import HostOptions, HostStatus, RaftHost
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
    "HostOptions",
    "HostStatus",
    "Membership",
    "Message",
    "RaftConfig",
    "RaftHost",
    "RaftNode",
    "ReadState",
    "Ready",
    "Role",
]
