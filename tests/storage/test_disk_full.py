"""FileStorage on a full disk: a write that finds no room is a ``DiskFullError`` (not a
generic failure), the reserve file is given up, nothing synced is lost, and ``reopen()``
goes on once there is room; a failed fsync is never taken for a full disk. Also the
space watch's thresholds and its bounded rate.

The disk runs out of room on demand (``fsutil.FaultyDisk``); the file system's free
space is faked for the watch (``SpaceWatch(probe=...)``).
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from shardwise.errors import StorageError
from shardwise.storage.file import FileStorage
from shardwise.storage.fsutil import FaultyDisk
from shardwise.storage.memory import MemoryStorage, SimulatedSpace
from shardwise.storage.space import (
    RESERVE_NAME,
    SPACE_CHECK_EVERY_BYTES,
    SPACE_CHECK_INTERVAL_S,
    DiskFullError,
    SpaceLimits,
    SpaceWatch,
)
from shardwise.storage.types import HardState, LogEntry

MIB = 1024 * 1024
TOTAL = 1024 * MIB  # the faked file system's size


class FakeFs:
    """What ``statvfs`` answers, and how often it was asked."""

    def __init__(self, free: int) -> None:
        self.free = free
        self.calls = 0

    def __call__(self, directory: str) -> tuple[int, int]:
        self.calls += 1
        return self.free, TOTAL


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def entries(lo: int, hi: int, size: int = 1000, term: int = 1) -> list[LogEntry]:
    return [LogEntry(i, term, bytes([i % 251]) * size) for i in range(lo, hi)]


def open_storage(path: Path, disk: FaultyDisk, free: int = TOTAL) -> FileStorage:
    return FileStorage(path, disk=disk, space=SpaceWatch(str(path), probe=FakeFs(free)))


def test_a_write_without_room_is_a_disk_full_error_and_reopen_goes_on(tmp_path: Path) -> None:
    disk = FaultyDisk()
    storage = open_storage(tmp_path, disk)
    assert storage.holds_reserve and (tmp_path / RESERVE_NAME).exists()
    storage.append(entries(1, 11))
    storage.set_hard_state(HardState(term=1, vote="a", commit=10))
    storage.sync()
    disk.space = 2_500  # two more records fit, not three
    with pytest.raises(DiskFullError, match="reserve released"):
        storage.append(entries(11, 21))
    assert not (tmp_path / RESERVE_NAME).exists()
    with pytest.raises(DiskFullError):  # spoiled, as after any failed write
        storage.last_index()
    disk.space = None  # room again
    storage = storage.reopen()
    # Everything synced is there; of the failed batch, a prefix at most (now durable).
    assert 10 <= storage.last_index() <= 12
    assert storage.hard_state() == HardState(term=1, vote="a", commit=10)
    assert storage.entries(1, 11) == entries(1, 11)
    last = storage.last_index()
    storage.append(entries(last + 1, last + 5))
    storage.sync()
    storage.close()
    with FileStorage(tmp_path) as reopened:
        assert reopened.last_index() == last + 4
        assert reopened.entries(1, last + 5)[-1] == entries(last + 4, last + 5)[0]


def test_a_full_disk_during_the_hard_state_is_a_disk_full_error(tmp_path: Path) -> None:
    disk = FaultyDisk()
    storage = open_storage(tmp_path, disk)
    storage.append(entries(1, 3))
    storage.sync()
    disk.space = 0
    storage.set_hard_state(HardState(term=2, vote="b", commit=0))
    with pytest.raises(DiskFullError):
        storage.sync()
    disk.space = None
    storage = storage.reopen()
    assert storage.hard_state().term in (0, 2)  # old or new, never a mixture
    storage.set_hard_state(HardState(term=3, vote="c", commit=2))
    storage.sync()
    storage.close()


def test_a_failed_fsync_is_never_taken_for_a_full_disk(tmp_path: Path) -> None:
    disk = FaultyDisk()
    storage = open_storage(tmp_path, disk)
    storage.append(entries(1, 3))
    disk.fsync_errno = errno.ENOSPC
    with pytest.raises(StorageError) as caught:
        storage.sync()
    assert not isinstance(caught.value, DiskFullError)
    storage.close()


def test_the_reserve_is_taken_only_with_room_beyond_the_threshold(tmp_path: Path) -> None:
    limits = SpaceLimits.for_size(TOTAL)
    fs = FakeFs(limits.refuse_below + limits.reserve - 1)
    storage = FileStorage(tmp_path, disk=FaultyDisk(), space=SpaceWatch(str(tmp_path), probe=fs))
    assert not storage.holds_reserve
    fs.free = TOTAL
    storage.space.check()
    storage.append(entries(1, 2))
    storage.sync()  # takes it again, now that there is room
    assert storage.holds_reserve
    assert os.path.getsize(tmp_path / RESERVE_NAME) == limits.reserve
    storage.close()


def test_space_limits_scale_down_for_small_disks() -> None:
    small = SpaceLimits.for_size(24 * MIB)
    assert small.refuse_below == 24 * MIB // 8
    assert 0 < small.resume_above < small.reserve < small.refuse_below
    big = SpaceLimits.for_size(10 * 1024 * MIB)
    assert big.refuse_below == 256 * MIB and big.reserve == 64 * MIB


def test_the_watch_looks_at_a_bounded_rate_and_after_bursts() -> None:
    fs, clock = FakeFs(TOTAL), Clock()
    watch = SpaceWatch("/unused", probe=fs, now=clock)
    assert not watch.low()
    calls = fs.calls
    for _ in range(1000):
        watch.low()
    assert fs.calls == calls  # no statvfs per call
    fs.free = 0
    assert not watch.low()  # not seen yet ...
    watch.wrote(SPACE_CHECK_EVERY_BYTES)
    assert watch.low()  # ... until a burst of writes forces a look
    fs.free = TOTAL
    clock.t += SPACE_CHECK_INTERVAL_S
    assert not watch.low()  # ... or time passes
    assert watch.room_to_resume()


def test_memory_storage_fills_and_reopens_like_a_disk() -> None:
    space = SimulatedSpace()
    storage = MemoryStorage(space)
    storage.append(entries(1, 4))
    storage.sync()
    space.full = True
    with pytest.raises(DiskFullError):
        storage.append(entries(4, 5))
    with pytest.raises(DiskFullError):
        storage.reopen()  # still full
    space.full = False
    storage = storage.reopen()
    assert storage.last_index() == 3 and storage.space is space
