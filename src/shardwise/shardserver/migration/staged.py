"""An image (or a delta) arriving through the log in pieces, staged in a file."""

from __future__ import annotations

import os
import sqlite3
from contextlib import closing

import crc32c

from shardwise.errors import CorruptShardSnapshotError, ShardLimitError
from shardwise.model.config import ShardId
from shardwise.raft.client_sessions import MAX_SESSIONS
from shardwise.shardserver.migration.image import EXPORT_HEADER, EXPORT_MAGIC, MAX_EXPORT_BYTES
from shardwise.shardserver.shardfile import SIDE_FILE_SUFFIXES, remove_files, verify_and_stamp
from shardwise.shardserver.store import ShardStore
from shardwise.shardserver.tracking import MAX_TOMBSTONES
from shardwise.storage.fsutil import Disk


class StagedImage:
    """An export (or a delta) arriving in pieces, written to a file as it comes, with a
    running CRC32C: a large image never sits whole in memory, and installing it is a
    check and a rename, not a copy (which would stall the group's apply loop)."""

    def __init__(self, path: str | os.PathLike[str], disk: Disk | None = None) -> None:
        self._path = os.fspath(path)
        self._disk = disk or Disk()
        self._header = b""
        """The frame's header (its first bytes), kept apart: the file is the bare image."""
        self._size = 0
        self._crc = 0
        self.reset()

    @property
    def size(self) -> int:
        return self._size

    @property
    def crc(self) -> int:
        """CRC32C of everything appended (header included)."""
        return self._crc

    def reset(self) -> None:
        """Start afresh (an empty image)."""
        with open(self._path, "wb"):
            pass
        self._header, self._size, self._crc = b"", 0, 0

    def append(self, data: bytes) -> None:
        self._crc = crc32c.crc32c(data, self._crc)
        self._size += len(data)
        room = EXPORT_HEADER.size - len(self._header)
        if room > 0:
            self._header += data[:room]
            data = data[room:]
        if data:
            with open(self._path, "ab") as file:
                file.write(data)

    def read(self) -> bytes:
        """Everything appended (small images only: a delta, or a Raft snapshot's copy)."""
        with open(self._path, "rb") as file:
            return self._header + file.read()

    def install(
        self,
        path: str | os.PathLike[str],
        *,
        shard: ShardId,
        applied_index: int,
        state: str,
        max_sessions: int = MAX_SESSIONS,
        max_tombstones: int = MAX_TOMBSTONES,
        disk: Disk | None = None,
    ) -> ShardStore:
        """Make the staged export the shard database at ``path`` (replacing whatever is
        there; close any store open on it first) and open it, as ``install_image`` does,
        in place. The caller has checked :attr:`size` and :attr:`crc` against the
        exporter's (which cover the frame's own checksum). Afterwards the stage is empty."""
        path = os.fspath(path)
        if len(self._header) < EXPORT_HEADER.size:
            raise CorruptShardSnapshotError("shard export: truncated header")
        magic, length, _ = EXPORT_HEADER.unpack(self._header)
        if magic != EXPORT_MAGIC or length != self._size - EXPORT_HEADER.size:
            raise CorruptShardSnapshotError("shard export: bad magic or length")
        if length > MAX_EXPORT_BYTES:
            raise ShardLimitError(f"shard export of {length} bytes, over {MAX_EXPORT_BYTES}")
        with closing(sqlite3.connect(self._path, isolation_level=None)) as conn:
            try:
                conn.execute("PRAGMA trusted_schema=OFF")
                if not self._disk.durable:  # the file is a cache: no journal on disk, no sync
                    conn.execute("PRAGMA journal_mode=MEMORY")
                    conn.execute("PRAGMA synchronous=OFF")
                verify_and_stamp(conn, shard, applied_index, state)
            except sqlite3.Error as exc:
                raise CorruptShardSnapshotError(f"shard export: {exc}") from exc
        if self._disk.durable:
            with open(self._path, "rb+") as file:
                self._disk.fsync(file.fileno())
        remove_files(path, SIDE_FILE_SUFFIXES)
        remove_files(self._path, SIDE_FILE_SUFFIXES)
        os.replace(self._path, path)
        disk = disk or self._disk
        disk.fsync_dir(os.path.dirname(os.path.abspath(path)))
        self.reset()
        return ShardStore.open(
            path, shard, max_sessions=max_sessions, max_tombstones=max_tombstones, disk=disk
        )

    def discard(self) -> None:
        remove_files(self._path, ("", *SIDE_FILE_SUFFIXES))
