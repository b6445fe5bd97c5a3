"""The Raft log as a run of append-only segment files, with an in-memory index.

Each entry's term, record offset and payload length are kept in compact arrays, so
``term(i)`` and the sizing of ``entries(lo, hi, max_bytes)`` never touch a file, and a read
is one ``pread`` per segment it spans. The newest entries are also kept whole in a
bounded :class:`TailCache`.

Writes go to the last ("active") segment. A segment is rolled once the next record would
take it past ``max_segment_bytes``; the old one is cut to its records and fsynced first,
so every segment but the last is complete on disk, which is what lets recovery call any
damage there corruption.

The active segment is allocated ahead of its records (:data:`PREALLOCATE_BYTES` at a
time): an fdatasync that need not also record a larger file costs about a third less
CPU and wall time on ext4. What lies past the last record is zeros, which recovery cuts
away like any torn tail; closing the log or rolling a segment cuts it first.
"""

from __future__ import annotations

import bisect
import os
import threading
from collections.abc import Sequence
from typing import Final

from shardwise.errors import CorruptLogError
from shardwise.storage.fsutil import SPACE_ERRNOS, Disk
from shardwise.storage.record import decode_run, encode_record
from shardwise.storage.recovery import (
    RecoveredLog,
    Segment,
    recover_log,
    remove_segments,
    segment_name,
)
from shardwise.storage.tailcache import TailCache
from shardwise.storage.types import LogEntry, SnapshotMeta

MAX_SEGMENT_BYTES: Final = 64 * 1024 * 1024
"""Segment size at which a new segment is started. Compaction frees space a whole segment
at a time, so smaller segments free it sooner, at the cost of more files."""

DEFAULT_TAIL_CACHE_BYTES: Final = 4 * 1024 * 1024
"""Newest entries kept in memory (sized by ``entry_size``): a few batches of replication."""

PREALLOCATE_BYTES: Final = 4 * 1024 * 1024
"""How far ahead of its records the active segment is allocated, at a time."""

WRITE_CHUNK_BYTES: Final = 1024 * 1024
"""Records are written in chunks of about this size, bounding the copy a batch makes."""

SYNCED_MARKS_ENV: Final = "SHARDWISE_TEST_SYNCED_MARKS"
"""Test-only, read by the fault harness (``shardwise.testing.faults``). ``1``: each sync
also records, in ``<segment>.synced``, how many bytes of the active segment it made
durable, so that after a SIGKILL the harness can cut what a power cut would have lost.
``follower-skips-fsync``: that, plus a planted bug for the harness's control run: a
sync in the event loop's thread (a follower's, ``HostOptions.sync_in_loop_unless_leading``)
returns without syncing, so followers acknowledge entries that a crash loses."""

_SYNCED_MARKS: Final = os.environ.get(SYNCED_MARKS_ENV, "")
_MAIN: Final = threading.main_thread()


class SegmentLog:
    """Entries ``first .. last`` stored in segment files under one directory."""

    def __init__(
        self,
        directory: str,
        disk: Disk,
        recovered: RecoveredLog,
        max_segment_bytes: int,
        tail_cache_bytes: int,
    ) -> None:
        self._dir = directory
        self._disk = disk
        self._max_segment_bytes = max_segment_bytes
        self._segments = recovered.segments
        self._segment_firsts = [segment.first_index for segment in self._segments]
        self.first = recovered.first
        self.base_term = recovered.base_term
        self._terms = recovered.terms
        self._offsets = recovered.offsets
        self._data_lengths = recovered.data_lengths
        self._cache = TailCache(tail_cache_bytes, self.last + 1)
        self._active_fd: int | None = None
        self._dirty = False
        self._allocated = 0
        """Length of the active segment's file (its records, then zeros allocated ahead)."""
        self._preallocate = True
        """Off for good once the file system refuses to allocate ahead."""

    @classmethod
    def open(
        cls,
        directory: str,
        disk: Disk,
        snapshot: SnapshotMeta | None,
        max_segment_bytes: int = MAX_SEGMENT_BYTES,
        tail_cache_bytes: int = DEFAULT_TAIL_CACHE_BYTES,
    ) -> SegmentLog:
        """Recover the log in ``directory`` (see :mod:`shardwise.storage.recovery`)."""
        recovered = recover_log(directory, disk, snapshot)
        return cls(directory, disk, recovered, max_segment_bytes, tail_cache_bytes)

    # --- reads ----------------------------------------------------------------------------

    @property
    def last(self) -> int:
        return self.first + len(self._terms) - 1

    @property
    def segment_names(self) -> list[str]:
        return [segment.name for segment in self._segments]

    def term(self, index: int) -> int:
        """Term of entry ``index``, for ``first - 1 <= index <= last`` (checked by callers)."""
        if index == self.first - 1:
            return self.base_term
        return self._terms[index - self.first]

    def data_lengths(self, lo: int, hi: int) -> Sequence[int]:
        return self._data_lengths[lo - self.first : hi - self.first]

    def read(self, lo: int, hi: int) -> list[LogEntry]:
        """Entries ``lo .. hi - 1``: from the files up to the cached tail, then the cache."""
        result: list[LogEntry] = []
        disk_hi = min(hi, max(lo, self._cache.lo))
        index = lo
        while index < disk_hi:
            run_hi = min(disk_hi, self._segment_end(self._segment_of(index)))
            result.extend(self._read_run(index, run_hi))
            index = run_hi
        result.extend(self._cache.get(cached) for cached in range(index, hi))
        return result

    def _segment_of(self, index: int) -> int:
        return bisect.bisect_right(self._segment_firsts, index) - 1

    def _segment_end(self, position: int) -> int:
        """One past the last index held by the segment at ``position``."""
        if position + 1 < len(self._segments):
            return self._segment_firsts[position + 1]
        return self.last + 1

    def _read_run(self, lo: int, hi: int) -> list[LogEntry]:
        """Entries ``lo .. hi - 1``, all in one segment, with one read."""
        position = self._segment_of(lo)
        segment = self._segments[position]
        start = self._offsets[lo - self.first]
        # A run ends where the next record starts, or at the end of the segment's data.
        end = self._offsets[hi - self.first] if hi < self._segment_end(position) else segment.size
        buf = self._pread(position, start, end - start)
        entries = decode_run(buf, start, lo, segment.name)
        if len(entries) != hi - lo:
            raise CorruptLogError(f"{segment.name}: offset {start}: records do not match index")
        return entries

    def _pread(self, position: int, offset: int, size: int) -> bytes:
        segment = self._segments[position]
        if position == len(self._segments) - 1:
            buf = os.pread(self._fd(), size, offset)
        else:
            # Sealed segments are read rarely (by lagging followers): opening them per
            # read keeps the number of open files at one however long the log grows.
            fd = os.open(os.path.join(self._dir, segment.name), os.O_RDONLY)
            try:
                buf = os.pread(fd, size, offset)
            finally:
                os.close(fd)
        if len(buf) != size:
            raise CorruptLogError(f"{segment.name}: offset {offset}: file ends early")
        return buf

    # --- writes ---------------------------------------------------------------------------

    def append(self, entries: Sequence[LogEntry]) -> None:
        """Write validated, consecutive entries starting in ``first .. last + 1``.

        Durable only after :meth:`sync`; a conflicting suffix is cut durably first.
        """
        if entries[0].index <= self.last:
            self._truncate_from(entries[0].index)
        batch: list[bytes] = []
        batch_bytes = 0
        for entry in entries:
            record = encode_record(entry)
            if self._must_roll(batch_bytes, len(record)):
                self._write(batch)
                batch, batch_bytes = [], 0
                self._roll(entry.index)
            self._terms.append(entry.term)
            self._offsets.append(self._segments[-1].size + batch_bytes)
            self._data_lengths.append(len(entry.data))
            batch.append(record)
            batch_bytes += len(record)
            if batch_bytes >= WRITE_CHUNK_BYTES:
                self._write(batch)
                batch, batch_bytes = [], 0
        self._write(batch)
        self._cache.extend(entries)

    def _must_roll(self, batch_bytes: int, record_bytes: int) -> bool:
        """Start a new segment if there is none, or if this record would overflow a
        non-empty one (a record larger than the limit gets a segment of its own)."""
        if not self._segments:
            return True
        used = self._segments[-1].size + batch_bytes
        return used > 0 and used + record_bytes > self._max_segment_bytes

    def _write(self, batch: list[bytes]) -> None:
        if not batch:
            return
        data = b"".join(batch)
        segment = self._segments[-1]
        fd = self._fd()
        end = segment.size + len(data)
        if end > self._allocated:
            self._allocate(fd, end)
        try:
            self._disk.write(fd, data, segment.size)
        except OSError:
            # Part of the batch may be in the file: cut it, so that the records after a
            # failed write can never be read back as if written (recovery would take
            # them for a torn tail anyway, but a caller that goes on must not see them).
            os.ftruncate(fd, segment.size)
            self._allocated = min(self._allocated, segment.size)
            raise
        segment.size += len(data)
        self._dirty = True

    def _allocate(self, fd: int, end: int) -> None:
        """Allocate the active segment's file to at least ``end`` and, if it can, to
        :data:`PREALLOCATE_BYTES` beyond its current length (not past the segment limit)."""
        if not self._preallocate:
            return
        target = max(end, min(self._allocated + PREALLOCATE_BYTES, self._max_segment_bytes))
        try:
            self._disk.allocate(fd, self._allocated, target - self._allocated)
        except OSError as error:
            if error.errno not in SPACE_ERRNOS:
                self._preallocate = False  # e.g. not supported: the writes extend the file
                return
            # Too little room to allocate ahead: allocate what this write needs (a full
            # disk fails here, before anything is written, with ENOSPC).
            target = end
            self._disk.allocate(fd, self._allocated, target - self._allocated)
        self._allocated = target
        self._dirty = True

    def _roll(self, first_index: int) -> None:
        """Seal the active segment (fsync it) and start a new one at ``first_index``."""
        self._close_active(sync=True)
        name = segment_name(first_index)
        path = os.path.join(self._dir, name)
        self._active_fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        self._allocated = 0
        # The new file's directory entry must be durable before records in it can be.
        self._disk.fsync_dir(self._dir)
        self._segments.append(Segment(first_index, name))
        self._segment_firsts.append(first_index)

    def sync(self) -> None:
        """Make everything written durable: one fdatasync of the active segment."""
        if _SYNCED_MARKS == "follower-skips-fsync" and threading.current_thread() is _MAIN:
            return
        if self._dirty and self._active_fd is not None:
            written = self._segments[-1].size
            self._disk.fdatasync(self._active_fd)
            if _SYNCED_MARKS:
                self._mark_synced(written)
        self._dirty = False

    def _mark_synced(self, size: int) -> None:
        """See :data:`SYNCED_MARKS_ENV`: one fixed-width write, whole or not at all."""
        name = self._segments[-1].name + ".synced"
        fd = os.open(os.path.join(self._dir, name), os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            os.pwrite(fd, b"%020d" % size, 0)
        finally:
            os.close(fd)

    def sync_all(self) -> None:
        """fdatasync the active segment and fsync the directory, written to or not: a
        log reopened in the process that wrote it may find records that reached only
        the page cache (the write after them failed), and must not call them durable."""
        if self._segments:
            self._disk.fdatasync(self._fd())
        self._disk.fsync_dir(self._dir)
        self._dirty = False

    def _truncate_from(self, index: int) -> None:
        """Cut entries ``index ..`` durably, before anything replaces them.

        Were the cut not durable first, a crash could leave new records next to old ones
        with the same indexes, forming a log that no node ever held.
        """
        position = self._segment_of(index)
        doomed = self._segments[position + 1 :]
        if doomed:
            self._close_active(sync=False)
            remove_segments(self._dir, self._disk, doomed[::-1])
            del self._segments[position + 1 :]
            del self._segment_firsts[position + 1 :]
        offset = self._offsets[index - self.first]
        fd = self._fd()
        os.ftruncate(fd, offset)
        self._allocated = offset
        self._disk.fdatasync(fd)
        self._dirty = False
        self._segments[-1].size = offset
        self._drop_index_from(index)
        self._cache.truncate(index)

    def _drop_index_from(self, index: int) -> None:
        keep = index - self.first
        del self._terms[keep:]
        del self._offsets[keep:]
        del self._data_lengths[keep:]

    def compact(self, index: int) -> None:
        """Forget entries up to ``index`` and delete the segments holding only those,
        oldest first, so that a crash part-way leaves a suffix of the log."""
        self.base_term = self.term(index)
        drop = index + 1 - self.first
        del self._terms[:drop]
        del self._offsets[:drop]
        del self._data_lengths[:drop]
        self.first = index + 1
        self._cache.drop_before(self.first)
        covered = 0
        while covered + 1 < len(self._segments) and self._segment_firsts[covered + 1] <= self.first:
            covered += 1
        remove_segments(self._dir, self._disk, self._segments[:covered])
        del self._segments[:covered]
        del self._segment_firsts[:covered]

    def reset(self, first: int, base_term: int) -> None:
        """Discard the whole log; it restarts empty at ``first`` (after a snapshot)."""
        self._close_active(sync=False)
        remove_segments(self._dir, self._disk, self._segments[::-1])
        self._segments.clear()
        self._segment_firsts.clear()
        self.first = first
        self.base_term = base_term
        self._drop_index_from(first)
        self._cache.clear(first)

    def close(self) -> None:
        self._close_active(sync=False)

    def _fd(self) -> int:
        """The active segment's descriptor, opened on first use after recovery."""
        if self._active_fd is None:
            path = os.path.join(self._dir, self._segments[-1].name)
            self._active_fd = os.open(path, os.O_RDWR)
            self._allocated = os.fstat(self._active_fd).st_size
        return self._active_fd

    def _close_active(self, *, sync: bool) -> None:
        if self._active_fd is None:
            return
        size = self._segments[-1].size if self._segments else 0
        if self._allocated > size:  # cut the zeros allocated ahead
            os.ftruncate(self._active_fd, size)
            self._allocated = size
            self._dirty = True
        if sync and self._dirty:
            self._disk.fdatasync(self._active_fd)
        self._dirty = False
        os.close(self._active_fd)
        self._active_fd = None
