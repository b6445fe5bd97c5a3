"""MemoryStorage as the simulator uses it: a crash keeps exactly what was synced."""

from __future__ import annotations

import pytest

from shardwise.errors import CorruptLogError, StorageError
from shardwise.storage import HardState, LogEntry, MemoryStorage, SnapshotMeta


def make_entries(lo: int, hi: int, term: int) -> list[LogEntry]:
    return [LogEntry(i, term, f"{i}@{term}".encode()) for i in range(lo, hi)]


def log_of(storage: MemoryStorage) -> list[LogEntry]:
    return storage.entries(storage.first_index(), storage.last_index() + 1)


def test_a_crash_loses_unsynced_appends_and_hard_state() -> None:
    storage = MemoryStorage()
    storage.append(make_entries(1, 6, term=1))
    storage.set_hard_state(HardState(term=1, vote="a", commit=3))
    storage.sync()
    storage.append(make_entries(6, 9, term=1))
    storage.set_hard_state(HardState(term=2, vote="b", commit=7))
    restarted = storage.crash()
    assert log_of(restarted) == make_entries(1, 6, term=1)
    assert restarted.hard_state() == HardState(term=1, vote="a", commit=3)


def test_a_crash_undoes_an_unsynced_overwrite() -> None:
    storage = MemoryStorage()
    storage.append(make_entries(1, 6, term=1))
    storage.sync()
    storage.append(make_entries(3, 4, term=2))
    assert storage.last_index() == 3
    assert log_of(storage.crash()) == make_entries(1, 6, term=1)


def test_synced_overwrites_and_compactions_survive() -> None:
    storage = MemoryStorage()
    storage.append(make_entries(1, 11, term=1))
    storage.append(make_entries(8, 12, term=2))
    storage.save_snapshot(SnapshotMeta(6, 1), b"six")
    storage.compact(4)
    storage.sync()
    restarted = storage.crash()
    # After a restart the log starts after the snapshot, whatever was compacted.
    assert log_of(restarted) == make_entries(7, 8, term=1) + make_entries(8, 12, term=2)
    assert restarted.load_snapshot() == (SnapshotMeta(6, 1), b"six")


def test_a_snapshot_is_durable_without_sync_and_reconciles_the_log() -> None:
    storage = MemoryStorage()
    storage.append(make_entries(1, 11, term=1))
    storage.sync()
    storage.save_snapshot(SnapshotMeta(8, 5), b"from the leader")  # disagrees: discards
    storage.append(make_entries(9, 10, term=5))
    restarted = storage.crash()
    assert restarted.snapshot_meta() == SnapshotMeta(8, 5)
    # The discard was never synced, but the old log disagrees with the snapshot.
    assert (restarted.first_index(), restarted.last_index()) == (9, 8)


def test_sync_counts_only_real_work() -> None:
    storage = MemoryStorage()
    storage.sync()
    assert storage.syncs == 0
    storage.append(make_entries(1, 50, term=1))
    storage.set_hard_state(HardState(term=1))
    storage.sync()
    storage.sync()
    assert storage.syncs == 1


def test_the_crashed_instance_is_closed() -> None:
    storage = MemoryStorage()
    storage.crash()
    with pytest.raises(StorageError):
        storage.append(make_entries(1, 2, term=1))


def test_a_commit_beyond_the_durable_log_is_reported() -> None:
    storage = MemoryStorage()
    storage.set_hard_state(HardState(term=1, commit=5))  # the host forgot to append
    storage.sync()
    with pytest.raises(CorruptLogError):
        storage.crash()


def test_repeated_crashes_are_deterministic() -> None:
    def run() -> list[object]:
        storage = MemoryStorage()
        seen: list[object] = []
        for round_number in range(1, 6):
            start = storage.last_index() + 1
            storage.append(make_entries(start, start + round_number, term=round_number))
            if round_number % 2:
                storage.sync()
            storage = storage.crash()
            seen.append((storage.last_index(), log_of(storage)))
        return seen

    assert run() == run()
    assert run()[-1] == (9, make_entries(1, 2, 1) + make_entries(2, 5, 3) + make_entries(5, 10, 5))
