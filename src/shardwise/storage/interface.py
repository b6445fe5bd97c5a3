"""The seam between a Raft host and durable storage.

The Raft core is sans-IO: it hands its host a ``Ready`` holding entries to persist, a
hard state and perhaps a snapshot. The host persists them through :class:`RaftStorage`
and only then sends the messages of that ``Ready``::

    storage.append(ready.entries)        # may overwrite a conflicting suffix
    storage.set_hard_state(ready.hard_state)
    storage.sync()                       # one fsync for all of the above: group commit

Two implementations share this contract and one test suite: ``FileStorage`` (segment
files on disk) and ``MemoryStorage`` (for the deterministic simulator, where a crash loses
whatever was not synced).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple, Protocol

from shardwise.storage.types import HardState, LogEntry, SnapshotMeta


class RaftStorage(Protocol):
    """Durable Raft state: a log of entries, a hard state and at most one snapshot.

    **Durability.** When :meth:`sync` returns, everything appended or set before it
    survives a crash. A crash may lose any write not yet synced, but what survives is
    always a log Raft could have held: the synced log, possibly cut where an unsynced
    append replaced a suffix, followed by a prefix (possibly empty) of the unsynced
    entries; and the old hard state or the new one, never a mixture.
    :meth:`save_snapshot` is durable when it returns, without :meth:`sync`.

    **Reads** see every write made so far, synced or not.

    **Indexes.** The log holds entries ``first_index() .. last_index()``; it is empty when
    ``last_index() == first_index() - 1``. Without a snapshot, ``first_index()`` is 1.
    ``term(first_index() - 1)`` is always answerable: it is the term of the last
    compacted entry (0 at index 0). After a restart the log starts right after the
    snapshot: entries a snapshot covers are not served once the process restarts, even if
    :meth:`compact` was never called.

    **Concurrency.** One owner uses an instance at a time. A host that runs :meth:`sync`
    in a worker thread (an fsync blocks) must not call anything else until it returns.

    **Errors.** Reading below the log raises ``LogCompactedError`` (the leader sends the
    snapshot instead); reading above it raises ``LogUnavailableError``. Misuse such as an
    append that would leave a gap raises ``StorageError``; a damaged log found at open
    raises ``CorruptLogError``, a damaged snapshot ``SnapshotError``. A write that finds
    no room raises ``DiskFullError`` and, like any failed write, leaves the instance
    unusable: :meth:`reopen` once :meth:`room_to_resume`.
    """

    def hard_state(self) -> HardState:
        """The current hard state (``EMPTY_HARD_STATE`` if none was ever set)."""
        ...

    def snapshot_meta(self) -> SnapshotMeta | None:
        """Metadata of the current snapshot, or ``None`` if there is none."""
        ...

    def first_index(self) -> int:
        """Index of the first entry available (``snapshot index + 1`` right after open)."""
        ...

    def last_index(self) -> int:
        """Index of the last entry, or ``first_index() - 1`` if the log is empty."""
        ...

    def term(self, index: int) -> int:
        """Term of the entry at ``index``, for ``first_index() - 1 <= index <= last_index()``."""
        ...

    def entries(self, lo: int, hi: int, max_bytes: int | None = None) -> list[LogEntry]:
        """Entries ``lo .. hi - 1``, stopping early once their total size exceeds a limit.

        Sizes are measured by ``entry_size``. The result holds at least one entry when
        ``lo < hi``, even if that entry alone exceeds ``max_bytes``, so a caller always
        makes progress. Requires ``first_index() <= lo <= hi <= last_index() + 1``.
        """
        ...

    def load_snapshot(self) -> tuple[SnapshotMeta, bytes] | None:
        """The current snapshot's metadata and data, or ``None`` if there is none."""
        ...

    def append(self, entries: Sequence[LogEntry]) -> None:
        """Append consecutive entries, replacing any entries at or after ``entries[0].index``.

        The first entry's index may be at most ``last_index() + 1`` (a gap is a
        ``StorageError``); if it is lower, the log is truncated there first (a conflicting
        suffix is overwritten). Entries up to the snapshot's index are committed: they are
        skipped, and one that disagrees with the log raises ``StorageError``. Terms must
        not decrease along the log. Durable only after :meth:`sync`.
        """
        ...

    def set_hard_state(self, hard_state: HardState) -> None:
        """Replace the hard state. Durable only after :meth:`sync`."""
        ...

    def sync(self) -> None:
        """Make every append and hard state set so far durable, with as few fsyncs as
        possible (group commit: one for the log, and the hard state only if it changed)."""
        ...

    def save_snapshot(self, meta: SnapshotMeta, data: bytes) -> None:
        """Durably store a snapshot newer than the current one, and reconcile the log.

        If the log holds ``meta.index`` with ``meta.term``, entries after it are kept (a
        snapshot taken locally); otherwise the whole log is discarded (a snapshot from the
        leader replaces a log that disagrees with it). Entries up to ``meta.index`` stay
        readable until :meth:`compact`. A snapshot not newer than the current one raises
        ``StaleSnapshotError``.
        """
        ...

    def compact(self, index: int) -> None:
        """Drop entries up to and including ``index``; ``first_index()`` becomes ``index+1``.

        ``index`` must be covered by the snapshot (``<= snapshot_meta().index``), else
        ``StorageError``; compacting below ``first_index()`` does nothing. Storage frees
        disk a whole segment at a time, but reads honour the exact index at once.
        """
        ...

    def close(self) -> None:
        """Release files and locks. Does not sync: call :meth:`sync` first if needed."""
        ...

    def space_low(self) -> bool:
        """Whether free space is below the threshold past which new proposals are refused
        (``space.py``). Cheap (looks at the file system at a bounded rate), and the one
        call that may run while :meth:`sync` does in another thread."""
        ...

    def room_to_resume(self) -> bool:
        """Whether, after ``DiskFullError``, there is room again to :meth:`reopen`."""
        ...

    def reopen(self) -> RaftStorage:
        """Close this instance and return the storage a restart would find, with what it
        found made durable. The way on after a write failed with ``DiskFullError`` (which
        leaves an instance unusable, as any failed write does); raises ``DiskFullError``
        while there is still no room."""
        ...


class StoredState(NamedTuple):
    """What a Raft node starts from: hard state, snapshot, and the entries after it."""

    hard_state: HardState
    snapshot: tuple[SnapshotMeta, bytes] | None
    entries: list[LogEntry]


def load_state(storage: RaftStorage) -> StoredState:
    """Everything a restarting node needs, in one call (reads the whole log).

    Entries start right after the snapshot, whether or not the log was compacted to it.
    """
    snapshot = storage.load_snapshot()
    lo = (
        storage.first_index()
        if snapshot is None
        else max(storage.first_index(), snapshot[0].index + 1)
    )
    entries = storage.entries(lo, storage.last_index() + 1)
    return StoredState(storage.hard_state(), snapshot, entries)
