"""Disks the nemesis can fill: each shard server's data directory on a tmpfs of its own.

A full disk is a fault of one machine: another program (a log, a core dump) takes the
space, and the server finds out from ``statvfs`` or from ``ENOSPC``. Here every group
server's data directory is the mount point of a tmpfs of :data:`DISK_BYTES`; to fill one,
a ballast file takes every free byte; to heal it, the ballast is deleted. Nothing else
changes: the server sees a real file system run out of space (``docs/operations.md``,
"Full disks", says what it must then do).

Mounting needs root (and a kernel that lets this container mount): where it cannot be
done the disk faults are skipped and the run says why. A tmpfs only takes memory for
what is written to it, so a dozen of them cost little until one is filled.
"""

from __future__ import annotations

import errno
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Final

DISK_BYTES: Final = 128 * 1024 * 1024
"""Each server's disk: a few times what a run writes (a server starts with about 8 MiB:
its log allocated ahead, its reserve file, its shard files), small enough to fill at once."""
BALLAST: Final = "ballast"
FILL_CHUNK_BYTES: Final = 1024 * 1024
MAX_FILL_CHUNKS: Final = 2 * DISK_BYTES // FILL_CHUNK_BYTES
"""A bound on the filling loop, should the file system keep finding room."""
MOUNT_TIMEOUT_S: Final = 10.0


def _mount(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={DISK_BYTES}", "tmpfs", str(path)],
        capture_output=True,
        text=True,
        check=False,
        timeout=MOUNT_TIMEOUT_S,
    )


def _unmount(path: Path) -> None:
    # Lazy: a server that has not quite exited yet must not keep the mount (nor the run).
    subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False, timeout=10)


def unavailable_reason() -> str | None:
    """Why the disk faults cannot run here (``None`` if they can)."""
    if os.geteuid() != 0:
        return "mounting a tmpfs needs root"
    with tempfile.TemporaryDirectory(prefix="shardwise-disk-probe-") as probe:
        done = _mount(Path(probe))
        if done.returncode != 0:
            return f"cannot mount a tmpfs here: {done.stderr.strip()}"
        _unmount(Path(probe))
    return None


class SmallDisks:
    """One tmpfs per server, mounted on its data directory (``data_dirs``), before the
    servers start; :meth:`close` unmounts them once they have stopped (their logs are
    kept: they are written beside the data directory, not in it)."""

    def __init__(self, data_dirs: dict[str, Path]) -> None:
        self.data_dirs = data_dirs
        self.mounted: list[Path] = []
        self.filled: set[str] = set()

    def mount(self) -> None:
        for path in self.data_dirs.values():
            path.mkdir(parents=True, exist_ok=True)
            done = _mount(path)
            if done.returncode != 0:
                raise RuntimeError(f"cannot mount a tmpfs on {path}: {done.stderr.strip()}")
            self.mounted.append(path)

    def fill(self, server: str) -> int:
        """Take every free byte of ``server``'s disk; how many bytes the ballast holds."""
        path = self.data_dirs[server] / BALLAST
        chunk = b"\0" * FILL_CHUNK_BYTES
        written = 0
        self.filled.add(server)
        # Unbuffered: a write that finds the disk full returns what fitted (or raises),
        # so the ballast ends exactly at the last free block.
        with open(path, "ab", buffering=0) as ballast:
            for _ in range(MAX_FILL_CHUNKS):
                try:
                    fitted = ballast.write(chunk)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break
                written += fitted or 0
        return written

    def heal(self, server: str) -> None:
        """Give the space back."""
        (self.data_dirs[server] / BALLAST).unlink(missing_ok=True)
        self.filled.discard(server)

    def close(self) -> None:
        for path in self.mounted:
            _unmount(path)
        self.mounted.clear()
