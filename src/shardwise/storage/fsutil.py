"""File-system primitives with the durability each caller relies on.

Two rules from the literature on crash consistency shape these helpers: a new or renamed
file is durable only once its *directory* is fsynced too, and a file is replaced
atomically only by writing a temporary file, fsyncing it, renaming it over the old one and
fsyncing the directory.
"""

from __future__ import annotations

import errno
import fcntl
import os
from collections.abc import Sequence
from typing import Final

TEMP_SUFFIX: Final = ".tmp"
"""Marks a file being written; one left over by a crash is deleted on open."""

LOCK_NAME: Final = "LOCK"

SPACE_ERRNOS: Final = frozenset({errno.ENOSPC, errno.EDQUOT})
"""Errors that mean "no room" (a full file system, or the user's quota), not damage."""


class SyncFailedError(OSError):
    """An fsync or fdatasync failed. Unlike a failed write, this is never taken for a full
    disk that may recover: after a failed fsync the kernel may have dropped the dirty
    pages and marked them clean, so a later fsync could "succeed" over lost data."""


def is_out_of_space(error: OSError) -> bool:
    """Whether ``error`` is a write that found no room (and not a failed fsync)."""
    return error.errno in SPACE_ERRNOS and not isinstance(error, SyncFailedError)


class Disk:
    """The operations that force data to stable storage, counted.

    The count lets benchmarks and tests check that commits are grouped (one fsync for
    many entries) instead of trusting that they are.
    """

    durable = True
    """Whether what this disk writes survives a power cut once written."""

    def __init__(self) -> None:
        self.fsyncs = 0

    def fdatasync(self, fd: int) -> None:
        """Flush a file's data and the metadata needed to read it (its size).

        Cheaper than fsync where available: timestamps are not forced to disk.
        """
        self.fsyncs += 1
        try:
            if hasattr(os, "fdatasync"):
                os.fdatasync(fd)
            else:  # pragma: no cover - macOS and Windows
                os.fsync(fd)
        except OSError as error:
            raise SyncFailedError(error.errno, f"fdatasync: {error.strerror}") from error

    def fsync(self, fd: int) -> None:
        self.fsyncs += 1
        try:
            os.fsync(fd)
        except OSError as error:
            raise SyncFailedError(error.errno, f"fsync: {error.strerror}") from error

    def write(self, fd: int, data: bytes, offset: int) -> None:
        """Write all of ``data`` at ``offset`` (see :func:`write_all`)."""
        write_all(fd, data, offset)

    def allocate(self, fd: int, offset: int, length: int) -> None:
        """Reserve disk blocks for ``offset .. offset + length`` (``posix_fallocate``)."""
        os.posix_fallocate(fd, offset, length)

    def fsync_dir(self, directory: str) -> None:
        """Make the creation, removal or renaming of entries in ``directory`` durable."""
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            self.fsync(fd)
        finally:
            os.close(fd)

    def atomic_write(self, directory: str, name: str, chunks: Sequence[bytes]) -> None:
        """Replace ``directory/name`` with the concatenated ``chunks`` so that a crash leaves
        the old content or the new, never a mixture: temp file, fsync, rename, fsync of the
        directory. Chunks spare the caller joining a large snapshot into one copy."""
        path = os.path.join(directory, name)
        temp = path + TEMP_SUFFIX
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            offset = 0
            for chunk in chunks:
                self.write(fd, chunk, offset)
                offset += len(chunk)
            self.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temp, path)
        self.fsync_dir(directory)


class CacheDisk(Disk):
    """A disk for files that are a cache of a durable record elsewhere (a replica group's
    shard files, rebuilt from its Raft log at every start): writes stay atomic (temp
    file and rename), but nothing is forced to the platter."""

    durable = False

    def fdatasync(self, fd: int) -> None:
        pass

    def fsync(self, fd: int) -> None:
        pass

    def fsync_dir(self, directory: str) -> None:
        pass


class FaultyDisk(Disk):
    """A disk for tests that runs out of room, or fails its fsyncs, on demand.

    ``space``: bytes that writes and allocations may still take (``None``: unlimited);
    a write larger than what is left writes what fits and then fails with ``ENOSPC``, as
    a real one does. Freed space is not tracked: a test gives room back by raising
    ``space``. ``fsync_errno``: make every fsync fail with that error.
    """

    def __init__(self, space: int | None = None) -> None:
        super().__init__()
        self.space = space
        self.fsync_errno: int | None = None
        self.refusals = 0
        """Writes and allocations refused for want of space."""

    def fdatasync(self, fd: int) -> None:
        self._check_fsync()
        super().fdatasync(fd)

    def fsync(self, fd: int) -> None:
        self._check_fsync()
        super().fsync(fd)

    def write(self, fd: int, data: bytes, offset: int) -> None:
        if self.space is not None and len(data) > self.space:
            fits = self.space
            write_all(fd, data[:fits], offset)
            self.space = 0
            self._refuse()
        write_all(fd, data, offset)
        if self.space is not None:
            self.space -= len(data)

    def allocate(self, fd: int, offset: int, length: int) -> None:
        grow = max(0, offset + length - os.fstat(fd).st_size)
        if self.space is not None and grow > self.space:
            self._refuse()
        super().allocate(fd, offset, length)
        if self.space is not None:
            self.space -= grow

    def _refuse(self) -> None:
        self.refusals += 1
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def _check_fsync(self) -> None:
        if self.fsync_errno is not None:
            self.fsyncs += 1
            raise SyncFailedError(self.fsync_errno, os.strerror(self.fsync_errno))


def write_all(fd: int, data: bytes, offset: int) -> None:
    """Write all of ``data`` at ``offset``; a regular file may accept a write in parts."""
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view = view[written:]
        offset += written


def read_all(path: str) -> bytes:
    with open(path, "rb") as handle:
        return handle.read()


def remove_temp_files(directory: str) -> list[str]:
    """Delete files a crash left half-written; return their names."""
    removed = sorted(name for name in os.listdir(directory) if name.endswith(TEMP_SUFFIX))
    for name in removed:
        os.remove(os.path.join(directory, name))
    return removed


def lock_directory(directory: str) -> int:
    """Take an exclusive lock on ``directory`` for this process; return the lock's fd.

    Two processes appending to one log would interleave records; the lock makes the
    second one fail at open instead. Raises ``BlockingIOError`` if it is held.
    """
    fd = os.open(os.path.join(directory, LOCK_NAME), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise
    return fd


def unlock_directory(fd: int) -> None:
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)
