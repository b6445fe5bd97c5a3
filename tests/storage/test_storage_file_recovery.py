"""FileStorage on disk: segments, torn tails, corruption, snapshots and atomic files.

Damage is made by editing the files between a close and an open, which is what a crash
or a failing disk leaves for the next open to find.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from shardwise.errors import CorruptLogError, SnapshotError, StorageError
from shardwise.storage import HardState, LogEntry, SnapshotMeta
from shardwise.storage.file import FileStorage
from shardwise.storage.hardstate import HARD_STATE_NAME, encode_hard_state
from shardwise.storage.record import encode_record, scan_segment
from shardwise.storage.recovery import segment_name
from shardwise.storage.segments import MAX_SEGMENT_BYTES, PREALLOCATE_BYTES
from shardwise.storage.snapshot import snapshot_name


def make_entries(lo: int, hi: int, term: int, size: int = 100) -> list[LogEntry]:
    return [LogEntry(i, term, f"{i}:{term}:".encode().ljust(size, b"~")) for i in range(lo, hi)]


def write_log(
    directory: Path, entries: list[LogEntry], max_segment_bytes: int = 1 << 20
) -> list[str]:
    """Append and sync ``entries`` into a fresh storage; return its segment names."""
    with FileStorage(directory, max_segment_bytes=max_segment_bytes) as storage:
        storage.append(entries)
        storage.sync()
        return storage.segment_names


def read_back(directory: Path, *, max_segment_bytes: int = MAX_SEGMENT_BYTES) -> list[LogEntry]:
    with FileStorage(directory, tail_cache_bytes=0, max_segment_bytes=max_segment_bytes) as storage:
        return storage.entries(storage.first_index(), storage.last_index() + 1)


def record_offsets(path: Path, first_index: int) -> list[int]:
    """Start offset of each record in a segment, plus the end of the last one."""
    scan = scan_segment(path.read_bytes(), path.name, first_index, 0)
    assert scan.bad_reason is None
    return [*scan.offsets, scan.valid_end]


def flip_bit(path: Path, offset: int, bit: int = 0) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 1 << bit
    path.write_bytes(bytes(data))


# --- segments and group commit ----------------------------------------------------------


def test_segments_roll_at_the_size_limit_and_are_named_by_first_index(tmp_path: Path) -> None:
    entries = make_entries(1, 61, term=1)
    record_bytes = len(encode_record(entries[0]))
    names = write_log(tmp_path, entries, max_segment_bytes=5 * record_bytes)
    assert names == [segment_name(first) for first in range(1, 61, 5)]
    for name in names:
        assert os.path.getsize(tmp_path / name) <= 5 * record_bytes
    assert read_back(tmp_path) == entries


def test_a_record_larger_than_a_segment_gets_a_segment_of_its_own(tmp_path: Path) -> None:
    entries = [
        *make_entries(1, 3, term=1),
        LogEntry(3, 1, b"x" * 5000),
        *make_entries(4, 6, term=1),
    ]
    names = write_log(tmp_path, entries, max_segment_bytes=1000)
    assert names == [segment_name(1), segment_name(3), segment_name(4)]
    assert read_back(tmp_path) == entries


def test_one_sync_makes_many_entries_durable_with_one_fsync(tmp_path: Path) -> None:
    with FileStorage(tmp_path) as storage:
        storage.append(make_entries(1, 2, term=1))  # creates the first segment
        storage.sync()
        before = storage.fsyncs
        for start in range(2, 202, 20):
            storage.append(make_entries(start, start + 20, term=1))
        storage.sync()
        assert storage.fsyncs == before + 1
        storage.sync()  # nothing new: no fsync at all
        assert storage.fsyncs == before + 1
        storage.set_hard_state(HardState(term=1, vote="a", commit=100))
        storage.sync()  # the hard state file and its directory
        assert storage.fsyncs == before + 3
        # A commit index alone need not be durable: it rides with the next term or vote.
        storage.set_hard_state(HardState(term=1, vote="a", commit=150))
        storage.append(make_entries(202, 203, term=1))
        storage.sync()
        assert storage.fsyncs == before + 4  # the log only
        assert storage.hard_state().commit == 150
    with FileStorage(tmp_path) as reopened:
        assert reopened.hard_state() == HardState(term=1, vote="a", commit=100)


def test_reads_span_segments_and_the_cache(tmp_path: Path) -> None:
    entries = make_entries(1, 101, term=1)
    small_cache = 10 * (100 + 16)
    with FileStorage(tmp_path, max_segment_bytes=1000, tail_cache_bytes=small_cache) as storage:
        storage.append(entries)
        for lo, hi in [(1, 101), (3, 97), (85, 101), (92, 93), (1, 2), (9, 30)]:
            assert storage.entries(lo, hi) == entries[lo - 1 : hi - 1]


def test_reopen_recovers_everything_across_segments(tmp_path: Path) -> None:
    entries = make_entries(1, 51, term=1) + make_entries(51, 101, term=2)
    with FileStorage(tmp_path, max_segment_bytes=700) as storage:
        for start in range(0, 100, 7):
            storage.append(entries[start : start + 7])
            storage.sync()
    with FileStorage(tmp_path, max_segment_bytes=700) as storage:
        assert (storage.first_index(), storage.last_index()) == (1, 100)
        assert [storage.term(i) for i in (50, 51)] == [1, 2]
        storage.append(make_entries(101, 111, term=2))
    assert read_back(tmp_path) == entries + make_entries(101, 111, term=2)


def test_conflicting_suffix_truncated_across_segments(tmp_path: Path) -> None:
    with FileStorage(tmp_path, max_segment_bytes=1000) as storage:
        storage.append(make_entries(1, 41, term=1))
        assert len(storage.segment_names) > 4
        storage.append(make_entries(12, 15, term=2))
        storage.sync()
        # Entry 12 sat in the third segment; the ones after it are gone from disk.
        assert storage.segment_names == [segment_name(1), segment_name(9)]
    expected = make_entries(1, 12, term=1) + make_entries(12, 15, term=2)
    assert read_back(tmp_path) == expected
    assert sorted(p.name for p in tmp_path.glob("seg-*")) == [segment_name(1), segment_name(9)]


def test_truncating_at_a_segment_start_keeps_the_now_empty_segment(tmp_path: Path) -> None:
    with FileStorage(tmp_path, max_segment_bytes=1000) as storage:
        storage.append(make_entries(1, 21, term=1))
        assert segment_name(9) in storage.segment_names
        storage.append(make_entries(9, 10, term=2))
        storage.sync()
    assert read_back(tmp_path) == make_entries(1, 9, term=1) + make_entries(9, 10, term=2)


def test_overwrite_at_every_index_across_segment_boundaries(tmp_path: Path) -> None:
    for cut in range(1, 26):
        node = tmp_path / f"cut-{cut}"
        with FileStorage(node, max_segment_bytes=600, tail_cache_bytes=0) as storage:
            storage.append(make_entries(1, 25, term=1))
            storage.append(make_entries(cut, cut + 3, term=2))
            expected = make_entries(1, cut, term=1) + make_entries(cut, cut + 3, term=2)
            assert storage.entries(1, cut + 3) == expected, cut
            storage.sync()
        assert read_back(node, max_segment_bytes=600) == expected, cut


# --- torn tails -------------------------------------------------------------------------


def test_torn_last_record_at_every_byte_is_cut_away(tmp_path: Path) -> None:
    original = tmp_path / "original"
    entries = make_entries(1, 6, term=1)
    [name] = write_log(original, entries)
    offsets = record_offsets(original / name, 1)
    last_start, end = offsets[-2], offsets[-1]
    for cut in range(last_start, end):
        node = tmp_path / f"cut-{cut}"
        shutil.copytree(original, node)
        os.truncate(node / name, cut)
        with FileStorage(node) as storage:
            assert storage.last_index() == 4, cut
            assert os.path.getsize(node / name) == last_start
            storage.append(make_entries(5, 7, term=2))
            storage.sync()
        assert read_back(node) == entries[:4] + make_entries(5, 7, term=2), cut
        shutil.rmtree(node)


@pytest.mark.parametrize("tail", [b"\0" * 4096, b"\xf1SW", b"garbage" * 3])
def test_junk_after_the_last_record_is_cut_away(tmp_path: Path, tail: bytes) -> None:
    entries = make_entries(1, 4, term=1)
    [name] = write_log(tmp_path, entries)
    with open(tmp_path / name, "ab") as handle:
        handle.write(tail)
    assert read_back(tmp_path) == entries


def test_a_flipped_bit_in_the_last_record_is_a_torn_tail(tmp_path: Path) -> None:
    original = tmp_path / "original"
    entries = make_entries(1, 6, term=1)
    [name] = write_log(original, entries)
    offsets = record_offsets(original / name, 1)
    for offset in range(offsets[-2], offsets[-1]):
        node = tmp_path / f"flip-{offset}"
        shutil.copytree(original, node)
        flip_bit(node / name, offset, bit=offset % 8)
        assert read_back(node) == entries[:4], offset
        shutil.rmtree(node)


def test_a_torn_tail_may_take_a_whole_segment_with_it(tmp_path: Path) -> None:
    entries = make_entries(1, 31, term=1)
    names = write_log(tmp_path, entries, max_segment_bytes=1000)
    os.truncate(tmp_path / names[-1], 5)
    expected_last = int(names[-1][4:24]) - 1
    with FileStorage(tmp_path, max_segment_bytes=1000) as storage:
        assert storage.last_index() == expected_last
        storage.append(make_entries(expected_last + 1, 33, term=1))
    assert read_back(tmp_path) == make_entries(1, 33, term=1)


def test_an_empty_last_segment_left_by_a_crash_is_used(tmp_path: Path) -> None:
    """The crash came right after a roll created the next segment."""
    write_log(tmp_path, make_entries(1, 6, term=1))
    (tmp_path / segment_name(6)).touch()
    with FileStorage(tmp_path) as storage:
        assert storage.last_index() == 5
        storage.append(make_entries(6, 8, term=1))
        assert storage.segment_names == [segment_name(1), segment_name(6)]
    assert read_back(tmp_path) == make_entries(1, 8, term=1)


# --- corruption -------------------------------------------------------------------------


def test_a_flipped_bit_before_a_valid_record_is_corruption(tmp_path: Path) -> None:
    original = tmp_path / "original"
    [name] = write_log(original, make_entries(1, 6, term=1))
    offsets = record_offsets(original / name, 1)
    for offset in range(offsets[2], offsets[3]):  # every byte of the third of five records
        node = tmp_path / f"flip-{offset}"
        shutil.copytree(original, node)
        flip_bit(node / name, offset, bit=7 - offset % 8)
        with pytest.raises(CorruptLogError, match=rf"{name}: offset {offsets[2]}"):
            FileStorage(node)
        shutil.rmtree(node)


def test_damage_in_a_segment_that_is_not_the_last_is_corruption(tmp_path: Path) -> None:
    names = write_log(tmp_path, make_entries(1, 31, term=1), max_segment_bytes=1000)
    middle = tmp_path / names[1]
    size = os.path.getsize(middle)
    flip_bit(middle, size - 3)  # inside the very last record of that segment
    with pytest.raises(CorruptLogError, match=names[1]):
        FileStorage(tmp_path)
    flip_bit(middle, size - 3)
    os.truncate(middle, size - 3)  # a torn record, but not at the tail of the log
    with pytest.raises(CorruptLogError, match=names[1]):
        FileStorage(tmp_path)


def test_a_missing_segment_is_corruption(tmp_path: Path) -> None:
    names = write_log(tmp_path, make_entries(1, 31, term=1), max_segment_bytes=1000)
    os.remove(tmp_path / names[1])
    with pytest.raises(CorruptLogError, match="starts at entry"):
        FileStorage(tmp_path)


def test_an_empty_segment_after_a_gap_is_corruption(tmp_path: Path) -> None:
    write_log(tmp_path, make_entries(1, 6, term=1))
    (tmp_path / segment_name(9)).touch()
    with pytest.raises(CorruptLogError, match="ends at 5"):
        FileStorage(tmp_path)


def test_valid_records_out_of_order_are_corruption(tmp_path: Path) -> None:
    (tmp_path / segment_name(1)).write_bytes(
        b"".join(encode_record(e) for e in [*make_entries(1, 3, 1), *make_entries(4, 5, 1)])
    )
    with pytest.raises(CorruptLogError, match="expected entry 3, found 4"):
        FileStorage(tmp_path)


def test_a_term_going_backwards_on_disk_is_corruption(tmp_path: Path) -> None:
    records = [*make_entries(1, 3, term=2), *make_entries(3, 4, term=1)]
    (tmp_path / segment_name(1)).write_bytes(b"".join(encode_record(e) for e in records))
    with pytest.raises(CorruptLogError, match="below the term"):
        FileStorage(tmp_path)


def test_a_log_that_does_not_start_at_one_is_corruption(tmp_path: Path) -> None:
    (tmp_path / segment_name(5)).write_bytes(b"".join(map(encode_record, make_entries(5, 7, 1))))
    with pytest.raises(CorruptLogError, match="log starts at entry 5"):
        FileStorage(tmp_path)


def test_damage_found_while_reading_is_corruption(tmp_path: Path) -> None:
    names = write_log(tmp_path, make_entries(1, 31, term=1), max_segment_bytes=1000)
    with FileStorage(tmp_path, tail_cache_bytes=0) as storage:
        flip_bit(tmp_path / names[0], 40)
        with pytest.raises(CorruptLogError, match=names[0]):
            storage.entries(1, 5)
        assert len(storage.entries(20, 31)) == 11


def test_a_commit_beyond_the_log_is_corruption(tmp_path: Path) -> None:
    write_log(tmp_path, make_entries(1, 4, term=1))
    (tmp_path / HARD_STATE_NAME).write_bytes(encode_hard_state(HardState(1, None, 9)))
    with pytest.raises(CorruptLogError, match="commit 9"):
        FileStorage(tmp_path)


# --- snapshots and compaction -----------------------------------------------------------


def test_compaction_deletes_covered_segments_and_restart_resumes(tmp_path: Path) -> None:
    entries = make_entries(1, 61, term=1)
    with FileStorage(tmp_path, max_segment_bytes=1000) as storage:
        storage.append(entries)
        storage.sync()
        storage.save_snapshot(SnapshotMeta(35, 1, b"conf"), b"state@35")
        storage.compact(35)
        remaining = storage.segment_names
        # Only segments holding nothing after 35 are gone; 35's own segment stays.
        assert all(int(name[4:24]) > 8 for name in remaining)
        first_kept = int(remaining[0][4:24])
        assert first_kept <= 36
        assert sorted(p.name for p in tmp_path.glob("seg-*")) == remaining
    with FileStorage(tmp_path, tail_cache_bytes=0) as storage:
        assert storage.load_snapshot() == (SnapshotMeta(35, 1, b"conf"), b"state@35")
        assert (storage.first_index(), storage.last_index(), storage.term(35)) == (36, 60, 1)
        assert storage.entries(36, 61) == entries[35:]
        storage.append(make_entries(61, 63, term=2))
    assert read_back(tmp_path)[-3:] == [entries[-1], *make_entries(61, 63, term=2)]


def test_compaction_at_every_index_keeps_the_rest_readable(tmp_path: Path) -> None:
    entries = make_entries(1, 31, term=1)
    for index in range(1, 31):
        node = tmp_path / f"compact-{index}"
        with FileStorage(node, max_segment_bytes=600, tail_cache_bytes=0) as storage:
            storage.append(entries)
            storage.save_snapshot(SnapshotMeta(30, 1), b"")
            storage.compact(index)
            assert storage.entries(index + 1, 31) == entries[index:], index
            assert storage.term(index) == 1
            kept = storage.segment_names
        # Every entry after the compaction point is still in some segment on disk.
        firsts = [int(name[4:24]) for name in kept]
        assert firsts[0] <= index + 1, index
        assert sorted(p.name for p in node.glob("seg-*")) == kept


def test_compaction_never_deletes_the_active_segment(tmp_path: Path) -> None:
    with FileStorage(tmp_path, max_segment_bytes=1000) as storage:
        storage.append(make_entries(1, 21, term=1))
        storage.save_snapshot(SnapshotMeta(20, 1), b"")
        storage.compact(20)
        assert storage.segment_names[-1] == segment_name(17)
        storage.append(make_entries(21, 23, term=1))
    assert read_back(tmp_path) == make_entries(21, 23, term=1)


def test_open_deletes_segments_a_snapshot_covers(tmp_path: Path) -> None:
    with FileStorage(tmp_path, max_segment_bytes=1000) as storage:
        storage.append(make_entries(1, 41, term=1))
        storage.sync()
        storage.save_snapshot(SnapshotMeta(30, 1), b"")  # never compacted
    with FileStorage(tmp_path, max_segment_bytes=1000) as storage:
        assert storage.first_index() == 31
        assert storage.segment_names[0] == segment_name(25)


def test_crash_between_snapshot_and_log_discard(tmp_path: Path) -> None:
    """The snapshot file is durable but the log it replaces is still there."""
    leader = tmp_path / "leader"
    with FileStorage(leader) as storage:
        storage.save_snapshot(SnapshotMeta(10, 3), b"leader state")
    follower = tmp_path / "follower"
    write_log(follower, make_entries(1, 13, term=1), max_segment_bytes=500)
    name = snapshot_name(SnapshotMeta(10, 3))
    shutil.copy(leader / name, follower / name)
    with FileStorage(follower) as storage:
        assert (storage.first_index(), storage.last_index()) == (11, 10)
        assert storage.term(10) == 3
        assert storage.segment_names == []
    assert list(follower.glob("seg-*")) == []


def test_only_the_newest_snapshot_is_kept(tmp_path: Path) -> None:
    with FileStorage(tmp_path) as storage:
        storage.append(make_entries(1, 11, term=1))
        storage.save_snapshot(SnapshotMeta(4, 1), b"four")
        saved_four = (tmp_path / snapshot_name(SnapshotMeta(4, 1))).read_bytes()
        storage.save_snapshot(SnapshotMeta(8, 1), b"eight")
        assert [p.name for p in tmp_path.glob("snap-*")] == [snapshot_name(SnapshotMeta(8, 1))]
    # A crash before the old one was deleted leaves both: the newest wins.
    (tmp_path / snapshot_name(SnapshotMeta(4, 1))).write_bytes(saved_four)
    with FileStorage(tmp_path) as storage:
        assert storage.load_snapshot() == (SnapshotMeta(8, 1), b"eight")
    assert len(list(tmp_path.glob("snap-*"))) == 1


@pytest.mark.parametrize("damage", ["flip-data", "flip-header", "truncate", "extend", "rename"])
def test_a_damaged_snapshot_is_refused(tmp_path: Path, damage: str) -> None:
    with FileStorage(tmp_path) as storage:
        storage.append(make_entries(1, 11, term=1))
        storage.save_snapshot(SnapshotMeta(7, 1, b"conf"), b"some state machine bytes")
    path = tmp_path / snapshot_name(SnapshotMeta(7, 1))
    size = os.path.getsize(path)
    if damage == "flip-data":
        flip_bit(path, size - 2)
    elif damage == "flip-header":
        flip_bit(path, 9)
    elif damage == "truncate":
        os.truncate(path, size - 1)
    elif damage == "extend":
        os.truncate(path, size + 1)
    else:
        os.rename(path, tmp_path / snapshot_name(SnapshotMeta(7, 2)))
    with pytest.raises(SnapshotError):
        FileStorage(tmp_path)


# --- atomic files, temp files, locking --------------------------------------------------


def test_a_crashed_hard_state_write_is_ignored(tmp_path: Path) -> None:
    with FileStorage(tmp_path) as storage:
        storage.set_hard_state(HardState(term=2, vote="a", commit=0))
        storage.sync()
    # The crash hit between writing the temp file and renaming it.
    (tmp_path / (HARD_STATE_NAME + ".tmp")).write_bytes(b"half a hard st")
    (tmp_path / "snap-x.tmp").write_bytes(b"half a snapshot")
    with FileStorage(tmp_path) as storage:
        assert storage.hard_state() == HardState(term=2, vote="a", commit=0)
    assert list(tmp_path.glob("*.tmp")) == []


def test_a_damaged_hard_state_file_is_refused(tmp_path: Path) -> None:
    with FileStorage(tmp_path) as storage:
        storage.set_hard_state(HardState(term=2, vote="a", commit=0))
        storage.sync()
    flip_bit(tmp_path / HARD_STATE_NAME, 13)
    with pytest.raises(StorageError, match="hardstate"):
        FileStorage(tmp_path)


def test_unsynced_hard_state_is_not_written(tmp_path: Path) -> None:
    with FileStorage(tmp_path) as storage:
        storage.set_hard_state(HardState(term=2, vote="a", commit=0))
    with FileStorage(tmp_path) as storage:
        assert storage.hard_state() == HardState()


def test_a_directory_is_opened_by_one_storage_at_a_time(tmp_path: Path) -> None:
    with FileStorage(tmp_path), pytest.raises(StorageError, match="cannot open"):
        FileStorage(tmp_path)
    FileStorage(tmp_path).close()


def test_a_failed_write_makes_the_storage_unusable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = FileStorage(tmp_path)
    storage.append(make_entries(1, 3, term=1))

    def broken_disk(fd: int, data: object, offset: int) -> int:
        raise OSError(5, "Input/output error")  # (no room is DiskFullError: test_disk_full)

    with monkeypatch.context() as patch:
        patch.setattr(os, "pwrite", broken_disk)
        with pytest.raises(StorageError, match="write failed"):
            storage.append(make_entries(3, 4, term=1))
    with pytest.raises(StorageError, match="unusable"):
        storage.last_index()
    storage.close()
    assert read_back(tmp_path) == make_entries(1, 3, term=1)


def test_bad_options_are_refused(tmp_path: Path) -> None:
    with pytest.raises(StorageError):
        FileStorage(tmp_path, max_segment_bytes=0)


# --- the active segment allocated ahead ---------------------------------------------------


def test_the_active_segment_is_allocated_ahead_and_cut_to_its_records_on_close(
    tmp_path: Path,
) -> None:
    entries = make_entries(1, 11, term=1)
    records = sum(len(encode_record(entry)) for entry in entries)
    with FileStorage(tmp_path / "log") as storage:
        storage.append(entries)
        storage.sync()
        [name] = storage.segment_names
        assert os.path.getsize(tmp_path / "log" / name) == PREALLOCATE_BYTES  # zeros after
        # A crash now leaves the zeros behind: a copy of the files shows what it finds.
        shutil.copytree(tmp_path / "log", tmp_path / "crashed")
    assert os.path.getsize(tmp_path / "log" / name) == records
    assert read_back(tmp_path / "log") == entries
    with FileStorage(tmp_path / "crashed") as storage:  # the zeros are cut like a torn tail
        assert os.path.getsize(tmp_path / "crashed" / name) == records
        assert storage.entries(1, 11) == entries
        storage.append(make_entries(11, 13, term=2))
        storage.sync()
    assert read_back(tmp_path / "crashed") == entries + make_entries(11, 13, term=2)


def test_a_rolled_segment_holds_only_its_records(tmp_path: Path) -> None:
    entries = make_entries(1, 31, term=1)
    record_bytes = len(encode_record(entries[0]))
    with FileStorage(tmp_path, max_segment_bytes=10 * record_bytes) as storage:
        storage.append(entries)
        storage.sync()
        names = storage.segment_names
        sizes = [os.path.getsize(tmp_path / name) for name in names[:-1]]
    assert sizes == [10 * record_bytes] * (len(names) - 1)
    assert read_back(tmp_path) == entries


def test_a_file_system_that_cannot_allocate_ahead_still_takes_the_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(fd: int, offset: int, length: int) -> None:
        raise OSError(95, "Operation not supported")

    monkeypatch.setattr(os, "posix_fallocate", refuse)
    entries = make_entries(1, 11, term=1)
    with FileStorage(tmp_path) as storage:
        storage.append(entries)
        storage.sync()
        [name] = storage.segment_names
        assert os.path.getsize(tmp_path / name) == sum(len(encode_record(e)) for e in entries)
    assert read_back(tmp_path) == entries
