"""Snapshot files: ``snap-<term>-<index>.snap``, each written atomically and checksummed.

Layout (little-endian, see ``DESIGN.md``)::

    magic "SWSN" | version u16 | reserved u16 | meta length u32 | data length u64
    | CRC32C of meta + data u32 | CRC32C of the 24 bytes before it u32 | meta | data

The header has its own checksum so that its lengths can be trusted before the body is
read. Only the newest snapshot is kept: an older one is deleted once a newer one is
durable, so at every instant at least one complete snapshot exists on disk.
"""

from __future__ import annotations

import os
import re
import struct
from dataclasses import dataclass
from typing import Final

import crc32c
import msgspec

from shardwise.errors import SnapshotError
from shardwise.storage.fsutil import Disk
from shardwise.storage.types import SnapshotMeta

SNAPSHOT_MAGIC: Final = b"SWSN"
SNAPSHOT_VERSION: Final = 1
_HEADER: Final = struct.Struct("<4sHHIQII")
HEADER_BYTES: Final = _HEADER.size
_HEADER_CRC_SPAN: Final = HEADER_BYTES - 4

MAX_SNAPSHOT_META_BYTES: Final = 1024 * 1024
"""Membership of even a large cluster encodes in kilobytes."""
MAX_SNAPSHOT_DATA_BYTES: Final = 1 << 32
"""Snapshots are handed around as ``bytes``; beyond this they should be streamed."""
READ_CHUNK_BYTES: Final = 1 << 20
"""Verifying a snapshot reads it in chunks of this size, not all at once."""

_NAME: Final = re.compile(r"^snap-(\d{20})-(\d{20})\.snap$")
_meta_decoder: Final = msgspec.msgpack.Decoder(SnapshotMeta)


def snapshot_name(meta: SnapshotMeta) -> str:
    """Zero-padded so that names sort like the numbers they hold."""
    return f"snap-{meta.term:020d}-{meta.index:020d}.snap"


@dataclass(frozen=True)
class _Header:
    meta_length: int
    data_length: int
    body_crc: int


def encode_header(meta_blob: bytes, data: bytes) -> bytes:
    body_crc = crc32c.crc32c(data, crc32c.crc32c(meta_blob))
    fields = (SNAPSHOT_MAGIC, SNAPSHOT_VERSION, 0, len(meta_blob), len(data), body_crc)
    without_crc = _HEADER.pack(*fields, 0)[:_HEADER_CRC_SPAN]
    return _HEADER.pack(*fields, crc32c.crc32c(without_crc))


def _decode_header(blob: bytes, name: str, file_size: int) -> _Header:
    if len(blob) < HEADER_BYTES:
        raise SnapshotError(f"{name}: truncated header")
    magic, version, _, meta_length, data_length, body_crc, header_crc = _HEADER.unpack(blob)
    if magic != SNAPSHOT_MAGIC or crc32c.crc32c(blob[:_HEADER_CRC_SPAN]) != header_crc:
        raise SnapshotError(f"{name}: bad header")
    if version != SNAPSHOT_VERSION:
        raise SnapshotError(f"{name}: unknown format version {version}")
    if meta_length > MAX_SNAPSHOT_META_BYTES or data_length > MAX_SNAPSHOT_DATA_BYTES:
        raise SnapshotError(f"{name}: lengths over the limits")
    if HEADER_BYTES + meta_length + data_length != file_size:
        raise SnapshotError(f"{name}: file is {file_size} bytes, header says otherwise")
    return _Header(meta_length, data_length, body_crc)


class SnapshotStore:
    """The snapshot files of one storage directory."""

    def __init__(self, directory: str, disk: Disk) -> None:
        self._dir = directory
        self._disk = disk

    def open(self) -> SnapshotMeta | None:
        """Find and verify the newest snapshot; delete any older ones a crash left behind.

        A damaged newest snapshot raises ``SnapshotError`` rather than falling back to an
        older one: the log it allowed to be compacted is gone, so an older snapshot would
        leave a hole between its index and the log.
        """
        found = self._list()
        if not found:
            return None
        newest = found[-1]
        meta = self._verify(newest)
        self._remove_all_but(newest)
        return meta

    def save(self, meta: SnapshotMeta, data: bytes) -> None:
        """Write a snapshot durably, then delete the ones it supersedes."""
        if len(data) > MAX_SNAPSHOT_DATA_BYTES:
            raise SnapshotError(f"snapshot of {len(data)} bytes is over the limit")
        meta_blob = msgspec.msgpack.encode(meta)
        name = snapshot_name(meta)
        self._disk.atomic_write(self._dir, name, [encode_header(meta_blob, data), meta_blob, data])
        # Only now that the new one is durable may the old ones go: deleting them needs no
        # fsync, because a resurrected old file is simply deleted again on the next open.
        self._remove_all_but(name)

    def load(self, meta: SnapshotMeta) -> bytes:
        """The data of the snapshot ``meta`` describes, verified against its checksum."""
        name = snapshot_name(meta)
        with open(os.path.join(self._dir, name), "rb") as handle:
            blob = handle.read()
        header = _decode_header(blob[:HEADER_BYTES], name, len(blob))
        body = memoryview(blob)[HEADER_BYTES:]
        if crc32c.crc32c(body) != header.body_crc:
            raise SnapshotError(f"{name}: checksum mismatch")
        data_start = HEADER_BYTES + header.meta_length
        if self._decode_meta(blob[HEADER_BYTES:data_start], name) != meta:
            raise SnapshotError(f"{name}: holds a different snapshot than its name says")
        return blob[data_start:]

    def _verify(self, name: str) -> SnapshotMeta:
        """Check a snapshot's header, body checksum and metadata without holding it whole."""
        path = os.path.join(self._dir, name)
        with open(path, "rb") as handle:
            header = _decode_header(
                handle.read(HEADER_BYTES), name, os.fstat(handle.fileno()).st_size
            )
            meta_blob = handle.read(header.meta_length)
            checksum = crc32c.crc32c(meta_blob)
            while chunk := handle.read(READ_CHUNK_BYTES):
                checksum = crc32c.crc32c(chunk, checksum)
        if checksum != header.body_crc:
            raise SnapshotError(f"{name}: checksum mismatch")
        meta = self._decode_meta(meta_blob, name)
        if snapshot_name(meta) != name:
            raise SnapshotError(f"{name}: holds snapshot {meta.term}/{meta.index} instead")
        return meta

    @staticmethod
    def _decode_meta(blob: bytes, name: str) -> SnapshotMeta:
        try:
            return _meta_decoder.decode(blob)
        except msgspec.DecodeError as error:
            raise SnapshotError(f"{name}: undecodable metadata: {error}") from error

    def _list(self) -> list[str]:
        """Snapshot file names, oldest first (by index, then term)."""
        named: list[tuple[int, int, str]] = []
        for name in os.listdir(self._dir):
            match = _NAME.match(name)
            if match:
                named.append((int(match.group(2)), int(match.group(1)), name))
        return [name for _, _, name in sorted(named)]

    def _remove_all_but(self, keep: str) -> None:
        for name in self._list():
            if name != keep:
                os.remove(os.path.join(self._dir, name))
