"""The bytes a shard travels in: a whole *image* of its file, and a *delta* of the changes
after a write version, each in a checksummed frame.

A frame is ``magic | payload length (u64 LE) | CRC32C of the length field and the payload
(u32 LE) | payload``. An image's payload is the SQLite file itself (:data:`EXPORT_MAGIC`);
a delta's is a MessagePack :class:`~shardwise.shardserver.tracking.ShardDelta`
(:data:`DELTA_MAGIC`). A new format gets a new magic. An image is verified before it
replaces anything: the frame, then, in memory, the file's format version (an older one is
upgraded), SQLite's integrity check and the shard it holds.
"""

from __future__ import annotations

import os
import sqlite3
import struct
from contextlib import closing
from typing import Final

import crc32c
import msgspec

from shardwise.errors import CorruptShardSnapshotError, ShardLimitError
from shardwise.model.config import ShardId
from shardwise.raft.client_sessions import MAX_SESSIONS
from shardwise.shardserver.shardfile import (
    SIDE_FILE_SUFFIXES,
    remove_files,
    verify_and_stamp,
    write_atomically,
)
from shardwise.shardserver.store import ShardStore
from shardwise.shardserver.tracking import MAX_TOMBSTONES, ShardDelta
from shardwise.storage.fsutil import Disk

MAX_EXPORT_BYTES: Final = 1 << 30
"""Largest image :func:`export_image` makes: it is held in memory while it is shipped;
a larger shard should be split instead."""

EXPORT_MAGIC: Final = b"\xf1SWS"
"""Starts every image; it also names export format 1 (a new format gets a new magic)."""

DELTA_MAGIC: Final = b"\xf1SWt"
"""Starts every delta (:func:`export_delta`), framed like an image: delta format 3, whose
keys are bytes (values str or bytes) and which carries the shard's transactions. An
older version refuses it as a bad magic rather than misread it."""

DELTA_MAGIC_V2: Final = b"\xf1SWd"
"""Delta format 2 (no transaction tables), from a server of an older version: still read."""

DELTA_MAGIC_V1: Final = b"\xf1SWD"
"""Delta format 1 (str keys and values), from a server of an older version: still read."""

EXPORT_HEADER: Final = struct.Struct("<4sQI")
"""magic | image length (u64 LE) | CRC32C of the length field and the image (u32 LE)."""

_encode = msgspec.msgpack.Encoder().encode
_decode_delta = msgspec.msgpack.Decoder(ShardDelta).decode


# --- whole images ------------------------------------------------------------------------


def export_image(store: ShardStore) -> bytes:
    """A consistent copy of the whole database (data, sessions, meta), framed with its
    length and CRC32C, for :func:`install_image` on another path or machine."""
    return bytes(export_buffer(store))


def export_buffer(store: ShardStore) -> bytearray:
    """:func:`export_image` without its final copy (a large shard's image is copied as
    rarely as possible: a Raft snapshot holds its replica's event loop)."""
    store.flush()
    size = store.size_bytes()
    if size > MAX_EXPORT_BYTES:
        raise ShardLimitError(f"shard {store.shard} is {size} bytes, over {MAX_EXPORT_BYTES}")
    header = EXPORT_HEADER.size
    framed = store.file_image(reserve=header)
    # Bytes 18 and 19 of the header say "WAL mode" (2). An in-memory copy cannot be
    # opened in WAL mode, so the export is a plain rollback-journal database (1); the
    # receiver switches its copy to WAL when it opens it.
    framed[header + 18 : header + 20] = b"\x01\x01"
    frame_in_place(EXPORT_MAGIC, framed)
    return framed


def install_image(
    path: str | os.PathLike[str],
    data: bytes,
    *,
    shard: ShardId | None = None,
    applied_index: int | None = None,
    state: str | None = None,
    max_sessions: int = MAX_SESSIONS,
    max_tombstones: int = MAX_TOMBSTONES,
    disk: Disk | None = None,
) -> ShardStore:
    """Replace whatever is at ``path`` with the exported shard ``data`` and open it.

    ``data`` is verified first (magic, length, checksum, schema version, SQLite's
    integrity check, ``shard`` if given): if it fails, nothing is replaced. The file is
    written atomically (temp file, fsync, rename, fsync of the directory). Close any
    store open on ``path`` first. ``applied_index`` and ``state`` override the exported
    ones: a shard from another group needs ``applied_index``, as the exporter's index
    belongs to *its* log (a Raft snapshot of the same group keeps both).
    """
    path = os.fspath(path)
    image = _verified_image(unframe(data), shard, applied_index, state)
    # A WAL left by the old file would be replayed into the new one: remove it. If we
    # crash before the rename, the old file is back at its last checkpoint (consistent,
    # with its applied index) and the install is replayed from the log.
    remove_files(path, SIDE_FILE_SUFFIXES)
    disk = disk or Disk()
    write_atomically(path, image, disk)
    return ShardStore.open(
        path, shard, max_sessions=max_sessions, max_tombstones=max_tombstones, disk=disk
    )


def _verified_image(
    image: memoryview, shard: ShardId | None, applied_index: int | None, state: str | None
) -> bytes:
    """The image to write, checked in memory and with the overrides applied."""
    with closing(sqlite3.connect(":memory:", isolation_level=None)) as mem:
        try:
            mem.deserialize(image)
            changed = verify_and_stamp(mem, shard, applied_index, state)
            return mem.serialize() if changed else bytes(image)
        except sqlite3.Error as exc:
            raise CorruptShardSnapshotError(f"shard export: {exc}") from exc


# --- deltas ------------------------------------------------------------------------------


def export_delta(store: ShardStore, since: int) -> bytes | None:
    """What changed in ``store`` after write version ``since`` (the version of an earlier
    export of this shard), framed, for :func:`apply_delta` on that copy; None if this copy
    cannot tell (see ``ShardStore.changes_since``): copy it all."""
    delta = store.changes_since(since)
    if delta is None:
        return None
    return bytes(frame(DELTA_MAGIC, _encode(delta)))  # small: a copy costs nothing


def apply_delta(store: ShardStore, index: int, data: bytes, *, state: str) -> None:
    """Bring ``store`` up to date with a delta of the same shard (from :func:`export_delta`
    of a later copy, counted from this copy's write version), in lifecycle ``state``, at
    log ``index``, in one transaction. A delta that is corrupt or does not fit this copy
    raises and changes nothing."""
    head = bytes(data[: len(DELTA_MAGIC)])
    magic = head if head in (DELTA_MAGIC_V1, DELTA_MAGIC_V2) else DELTA_MAGIC
    try:
        delta = _decode_delta(unframe(data, magic))
    except msgspec.DecodeError as exc:  # ValidationError is a DecodeError
        raise CorruptShardSnapshotError(f"shard delta: {exc}") from None
    store.apply_changes(index, delta, state=state)


# --- frames ------------------------------------------------------------------------------


def frame(magic: bytes, payload: bytes | bytearray) -> bytearray:
    framed = bytearray(EXPORT_HEADER.size + len(payload))
    framed[EXPORT_HEADER.size :] = payload
    frame_in_place(magic, framed)
    return framed


def frame_in_place(magic: bytes, framed: bytearray) -> None:
    """Write the frame's header into the first bytes of ``framed``, the payload after it."""
    payload = memoryview(framed)[EXPORT_HEADER.size :]
    length = len(payload)
    checksum = crc32c.crc32c(payload, crc32c.crc32c(struct.pack("<Q", length)))
    EXPORT_HEADER.pack_into(framed, 0, magic, length, checksum)


def unframe(data: bytes, magic: bytes = EXPORT_MAGIC) -> memoryview:
    if len(data) > EXPORT_HEADER.size + MAX_EXPORT_BYTES:
        raise ShardLimitError(f"shard export of {len(data)} bytes, over {MAX_EXPORT_BYTES}")
    if len(data) < EXPORT_HEADER.size:
        raise CorruptShardSnapshotError("shard export: truncated header")
    found, length, checksum = EXPORT_HEADER.unpack_from(data)
    if found != magic:
        raise CorruptShardSnapshotError("shard export: bad magic")
    if length != len(data) - EXPORT_HEADER.size:
        raise CorruptShardSnapshotError(
            f"shard export: header says {length} bytes, {len(data) - EXPORT_HEADER.size} follow"
        )
    view = memoryview(data)
    image = view[EXPORT_HEADER.size :]
    if crc32c.crc32c(image, crc32c.crc32c(view[4:12])) != checksum:
        raise CorruptShardSnapshotError("shard export: checksum mismatch")
    return image
