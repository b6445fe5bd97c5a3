"""Rules every :class:`~shardwise.storage.interface.RaftStorage` enforces the same way.

Both implementations call these functions, so the file-backed log and the simulator's
in-memory one accept and refuse exactly the same operations. Violations are programming
errors in the Raft layer (a gap in the log, a term going backwards, a second vote in one
term); storage refuses them loudly instead of persisting a log that breaks Raft's
invariants.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Sequence
from typing import Final

from shardwise.errors import (
    LogCompactedError,
    LogUnavailableError,
    SnapshotError,
    StaleSnapshotError,
    StorageError,
)
from shardwise.storage.types import ENTRY_OVERHEAD_BYTES, HardState, LogEntry, SnapshotMeta

MAX_ENTRY_DATA_BYTES: Final = 16 * 1024 * 1024
"""Largest payload one entry may carry. The Raft layer batches commands well below this;
the bound keeps a corrupt length field from asking for an absurd allocation on read."""


def entries_to_append(
    entries: Sequence[LogEntry],
    first: int,
    last: int,
    term_at: Callable[[int], int],
    snapshot: SnapshotMeta | None,
) -> Sequence[LogEntry]:
    """Validate an append and return the entries to write.

    ``first``/``last`` bound the current log and ``term_at`` answers for
    ``first - 1 .. last``. Entries up to the snapshot's index are committed and already
    held (by the snapshot, and by the log until compaction), so they are skipped, never
    rewritten; one that is still in the log must agree with it.
    """
    if not entries:
        return entries
    _check_consecutive(entries)
    start = entries[0].index
    if start < 1:
        raise StorageError(f"log indexes start at 1, got an entry at {start}")
    if start > last + 1:
        raise StorageError(f"append at index {start} would leave a gap after {last}")
    covered = max(first - 1, 0 if snapshot is None else snapshot.index)
    if start <= covered:
        _check_covered_terms(entries, first, min(covered, last), term_at)
        entries = entries[covered + 1 - start :]
        if not entries:
            return entries
        start = covered + 1
    previous_term = term_at(start - 1)
    if entries[0].term < previous_term:
        raise StorageError(
            f"entry {start} has term {entries[0].term}, below term {previous_term} "
            f"of the entry before it"
        )
    return entries


def _check_covered_terms(
    entries: Sequence[LogEntry], first: int, covered: int, term_at: Callable[[int], int]
) -> None:
    """Entries a snapshot covers are committed: a different one at the same index is a
    bug in the caller, and overwriting it would change committed history."""
    start = entries[0].index
    for index in range(max(start, first), min(covered, entries[-1].index) + 1):
        if entries[index - start].term != term_at(index):
            raise StorageError(
                f"entry {index} conflicts with a committed entry the snapshot covers"
            )


def _check_consecutive(entries: Sequence[LogEntry]) -> None:
    """Indexes must increase by one and terms must not decrease within a batch."""
    for before, after in itertools.pairwise(entries):
        if after.index != before.index + 1:
            raise StorageError(f"entries not consecutive: {before.index} then {after.index}")
        if after.term < before.term:
            raise StorageError(f"term decreases from {before.term} to {after.term}")
    for entry in entries:
        if len(entry.data) > MAX_ENTRY_DATA_BYTES:
            raise StorageError(
                f"entry {entry.index} carries {len(entry.data)} bytes, "
                f"over the limit of {MAX_ENTRY_DATA_BYTES}"
            )


def check_term_index(index: int, first: int, last: int) -> None:
    """``term(index)`` is answerable for ``first - 1 .. last``."""
    if index < first - 1:
        raise LogCompactedError(f"index {index} is compacted (log starts at {first})")
    if index > last:
        raise LogUnavailableError(f"index {index} is beyond the last index {last}")


def check_read_range(lo: int, hi: int, first: int, last: int) -> None:
    """``entries(lo, hi)`` needs ``first <= lo <= hi <= last + 1``."""
    if lo > hi:
        raise StorageError(f"invalid range: lo {lo} > hi {hi}")
    if lo < first:
        raise LogCompactedError(f"index {lo} is compacted (log starts at {first})")
    if hi > last + 1:
        raise LogUnavailableError(f"index {hi - 1} is beyond the last index {last}")


def count_within(data_lengths: Iterable[int], max_bytes: int | None) -> int | None:
    """How many leading entries fit in ``max_bytes`` (sized as ``entry_size``), or
    ``None`` for all of them. At least one fits, so that a caller asking for a single
    oversized entry still gets it and makes progress."""
    if max_bytes is None:
        return None
    count = 0
    total = 0
    for length in data_lengths:
        total += length + ENTRY_OVERHEAD_BYTES
        if count > 0 and total > max_bytes:
            break
        count += 1
    return count


def check_hard_state(old: HardState, new: HardState) -> None:
    """A term never goes backwards and a node never changes its vote within a term: either
    would let it vote twice, which Raft's safety rests on never happening."""
    if new.term < 0 or new.commit < 0:
        raise StorageError(f"negative term or commit in {new}")
    if new.term < old.term:
        raise StorageError(f"term would go back from {old.term} to {new.term}")
    if new.term == old.term and old.vote is not None and new.vote != old.vote:
        raise StorageError(f"vote in term {new.term} would change from {old.vote} to {new.vote}")


def check_new_snapshot(meta: SnapshotMeta, current: SnapshotMeta | None) -> None:
    """Only a snapshot strictly newer than the current one may replace it."""
    if meta.index < 0 or meta.term < 0:
        raise SnapshotError(f"negative index or term in {meta}")
    if current is not None and meta.index <= current.index:
        raise StaleSnapshotError(
            f"snapshot at index {meta.index} is not newer than the current one at {current.index}"
        )


def snapshot_matches_log(
    meta: SnapshotMeta, first: int, last: int, term_at: Callable[[int], int]
) -> bool:
    """Whether the log holds the snapshot's last entry, so the entries after it are
    consistent with the snapshot and may be kept (Raft's InstallSnapshot rule)."""
    return first - 1 <= meta.index <= last and term_at(meta.index) == meta.term


def check_compact(index: int, snapshot: SnapshotMeta | None, first: int, last: int) -> bool:
    """Validate ``compact(index)``; return whether there is anything to drop."""
    if snapshot is None or index > snapshot.index:
        covered = 0 if snapshot is None else snapshot.index
        raise StorageError(f"cannot compact to {index}: the snapshot covers only {covered}")
    if index < first:
        return False
    if index > last:
        raise StorageError(f"cannot compact to {index}: the log ends at {last}")
    return True
