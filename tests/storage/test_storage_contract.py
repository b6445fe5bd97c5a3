"""The RaftStorage contract, run against FileStorage (with and without its cache) and
MemoryStorage alike: both must accept and refuse exactly the same operations."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from shardwise.errors import (
    LogCompactedError,
    LogUnavailableError,
    SnapshotError,
    StaleSnapshotError,
    StorageError,
)
from shardwise.storage import (
    EMPTY_HARD_STATE,
    ENTRY_OVERHEAD_BYTES,
    HardState,
    LogEntry,
    MemoryStorage,
    RaftStorage,
    SnapshotMeta,
    entry_size,
    load_state,
)
from shardwise.storage.file import FileStorage
from shardwise.storage.rules import MAX_ENTRY_DATA_BYTES


class Harness:
    """One storage under test, plus the way it comes back after a restart.

    For ``FileStorage`` a restart is close and reopen; for ``MemoryStorage`` it is a
    crash. Either way only what was synced is guaranteed to be back, which is all these
    tests rely on.
    """

    def __init__(self, kind: str, directory: Path) -> None:
        self.kind = kind
        self.directory = directory
        self.storage: RaftStorage = self._open()

    def _open(self) -> RaftStorage:
        if self.kind == "memory":
            return MemoryStorage()
        # Small segments so that every test also crosses segment boundaries; without the
        # tail cache every read goes to the files.
        cache = 0 if self.kind == "file-nocache" else 1 << 20
        return FileStorage(self.directory, max_segment_bytes=300, tail_cache_bytes=cache)

    def restart(self) -> RaftStorage:
        """Sync, then restart the storage as a node would after a crash."""
        self.storage.sync()
        if isinstance(self.storage, MemoryStorage):
            self.storage = self.storage.crash()
        else:
            self.storage.close()
            self.storage = self._open()
        return self.storage


@pytest.fixture(params=["file", "file-nocache", "memory"])
def harness(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Harness]:
    under_test = Harness(request.param, tmp_path / "node")
    yield under_test
    under_test.storage.close()


@pytest.fixture
def storage(harness: Harness) -> RaftStorage:
    return harness.storage


def make_entries(lo: int, hi: int, term: int, size: int = 20) -> list[LogEntry]:
    """Entries ``lo .. hi - 1`` whose data names them, so a stale entry is visible."""
    return [LogEntry(i, term, f"{i}:{term}:".encode().ljust(size, b".")) for i in range(lo, hi)]


def all_entries(storage: RaftStorage) -> list[LogEntry]:
    return storage.entries(storage.first_index(), storage.last_index() + 1)


def test_both_implementations_satisfy_the_protocol() -> None:
    # Checked by mypy: assignment to the Protocol type fails if a signature drifts.
    implementations: list[type[RaftStorage]] = [FileStorage, MemoryStorage]
    assert len(implementations) == 2


def test_empty_storage(storage: RaftStorage) -> None:
    assert storage.first_index() == 1
    assert storage.last_index() == 0
    assert storage.term(0) == 0
    assert storage.entries(1, 1) == []
    assert storage.hard_state() == EMPTY_HARD_STATE
    assert storage.snapshot_meta() is None
    assert storage.load_snapshot() is None


def test_append_then_read(storage: RaftStorage) -> None:
    entries = make_entries(1, 11, term=1) + make_entries(11, 21, term=3)
    storage.append(entries[:7])
    storage.append(entries[7:])
    assert (storage.first_index(), storage.last_index()) == (1, 20)
    assert all_entries(storage) == entries
    assert storage.entries(5, 9) == entries[4:8]
    assert storage.entries(20, 21) == entries[19:]
    assert [storage.term(i) for i in range(0, 21)] == [0] + [1] * 10 + [3] * 10


def test_reads_outside_the_log_are_refused(storage: RaftStorage) -> None:
    storage.append(make_entries(1, 6, term=1))
    with pytest.raises(LogUnavailableError):
        storage.term(6)
    with pytest.raises(LogUnavailableError):
        storage.entries(1, 7)
    with pytest.raises(LogCompactedError):
        storage.entries(0, 3)
    with pytest.raises(StorageError):
        storage.entries(4, 3)


def test_max_bytes_limits_but_always_returns_one_entry(storage: RaftStorage) -> None:
    entries = make_entries(1, 11, term=1, size=30)
    storage.append(entries)
    one = entry_size(entries[0])
    assert one == 30 + ENTRY_OVERHEAD_BYTES
    assert storage.entries(1, 11, max_bytes=0) == entries[:1]
    assert storage.entries(1, 11, max_bytes=one) == entries[:1]
    assert storage.entries(1, 11, max_bytes=3 * one) == entries[:3]
    assert storage.entries(1, 11, max_bytes=3 * one + one - 1) == entries[:3]
    assert storage.entries(4, 11, max_bytes=10 * one) == entries[3:]
    assert storage.entries(2, 5, max_bytes=100 * one) == entries[1:4]
    assert storage.entries(1, 11, max_bytes=None) == entries


def test_overwriting_a_conflicting_suffix(storage: RaftStorage) -> None:
    storage.append(make_entries(1, 11, term=1))
    storage.append(make_entries(6, 9, term=2))
    assert storage.last_index() == 8
    assert all_entries(storage) == make_entries(1, 6, term=1) + make_entries(6, 9, term=2)
    storage.append(make_entries(9, 12, term=2))
    assert [storage.term(i) for i in range(1, 12)] == [1] * 5 + [2] * 6


def test_overwriting_the_whole_log(storage: RaftStorage) -> None:
    storage.append(make_entries(1, 11, term=1))
    storage.append(make_entries(1, 3, term=4))
    assert all_entries(storage) == make_entries(1, 3, term=4)


@pytest.mark.parametrize(
    ("batch", "reason"),
    [
        (make_entries(7, 9, term=1), "gap after the last entry"),
        (make_entries(0, 2, term=1), "index 0"),
        ([*make_entries(6, 7, term=1), *make_entries(8, 9, term=1)], "not consecutive"),
        ([*make_entries(6, 7, term=2), *make_entries(7, 8, term=1)], "term decreases in batch"),
        (make_entries(3, 4, term=1), "term below the entry before"),
    ],
)
def test_invalid_appends_are_refused(
    storage: RaftStorage, batch: list[LogEntry], reason: str
) -> None:
    storage.append(make_entries(1, 3, term=2))
    storage.append(make_entries(3, 6, term=2))
    with pytest.raises(StorageError):
        storage.append(batch)
    assert all_entries(storage) == make_entries(1, 6, term=2), reason


def test_an_oversized_entry_is_refused(storage: RaftStorage) -> None:
    with pytest.raises(StorageError):
        storage.append([LogEntry(1, 1, bytes(MAX_ENTRY_DATA_BYTES + 1))])
    assert storage.last_index() == 0


def test_empty_append_does_nothing(storage: RaftStorage) -> None:
    storage.append([])
    assert storage.last_index() == 0


def test_synced_state_survives_a_restart(harness: Harness) -> None:
    entries = make_entries(1, 41, term=2)
    harness.storage.append(entries)
    harness.storage.set_hard_state(HardState(term=2, vote="n1", commit=30))
    storage = harness.restart()
    assert all_entries(storage) == entries
    assert storage.hard_state() == HardState(term=2, vote="n1", commit=30)
    storage.append(make_entries(41, 43, term=2))
    assert harness.restart().last_index() == 42


def test_hard_state_rules(storage: RaftStorage) -> None:
    storage.set_hard_state(HardState(term=3, vote="a", commit=0))
    storage.set_hard_state(HardState(term=3, vote="a", commit=0))
    with pytest.raises(StorageError):
        storage.set_hard_state(HardState(term=3, vote="b"))
    with pytest.raises(StorageError):
        storage.set_hard_state(HardState(term=2))
    storage.set_hard_state(HardState(term=4, vote=None))
    storage.set_hard_state(HardState(term=4, vote="b"))
    assert storage.hard_state() == HardState(term=4, vote="b")


def test_snapshot_save_and_load(harness: Harness) -> None:
    storage = harness.storage
    storage.append(make_entries(1, 11, term=1))
    meta = SnapshotMeta(index=6, term=1, config=b"members:a,b,c")
    storage.save_snapshot(meta, b"state machine at 6")
    assert storage.snapshot_meta() == meta
    assert storage.load_snapshot() == (meta, b"state machine at 6")
    # A snapshot that matches the log keeps it whole until compaction.
    assert (storage.first_index(), storage.last_index()) == (1, 10)
    restarted = harness.restart()
    assert restarted.load_snapshot() == (meta, b"state machine at 6")
    assert (restarted.first_index(), restarted.last_index()) == (7, 10)
    assert restarted.term(6) == 1
    assert all_entries(restarted) == make_entries(7, 11, term=1)


def test_a_snapshot_that_disagrees_with_the_log_discards_it(harness: Harness) -> None:
    storage = harness.storage
    storage.append(make_entries(1, 11, term=1))
    storage.save_snapshot(SnapshotMeta(index=8, term=3), b"from the leader")
    assert (storage.first_index(), storage.last_index()) == (9, 8)
    assert storage.term(8) == 3
    storage.append(make_entries(9, 12, term=3))
    restarted = harness.restart()
    assert all_entries(restarted) == make_entries(9, 12, term=3)


def test_a_snapshot_beyond_the_log_discards_it(harness: Harness) -> None:
    harness.storage.append(make_entries(1, 4, term=1))
    harness.storage.save_snapshot(SnapshotMeta(index=20, term=2), b"")
    assert (harness.storage.first_index(), harness.storage.last_index()) == (21, 20)
    restarted = harness.restart()
    assert (restarted.first_index(), restarted.last_index()) == (21, 20)
    assert restarted.term(20) == 2


def test_stale_snapshots_are_refused(storage: RaftStorage) -> None:
    storage.append(make_entries(1, 11, term=1))
    storage.save_snapshot(SnapshotMeta(index=5, term=1), b"five")
    with pytest.raises(StaleSnapshotError):
        storage.save_snapshot(SnapshotMeta(index=5, term=1), b"five again")
    with pytest.raises(StaleSnapshotError):
        storage.save_snapshot(SnapshotMeta(index=4, term=1), b"four")
    with pytest.raises(SnapshotError):
        storage.save_snapshot(SnapshotMeta(index=-1, term=1), b"")
    assert storage.load_snapshot() == (SnapshotMeta(index=5, term=1), b"five")


def test_compaction(harness: Harness) -> None:
    storage = harness.storage
    storage.append(make_entries(1, 6, term=1) + make_entries(6, 31, term=2))
    with pytest.raises(StorageError):
        storage.compact(3)  # no snapshot covers it yet
    storage.save_snapshot(SnapshotMeta(index=20, term=2), b"twenty")
    with pytest.raises(StorageError):
        storage.compact(21)
    storage.compact(5)
    assert storage.first_index() == 6
    assert storage.term(5) == 1
    with pytest.raises(LogCompactedError):
        storage.term(4)
    with pytest.raises(LogCompactedError):
        storage.entries(5, 7)
    storage.compact(3)  # already compacted: nothing to do
    storage.compact(20)
    assert (storage.first_index(), storage.last_index(), storage.term(20)) == (21, 30, 2)
    assert all_entries(storage) == make_entries(21, 31, term=2)
    storage.append(make_entries(31, 33, term=2))
    assert all_entries(harness.restart()) == make_entries(21, 33, term=2)


def test_appends_a_snapshot_covers_are_skipped(storage: RaftStorage) -> None:
    storage.append(make_entries(1, 11, term=1))
    storage.save_snapshot(SnapshotMeta(index=8, term=1), b"")
    storage.compact(8)
    storage.append(make_entries(5, 13, term=1))
    assert (storage.first_index(), storage.last_index()) == (9, 12)
    assert all_entries(storage) == make_entries(9, 13, term=1)


def test_entries_a_snapshot_covers_are_never_rewritten(storage: RaftStorage) -> None:
    storage.append(make_entries(1, 11, term=1))
    storage.save_snapshot(SnapshotMeta(index=6, term=1), b"")
    storage.append(make_entries(4, 9, term=1) + make_entries(9, 10, term=2))
    assert all_entries(storage) == make_entries(1, 9, term=1) + make_entries(9, 10, term=2)
    with pytest.raises(StorageError, match="committed"):
        storage.append(make_entries(5, 8, term=2))
    assert storage.last_index() == 9


def test_overwrite_right_after_compaction(storage: RaftStorage) -> None:
    storage.append(make_entries(1, 11, term=1))
    storage.save_snapshot(SnapshotMeta(index=6, term=1), b"")
    storage.compact(6)
    storage.append(make_entries(7, 9, term=2))
    assert all_entries(storage) == make_entries(7, 9, term=2)
    with pytest.raises(StorageError):
        storage.append(make_entries(7, 8, term=0))  # below term(6)


def test_closed_storage_refuses_use(storage: RaftStorage) -> None:
    storage.close()
    with pytest.raises(StorageError):
        storage.last_index()
    with pytest.raises(StorageError):
        storage.append(make_entries(1, 2, term=1))
    storage.close()  # closing twice is harmless


def test_load_state_gives_what_a_node_starts_from(harness: Harness) -> None:
    storage = harness.storage
    assert load_state(storage) == (EMPTY_HARD_STATE, None, [])
    storage.append(make_entries(1, 11, term=2))
    storage.set_hard_state(HardState(term=2, vote="a", commit=9))
    storage.save_snapshot(SnapshotMeta(index=4, term=2), b"at four")
    expected = (HardState(term=2, vote="a", commit=9), (SnapshotMeta(4, 2), b"at four"))
    # Not compacted yet, but entries covered by the snapshot are left out all the same.
    assert load_state(storage) == (*expected, make_entries(5, 11, term=2))
    assert load_state(harness.restart()) == (*expected, make_entries(5, 11, term=2))
