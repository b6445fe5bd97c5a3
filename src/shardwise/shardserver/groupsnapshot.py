"""The encoding of a replica group's state machine in a Raft snapshot: its configuration,
every shard's lifecycle record and image, the arrivals under way (staged pieces and
bases) and the hand-offs it owes. Every image is a whole shard export
(``migration/image.py``), so restoring rebuilds the files from scratch.
"""

from __future__ import annotations

from typing import Final, cast

import msgspec

from shardwise.model.bounds import Int64
from shardwise.model.config import Configuration, ShardId

SNAPSHOT_VERSION: Final = 1


class ShardSnapshot(msgspec.Struct, frozen=True, array_like=True):
    shard: ShardId
    state: str
    frozen_at: Int64
    pull_config: Int64
    pull_from: tuple[str, ...]
    staging: bytes
    image: bytes | None


class IncomingSnapshot(msgspec.Struct, frozen=True, array_like=True):
    shard: ShardId
    config_num: Int64
    staging: bytes
    base: bytes | None


class OwedHandOff(msgspec.Struct, frozen=True, array_like=True):
    """A hand-off to confirm to the source group (its ``servers``)."""

    shard: ShardId
    config_num: Int64
    servers: tuple[str, ...]


class GroupSnapshot(msgspec.Struct, frozen=True, array_like=True):
    version: Int64
    gid: Int64
    config: Configuration
    shards: list[ShardSnapshot]
    owed: list[OwedHandOff]
    incoming: list[IncomingSnapshot] = []


def as_bytes(image: bytearray) -> bytes:
    """An export as the snapshot's ``bytes`` field, without copying it: msgspec encodes a
    bytearray exactly as it encodes bytes (and decodes it as bytes)."""
    return cast(bytes, image)


_snapshot_decoder = msgspec.msgpack.Decoder(GroupSnapshot)
_encode = msgspec.msgpack.Encoder().encode


def encode_snapshot(snapshot: GroupSnapshot) -> bytes:
    return _encode(snapshot)


def decode_snapshot(data: bytes) -> GroupSnapshot:
    return _snapshot_decoder.decode(data)
