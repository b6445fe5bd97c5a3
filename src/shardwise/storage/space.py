"""Free space on the file system that holds a Raft log, and the reserve kept on it.

Two lines of defence against a full disk (``docs/operations.md``, "Full disks"):

* **Refuse early.** :class:`SpaceWatch` looks at the file system with ``statvfs`` (at most
  every :data:`SPACE_CHECK_INTERVAL_S`, or sooner once :data:`SPACE_CHECK_EVERY_BYTES`
  were appended since the last look, so a burst cannot outrun it) and says when free
  space is below the *refusal threshold*. A leader then refuses new proposals with
  ``DiskFullError`` while it still has room to record what it must: the entries it
  already accepted, votes and terms, membership changes, and the state machine's writes
  of what commits.
* **A reserve.** :class:`ReserveFile` holds a preallocated file (``RESERVE``) in the log's
  directory. Should the disk fill anyway (another process, a shard file growing), the
  storage deletes it at the first ``ENOSPC``, so that the replica can reopen its log and
  persist votes and the entries already in flight; it is allocated again once the space
  is back.

Both sizes are the smaller of a fixed amount and a fraction of the file system, so that
a small disk (a test's tmpfs) is not refused from the start.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from shardwise.errors import ClientError, StorageError
from shardwise.storage.fsutil import Disk

REFUSE_BELOW_BYTES: Final = 256 * 1024 * 1024
"""New proposals are refused while less than this much space is free (or
:data:`REFUSE_BELOW_FRACTION` of the file system, if smaller): room for the entries
already accepted (a leader's uncommitted bytes are bounded at 64 MiB), a snapshot of
modest size and the state machine's writes, so that what was accepted can still commit."""

REFUSE_BELOW_FRACTION: Final = 1 / 8
"""The refusal threshold as a share of the file system's size, for small disks."""

RESERVE_BYTES: Final = 64 * 1024 * 1024
"""Size of the reserve file (or :data:`RESERVE_FRACTION` of the file system, if smaller):
what is released at the first ``ENOSPC`` so that votes, terms and the entries in flight
can still be written: many times the largest Raft record (16 MiB)."""

RESERVE_FRACTION: Final = 1 / 32
"""The reserve as a share of the file system's size, for small disks."""

RESUME_ABOVE_BYTES: Final = 8 * 1024 * 1024
"""A replica that stopped on a full disk tries to reopen its log once at least this much
(or :data:`RESUME_ABOVE_FRACTION` of the file system, if smaller) is free: room for a few
batches of entries and the hard state, so it does not stop again at once."""

RESUME_ABOVE_FRACTION: Final = 1 / 64

SPACE_CHECK_INTERVAL_S: Final = 0.1
"""``statvfs`` is called at most this often (plus :data:`SPACE_CHECK_EVERY_BYTES`): cheap
(a few microseconds), but on every proposal it would be a system call per write."""

SPACE_CHECK_EVERY_BYTES: Final = 4 * 1024 * 1024
"""Appending this many bytes (or a sixteenth of the refusal threshold, if less) since the
last look forces a new one, whatever the time: well under the threshold, so a burst of
writes (this log's, and the state machine's writes that go with them) cannot cross it
unseen."""

RESERVE_NAME: Final = "RESERVE"


class DiskFullError(StorageError, ClientError):
    """A disk is (nearly) full: writes are refused, nothing acknowledged is lost, and
    they resume by themselves once there is room (docs/operations.md, "Full disks").

    Raised by the storage (a write found no room), by a Raft host (it refuses a write),
    by a shard's SQLite store (``SQLITE_FULL``), and by a client whose write the
    servers refused for it: hence a storage error and a client error at once. (It lives
    here, not in ``shardwise.errors``, which is at its size limit.)"""


@dataclass(frozen=True, slots=True)
class SpaceLimits:
    """The thresholds for one file system, in bytes (see the module's constants)."""

    refuse_below: int
    reserve: int
    resume_above: int

    @classmethod
    def for_size(cls, total: int) -> SpaceLimits:
        return cls(
            refuse_below=min(REFUSE_BELOW_BYTES, int(total * REFUSE_BELOW_FRACTION)),
            reserve=min(RESERVE_BYTES, int(total * RESERVE_FRACTION)),
            resume_above=min(RESUME_ABOVE_BYTES, int(total * RESUME_ABOVE_FRACTION)),
        )


def free_and_total(directory: str) -> tuple[int, int]:
    """Bytes free to an unprivileged writer, and the file system's size."""
    stat = os.statvfs(directory)
    return stat.f_bavail * stat.f_frsize, stat.f_blocks * stat.f_frsize


class SpaceWatch:
    """Whether the file system of ``directory`` is short of space, looked at cheaply.

    ``probe`` and ``now`` are seams for tests (a fake file system, a manual clock).
    """

    def __init__(
        self,
        directory: str,
        *,
        probe: Callable[[str], tuple[int, int]] = free_and_total,
        now: Callable[[], float] = time.monotonic,
    ) -> None:
        self._dir = directory
        self._probe = probe
        self._now = now
        self._checked_at = float("-inf")
        self._written = 0
        self.free = 0
        self.limits = SpaceLimits(0, 0, 0)
        self.check()

    def wrote(self, size: int) -> None:
        """``size`` more bytes were appended (brings the next look forward)."""
        self._written += size

    def check(self) -> None:
        """Look now."""
        self.free, total = self._probe(self._dir)
        self.limits = SpaceLimits.for_size(total)
        self._checked_at = self._now()
        self._written = 0

    def _maybe_check(self) -> None:
        due = self._now() - self._checked_at >= SPACE_CHECK_INTERVAL_S
        burst = min(SPACE_CHECK_EVERY_BYTES, self.limits.refuse_below // 16)
        if due or self._written >= burst:
            with contextlib.suppress(OSError):  # keep the last answer: a failed statvfs
                self.check()  # says nothing about space

    def low(self) -> bool:
        """Whether free space is below the refusal threshold (new proposals wait)."""
        self._maybe_check()
        return self.free < self.limits.refuse_below

    def room_to_resume(self) -> bool:
        """Whether a replica stopped by a full disk may try again (looks now)."""
        self.check()
        return self.free >= self.limits.resume_above


class ReserveFile:
    """A preallocated file (:data:`RESERVE_NAME`) that is given up when the disk fills."""

    def __init__(self, directory: str, disk: Disk) -> None:
        self._path = os.path.join(directory, RESERVE_NAME)
        self._disk = disk
        self.held = os.path.exists(self._path)

    def ensure(self, watch: SpaceWatch) -> None:
        """Allocate the reserve if it is missing and the disk has room for it beyond the
        refusal threshold (taking it must not make the replica refuse writes). Best
        effort, and cheap when there is nothing to do: a reserve that cannot be made now
        is tried again at a later call."""
        size = watch.limits.reserve
        if self.held or size <= 0 or watch.free < watch.limits.refuse_below + size:
            return
        try:
            fd = os.open(self._path, os.O_WRONLY | os.O_CREAT, 0o644)
            try:
                self._disk.allocate(fd, 0, size)
            finally:
                os.close(fd)
        except OSError:
            self.release()
            return
        self.held = True
        watch.free -= size

    def release(self) -> bool:
        """Delete the reserve (no fsync: the space is freed at once either way); whether
        there was one."""
        self.held = False
        try:
            os.remove(self._path)
        except FileNotFoundError:
            return False
        return True
