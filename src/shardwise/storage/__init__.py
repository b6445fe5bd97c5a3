"""Durable storage for Raft: the log, the hard state and snapshots.

:class:`RaftStorage` is the seam the Raft host persists through; :class:`FileStorage`
(``storage.file``) implements it on disk and :class:`MemoryStorage` in memory for the
simulator; only the pure parts are re-exported here. See
``DESIGN.md`` in this package for the file formats and the recovery rules.
"""

from shardwise.storage.interface import RaftStorage, StoredState, load_state
from shardwise.storage.memory import MemoryStorage
from shardwise.storage.types import (
    EMPTY_HARD_STATE,
    ENTRY_OVERHEAD_BYTES,
    HardState,
    LogEntry,
    SnapshotMeta,
    entry_size,
)

__all__ = [
    "EMPTY_HARD_STATE",
    "ENTRY_OVERHEAD_BYTES",
    "HardState",
    "LogEntry",
    "MemoryStorage",
    "RaftStorage",
    "SnapshotMeta",
    "StoredState",
    "entry_size",
    "load_state",
]
