"""Raft storage on local disk: segment files, a hard-state file and a snapshot file.

One directory holds one node's state::

    LOCK                                  flock'ed while open: one process per directory
    hardstate                             replaced atomically on sync when it changed
    snap-<term>-<index>.snap              the newest snapshot (older ones are deleted)
    seg-<first index>.log                 the log, one segment per ~64 MiB

The file formats and recovery rules are in ``DESIGN.md``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from shardwise.errors import CorruptLogError, StorageError
from shardwise.storage import rules
from shardwise.storage.fsutil import (
    Disk,
    is_out_of_space,
    lock_directory,
    remove_temp_files,
    unlock_directory,
)
from shardwise.storage.hardstate import (
    MissingHardStateError,
    hard_state_present,
    missing_hard_state,
    read_hard_state,
    write_hard_state,
)
from shardwise.storage.segments import DEFAULT_TAIL_CACHE_BYTES, MAX_SEGMENT_BYTES, SegmentLog
from shardwise.storage.snapshot import SnapshotStore
from shardwise.storage.space import DiskFullError, ReserveFile, SpaceWatch
from shardwise.storage.types import EMPTY_HARD_STATE, HardState, LogEntry, SnapshotMeta


class FileStorage:
    """A :class:`~shardwise.storage.interface.RaftStorage` in a directory on disk.

    Opening recovers: it removes files a crash left half-written, verifies the newest
    snapshot, scans the log and truncates a torn tail (raising ``CorruptLogError`` for
    damage anywhere else) and drops log entries the snapshot covers.

    After any failed write or fsync the instance refuses further use: once an fsync has
    failed, the kernel may have dropped the dirty pages and a retry could "succeed" over
    lost data, so the only safe way on is to reopen and recover from what is on disk.
    A write that found no room raises ``DiskFullError`` (and releases the reserve file,
    ``space.py``); :meth:`reopen` is then the way on, once there is room again. A failed
    fsync is never taken for a full disk.

    ``disk`` is a seam for tests (``fsutil.FaultyDisk`` runs out of room on demand).
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        max_segment_bytes: int = MAX_SEGMENT_BYTES,
        tail_cache_bytes: int = DEFAULT_TAIL_CACHE_BYTES,
        disk: Disk | None = None,
        space: SpaceWatch | None = None,
    ) -> None:
        if max_segment_bytes < 1 or tail_cache_bytes < 0:
            raise StorageError("max_segment_bytes must be positive, tail_cache_bytes >= 0")
        self._dir = os.fspath(directory)
        self._disk = disk or Disk()
        self._limits = (max_segment_bytes, tail_cache_bytes)
        self._closed = False
        self._failure: OSError | None = None
        try:
            self._create_directory()
            self._lock_fd = lock_directory(self._dir)
        except OSError as error:
            raise StorageError(f"{self._dir}: cannot open (in use by another?): {error}") from error
        try:
            self._open(max_segment_bytes, tail_cache_bytes)
            self._space = space or SpaceWatch(self._dir)
        except BaseException:
            unlock_directory(self._lock_fd)
            raise
        self._reserve = ReserveFile(self._dir, self._disk)
        self._reserve.ensure(self._space)

    def _create_directory(self) -> None:
        """Create the directory if needed, durably: its entry lives in the parent."""
        if os.path.isdir(self._dir):
            return
        os.makedirs(self._dir)
        self._disk.fsync_dir(os.path.dirname(os.path.abspath(self._dir)))

    def _open(self, max_segment_bytes: int, tail_cache_bytes: int) -> None:
        try:
            remove_temp_files(self._dir)
            hard_state_found = hard_state_present(self._dir)
            self._hard_state = self._durable_hard_state = read_hard_state(self._dir)
            self._snapshots = SnapshotStore(self._dir, self._disk)
            self._snapshot = self._snapshots.open()
            self._log = SegmentLog.open(
                self._dir, self._disk, self._snapshot, max_segment_bytes, tail_cache_bytes
            )
            if not hard_state_found:
                self._check_new_directory()
        except OSError as error:
            raise StorageError(f"{self._dir}: cannot recover: {error}") from error
        if self._hard_state.commit > self._log.last:
            # Entries are synced before the hard state that commits them, so this is loss.
            raise CorruptLogError(
                f"{self._dir}: hard state commit {self._hard_state.commit} is beyond the "
                f"last entry {self._log.last}"
            )

    def _check_new_directory(self) -> None:
        """No hard-state file: fine for an empty directory, which gets one now, before any
        entry, so that from here on a missing file always means lost data (otherwise a
        crash between the first log sync and the first hard-state write would look the
        same). With entries or a snapshot, refuse: the term and vote are lost."""
        log, snapshot = self._log, self._snapshot
        if log.last >= log.first or snapshot is not None:
            index = None if snapshot is None else snapshot.index
            raise MissingHardStateError(missing_hard_state(self._dir, log.first, log.last, index))
        write_hard_state(self._dir, self._disk, EMPTY_HARD_STATE)

    @property
    def directory(self) -> str:
        return self._dir

    @property
    def fsyncs(self) -> int:
        """fsync/fdatasync calls made since open (files and the directory)."""
        return self._disk.fsyncs

    @property
    def segment_names(self) -> list[str]:
        """Names of the segment files in log order (for tests and operators)."""
        return self._log.segment_names

    # --- space ----------------------------------------------------------------------------

    @property
    def space(self) -> SpaceWatch:
        return self._space

    @property
    def holds_reserve(self) -> bool:
        return self._reserve.held

    def space_low(self) -> bool:
        """Whether free space is below the refusal threshold (``space.py``). Looks at the
        file system, not at this instance, so it may run while :meth:`sync` does."""
        return self._space.low()

    def room_to_resume(self) -> bool:
        """Whether there is room again for :meth:`reopen` after ``DiskFullError``."""
        return self._space.room_to_resume()

    def reopen(self) -> FileStorage:
        """Close this instance and recover a new one from the directory, as a restart
        would, then make durable whatever it found (records that reached only the page
        cache before a failed write must not count as durable). The way on after a
        ``DiskFullError``; raises it again while the disk is still full."""
        self.close()
        max_segment_bytes, tail_cache_bytes = self._limits
        try:
            fresh = FileStorage(
                self._dir,
                max_segment_bytes=max_segment_bytes,
                tail_cache_bytes=tail_cache_bytes,
                disk=self._disk,
                space=self._space,
            )
        except StorageError as error:
            cause = error.__cause__
            if isinstance(cause, OSError) and is_out_of_space(cause):
                raise DiskFullError(f"{self._dir}: cannot reopen: {cause}") from cause
            raise
        try:
            with fresh._writing():
                fresh._log.sync_all()
        except BaseException:
            fresh.close()
            raise
        return fresh

    # --- reads ----------------------------------------------------------------------------

    def hard_state(self) -> HardState:
        self._check_usable()
        return self._hard_state

    def snapshot_meta(self) -> SnapshotMeta | None:
        self._check_usable()
        return self._snapshot

    def first_index(self) -> int:
        self._check_usable()
        return self._log.first

    def last_index(self) -> int:
        self._check_usable()
        return self._log.last

    def term(self, index: int) -> int:
        self._check_usable()
        rules.check_term_index(index, self._log.first, self._log.last)
        return self._log.term(index)

    def entries(self, lo: int, hi: int, max_bytes: int | None = None) -> list[LogEntry]:
        self._check_usable()
        log = self._log
        rules.check_read_range(lo, hi, log.first, log.last)
        count = rules.count_within(log.data_lengths(lo, hi), max_bytes)
        with self._reading():
            return log.read(lo, hi if count is None else lo + count)

    def load_snapshot(self) -> tuple[SnapshotMeta, bytes] | None:
        self._check_usable()
        if self._snapshot is None:
            return None
        with self._reading():
            return self._snapshot, self._snapshots.load(self._snapshot)

    # --- writes ---------------------------------------------------------------------------

    def append(self, entries: Sequence[LogEntry]) -> None:
        self._check_usable()
        log = self._log
        batch = rules.entries_to_append(
            entries, log.first, log.last, log.term, self.snapshot_meta()
        )
        if batch:
            with self._writing():
                log.append(batch)
            self._space.wrote(sum(len(entry.data) for entry in batch))

    def set_hard_state(self, hard_state: HardState) -> None:
        self._check_usable()
        rules.check_hard_state(self._hard_state, hard_state)
        self._hard_state = hard_state

    def sync(self) -> None:
        with self._writing():
            # The log first: a durable commit index must never point past durable entries.
            self._log.sync()
            # Term and vote must be durable before the node acts on them; the commit index
            # need not be (a restarted node learns it again from its leader), so a change
            # of commit alone rides along with the next term or vote change instead of
            # costing a second fsync on every write.
            hard, durable = self._hard_state, self._durable_hard_state
            if (hard.term, hard.vote) != (durable.term, durable.vote):
                write_hard_state(self._dir, self._disk, hard)
                self._durable_hard_state = hard
            # Taken again once there is room (cheap when held, or when there is none).
            self._reserve.ensure(self._space)

    def save_snapshot(self, meta: SnapshotMeta, data: bytes) -> None:
        self._check_usable()
        rules.check_new_snapshot(meta, self._snapshot)
        log = self._log
        with self._writing():
            self._snapshots.save(meta, data)
            # The snapshot is durable before the log is touched; if we crash before the
            # discard below is, the next open sees the mismatch and discards again.
            if not rules.snapshot_matches_log(meta, log.first, log.last, log.term):
                log.reset(meta.index + 1, meta.term)
            self._snapshot = meta

    def compact(self, index: int) -> None:
        self._check_usable()
        log = self._log
        if rules.check_compact(index, self._snapshot, log.first, log.last):
            with self._writing():
                log.compact(index)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._log.close()
        finally:
            unlock_directory(self._lock_fd)

    def __enter__(self) -> FileStorage:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- internals ------------------------------------------------------------------------

    def _check_usable(self) -> None:
        if self._closed:
            raise StorageError(f"{self._dir}: storage is closed")
        if self._failure is not None:
            kind = DiskFullError if is_out_of_space(self._failure) else StorageError
            raise kind(f"{self._dir}: unusable after a failed write: {self._failure}")

    @contextmanager
    def _writing(self) -> Iterator[None]:
        """Turn an OS error into ``StorageError`` and poison the instance (see class doc)."""
        self._check_usable()
        try:
            yield
        except OSError as error:
            self._failure = error
            if is_out_of_space(error):
                # Give the reserve up, so that the replica can reopen its log at once and
                # record votes and the entries in flight (see space.py).
                released = self._reserve.release()
                with contextlib.suppress(OSError):
                    self._space.check()
                raise DiskFullError(
                    f"{self._dir}: the disk is full ({error.strerror})"
                    + ("; reserve released" if released else "")
                ) from error
            raise StorageError(f"{self._dir}: write failed: {error}") from error

    @contextmanager
    def _reading(self) -> Iterator[None]:
        try:
            yield
        except OSError as error:
            raise StorageError(f"{self._dir}: read failed: {error}") from error
