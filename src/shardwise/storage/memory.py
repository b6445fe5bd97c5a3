"""In-memory Raft storage for the deterministic simulator.

It keeps two copies of the state: the *current* one, which reads see, and the *durable*
one, which is what a power loss leaves behind. Log mutations are journaled and replayed
onto the durable copy by :meth:`MemoryStorage.sync`, so a sync costs time proportional to
what changed since the last one, not to the length of the log. :meth:`MemoryStorage.crash`
returns the storage a restarted node would find. There is no I/O and no randomness, so a
simulation that uses it replays exactly from its seed.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

from shardwise.errors import CorruptLogError, StorageError
from shardwise.storage import rules
from shardwise.storage.space import DiskFullError
from shardwise.storage.types import (
    EMPTY_HARD_STATE,
    HardState,
    LogEntry,
    SnapshotMeta,
)


class _MemoryLog:
    """Entries ``first .. last`` in a list, plus the term of the entry just before them."""

    __slots__ = ("base_term", "first", "items")

    def __init__(self, first: int = 1, base_term: int = 0, items: list[LogEntry] | None = None):
        self.first = first
        self.base_term = base_term
        self.items: list[LogEntry] = [] if items is None else items

    @property
    def last(self) -> int:
        return self.first + len(self.items) - 1

    def term(self, index: int) -> int:
        if index == self.first - 1:
            return self.base_term
        return self.items[index - self.first].term

    def append(self, entries: Sequence[LogEntry]) -> None:
        # Callers validated the batch: it starts within first .. last + 1.
        del self.items[entries[0].index - self.first :]
        self.items.extend(entries)

    def compact(self, index: int) -> None:
        self.base_term = self.term(index)
        del self.items[: index + 1 - self.first]
        self.first = index + 1

    def reset(self, first: int, base_term: int) -> None:
        self.first = first
        self.base_term = base_term
        self.items = []


_LogOp = Callable[[_MemoryLog], None]


class SimulatedSpace:
    """The free space a :class:`MemoryStorage` pretends to have; tests set it, and it is
    shared by the instances :meth:`MemoryStorage.reopen` makes (it is the disk's)."""

    def __init__(self) -> None:
        self.full = False
        """Writes fail with ``DiskFullError`` (and leave the instance unusable)."""
        self.low = False
        """Free space is below the refusal threshold (``space_low()``)."""
        self.refusals = 0
        """Writes refused for want of room."""


class MemoryStorage:
    """A :class:`~shardwise.storage.interface.RaftStorage` that lives in memory.

    A crash (:meth:`crash`) loses every append and hard state not yet synced, which is the
    worst a real disk may do; a snapshot is durable as soon as :meth:`save_snapshot`
    returns, as it is on disk.
    """

    def __init__(self, space: SimulatedSpace | None = None) -> None:
        self.space = space or SimulatedSpace()
        self._failure: DiskFullError | None = None
        self._hard_state = EMPTY_HARD_STATE
        self._durable_hard_state = EMPTY_HARD_STATE
        self._snapshot: tuple[SnapshotMeta, bytes] | None = None
        self._log = _MemoryLog()
        self._durable_log = _MemoryLog()
        self._pending: list[_LogOp] = []
        self._closed = False
        self.syncs = 0
        """How many times :meth:`sync` had something to make durable (an fsync on disk)."""

    # --- reads ----------------------------------------------------------------------------

    def hard_state(self) -> HardState:
        self._check_open()
        return self._hard_state

    def snapshot_meta(self) -> SnapshotMeta | None:
        self._check_open()
        return None if self._snapshot is None else self._snapshot[0]

    def first_index(self) -> int:
        self._check_open()
        return self._log.first

    def last_index(self) -> int:
        self._check_open()
        return self._log.last

    def term(self, index: int) -> int:
        self._check_open()
        rules.check_term_index(index, self._log.first, self._log.last)
        return self._log.term(index)

    def entries(self, lo: int, hi: int, max_bytes: int | None = None) -> list[LogEntry]:
        self._check_open()
        log = self._log
        rules.check_read_range(lo, hi, log.first, log.last)
        start, stop = lo - log.first, hi - log.first
        sizes = (len(entry.data) for entry in itertools.islice(log.items, start, stop))
        count = rules.count_within(sizes, max_bytes)
        return log.items[start : stop if count is None else start + count]

    def load_snapshot(self) -> tuple[SnapshotMeta, bytes] | None:
        self._check_open()
        return self._snapshot

    # --- writes ---------------------------------------------------------------------------

    def append(self, entries: Sequence[LogEntry]) -> None:
        self._check_open()
        log = self._log
        batch = tuple(
            rules.entries_to_append(entries, log.first, log.last, log.term, self.snapshot_meta())
        )
        if batch:
            self._check_room()
            self._apply(lambda target: target.append(batch))

    def set_hard_state(self, hard_state: HardState) -> None:
        self._check_open()
        rules.check_hard_state(self._hard_state, hard_state)
        self._hard_state = hard_state

    def sync(self) -> None:
        self._check_open()
        if not self._pending and self._durable_hard_state == self._hard_state:
            return
        self._check_room()
        for op in self._pending:
            op(self._durable_log)
        self._pending.clear()
        self._durable_hard_state = self._hard_state
        self.syncs += 1

    def save_snapshot(self, meta: SnapshotMeta, data: bytes) -> None:
        self._check_open()
        rules.check_new_snapshot(meta, self.snapshot_meta())
        self._check_room()
        self._snapshot = (meta, bytes(data))
        log = self._log
        if not rules.snapshot_matches_log(meta, log.first, log.last, log.term):
            # The durable copy keeps its old log until the next sync, as a disk would;
            # a crash before then reconciles it with the snapshot (see crash()).
            self._apply(lambda target: target.reset(meta.index + 1, meta.term))

    def compact(self, index: int) -> None:
        self._check_open()
        log = self._log
        if rules.check_compact(index, self.snapshot_meta(), log.first, log.last):
            self._apply(lambda target: target.compact(index))

    def close(self) -> None:
        self._closed = True

    # --- space ----------------------------------------------------------------------------

    def space_low(self) -> bool:
        # Not ``full``: that models a disk filled at once (by another process), past
        # the refusal threshold, which is what the reserve and reopen() are for.
        return self.space.low

    def room_to_resume(self) -> bool:
        return not self.space.full

    def reopen(self) -> MemoryStorage:
        """What a restart would find (:meth:`crash`): the way on after ``DiskFullError``;
        raises it again while the simulated disk is still full."""
        if self.space.full:
            raise DiskFullError("the simulated disk is still full")
        self._failure = None
        return self.crash()

    # --- simulation -----------------------------------------------------------------------

    def crash(self) -> MemoryStorage:
        """The storage a node finds after losing power now: only what was durable.

        This instance is closed; the new one starts from the snapshot (if any) followed by
        the durable entries after it, exactly as :class:`FileStorage` does on open.
        """
        if self._closed:
            raise StorageError("storage is closed")
        self._closed = True
        durable = self._durable_log
        fresh = MemoryStorage(self.space)
        fresh._snapshot = self._snapshot
        fresh._hard_state = fresh._durable_hard_state = self._durable_hard_state
        fresh._log = _restart_log(durable, None if self._snapshot is None else self._snapshot[0])
        fresh._durable_log = _MemoryLog(fresh._log.first, fresh._log.base_term)
        fresh._durable_log.items = list(fresh._log.items)
        _check_commit(fresh._hard_state, fresh._log.last)
        return fresh

    # --- internals ------------------------------------------------------------------------

    def _apply(self, op: _LogOp) -> None:
        """Apply a log mutation now and journal it for the durable copy."""
        op(self._log)
        self._pending.append(op)

    def _check_open(self) -> None:
        if self._closed:
            raise StorageError("storage is closed")
        if self._failure is not None:
            raise DiskFullError(f"unusable after a failed write: {self._failure}")

    def _check_room(self) -> None:
        """A write on a full simulated disk fails and, as on disk, spoils the instance."""
        if self.space.full:
            self.space.refusals += 1
            self._failure = DiskFullError("the simulated disk is full")
            raise self._failure


def _restart_log(durable: _MemoryLog, snapshot: SnapshotMeta | None) -> _MemoryLog:
    """The log after a restart: the entries after the snapshot if the durable log agrees
    with it, or nothing if it does not (the snapshot was installed but the log discard
    that goes with it was never synced)."""
    if snapshot is None:
        return _MemoryLog(durable.first, durable.base_term, list(durable.items))
    if rules.snapshot_matches_log(snapshot, durable.first, durable.last, durable.term):
        kept = durable.items[snapshot.index + 1 - durable.first :]
        return _MemoryLog(snapshot.index + 1, snapshot.term, kept)
    return _MemoryLog(snapshot.index + 1, snapshot.term)


def _check_commit(hard_state: HardState, last: int) -> None:
    """A durable commit index beyond the durable log means entries were lost."""
    if hard_state.commit > last:
        raise CorruptLogError(f"hard state commit {hard_state.commit} is beyond the log ({last})")
