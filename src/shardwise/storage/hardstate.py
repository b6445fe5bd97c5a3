"""The hard-state file: term, vote and commit, replaced atomically as a whole.

Format (see ``DESIGN.md``): magic ``SWHS`` | payload length (u32 LE) | CRC32C of the
payload (u32 LE) | msgpack ``[term, vote, commit]``. The file is only ever replaced by
rename, so it is never torn; a checksum failure means the disk damaged it.
"""

from __future__ import annotations

import os
import struct
from typing import Final

import crc32c
import msgspec

from shardwise.errors import StorageError
from shardwise.storage.fsutil import Disk, read_all
from shardwise.storage.types import EMPTY_HARD_STATE, HardState

HARD_STATE_NAME: Final = "hardstate"
HARD_STATE_MAGIC: Final = b"SWHS"
_HEADER: Final = struct.Struct("<4sII")
MAX_HARD_STATE_BYTES: Final = 4096
"""A hard state is three small fields; anything longer is damage, not data."""

_decoder: Final = msgspec.msgpack.Decoder(HardState)


def encode_hard_state(hard_state: HardState) -> bytes:
    payload = msgspec.msgpack.encode(hard_state)
    return _HEADER.pack(HARD_STATE_MAGIC, len(payload), crc32c.crc32c(payload)) + payload


def decode_hard_state(blob: bytes, name: str = HARD_STATE_NAME) -> HardState:
    if len(blob) < _HEADER.size or len(blob) > MAX_HARD_STATE_BYTES:
        raise StorageError(f"{name}: {len(blob)} bytes is not a hard state")
    magic, length, checksum = _HEADER.unpack_from(blob)
    payload = blob[_HEADER.size :]
    if magic != HARD_STATE_MAGIC or length != len(payload):
        raise StorageError(f"{name}: bad header")
    if crc32c.crc32c(payload) != checksum:
        raise StorageError(f"{name}: checksum mismatch")
    try:
        return _decoder.decode(payload)
    except msgspec.DecodeError as error:
        raise StorageError(f"{name}: undecodable: {error}") from error


class MissingHardStateError(StorageError):
    """The hard-state file is gone but the log or a snapshot is not: the node's term and
    vote are lost, and starting at term 0 with no vote could vote twice in one term.

    (Defined here rather than in ``shardwise.errors``: nothing above storage needs to
    tell it from other ``StorageError``s; the server refuses to start either way.)"""


def hard_state_present(directory: str) -> bool:
    return os.path.exists(os.path.join(directory, HARD_STATE_NAME))


def missing_hard_state(directory: str, first: int, last: int, snapshot_index: int | None) -> str:
    """The message of :class:`MissingHardStateError`: what is wrong, and the way out."""
    path = os.path.join(directory, HARD_STATE_NAME)
    held = [f"log entries {first}..{last}"] if last >= first else []
    if snapshot_index is not None:
        held.append(f"a snapshot at entry {snapshot_index}")
    return (
        f"{path} is missing, but {directory} holds {' and '.join(held)}: this replica's "
        f"term and vote are lost (the file is written when the directory is created and "
        f"only ever replaced atomically, so this is damage or deletion, not a crash), and "
        f"starting without them could vote twice in one term. Do not recreate the file. "
        f"Recover the replica from its peers: stop it, delete its whole data directory "
        f"(the parent of {directory}, if it is a server's raft/ directory) and start it "
        f"again: it rejoins empty and receives a snapshot from the leader "
        f'(docs/operations.md, "A replica that lost its hard state").'
    )


def read_hard_state(directory: str) -> HardState:
    """The stored hard state, or the empty one if none was ever written."""
    path = os.path.join(directory, HARD_STATE_NAME)
    if not os.path.exists(path):
        return EMPTY_HARD_STATE
    return decode_hard_state(read_all(path))


def write_hard_state(directory: str, disk: Disk, hard_state: HardState) -> None:
    disk.atomic_write(directory, HARD_STATE_NAME, [encode_hard_state(hard_state)])
