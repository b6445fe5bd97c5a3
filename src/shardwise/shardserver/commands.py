"""What a replica group's Raft log carries: client operations and shard moves.

Every entry is a :class:`GroupCommand`, a versioned envelope decoded with validation; a
replica that cannot decode a committed entry halts rather than diverge. Each shard-move
command names the configuration it belongs to, so a late, repeated or stale one is
recognised and ignored by every replica alike.
"""

from __future__ import annotations

from typing import Final, Literal, TypeAlias

import msgspec

from shardwise.controller.model import Configuration, ShardId
from shardwise.errors import CommandDecodeError
from shardwise.raft.kv import KVOp, KVResult

GROUP_COMMAND_VERSION: Final = 1

INSTALL_CHUNK_BYTES: Final = 512 << 10
"""Largest piece of a shard image in one log entry: a large shard enters the log as many
small entries, so it never stalls the group's other traffic behind one huge append."""


class ClientOp(msgspec.Struct, frozen=True, array_like=True, tag="op"):
    shard: ShardId
    client_id: str
    seq: int
    op: KVOp


class Reconfigure(msgspec.Struct, frozen=True, array_like=True, tag="reconfigure"):
    """Move the group to ``config`` (numbered one past the group's current one)."""

    config: Configuration


class InstallChunk(msgspec.Struct, frozen=True, array_like=True, tag="chunk"):
    """Bytes ``offset:offset+len(data)`` of the image of a shard being pulled for
    configuration ``config_num``; offset 0 starts the image afresh."""

    shard: ShardId
    config_num: int
    offset: int
    data: bytes


class InstallShard(msgspec.Struct, frozen=True, array_like=True, tag="install"):
    """The pulled image is complete: check it and serve the shard."""

    shard: ShardId
    config_num: int
    total: int
    crc: int


class HandOffDone(msgspec.Struct, frozen=True, array_like=True, tag="handed_off"):
    """(At the source.) The group that gained ``shard`` in ``config_num`` installed it:
    the frozen copy is garbage."""

    shard: ShardId
    config_num: int


class AckDelivered(msgspec.Struct, frozen=True, array_like=True, tag="ack_delivered"):
    """(At the target.) The source confirmed :class:`HandOffDone`: stop telling it."""

    shard: ShardId
    config_num: int


Command: TypeAlias = (
    ClientOp | Reconfigure | InstallChunk | InstallShard | HandOffDone | AckDelivered
)


class GroupCommand(msgspec.Struct, frozen=True, array_like=True):
    version: int
    command: Command


Outcome: TypeAlias = Literal["ok", "wrong_group", "ignored"]


class GroupResult(msgspec.Struct, frozen=True, array_like=True):
    outcome: Outcome
    config_num: int
    result: KVResult | None = None


_encode = msgspec.msgpack.Encoder().encode
_command_decoder = msgspec.msgpack.Decoder(GroupCommand)
_result_decoder = msgspec.msgpack.Decoder(GroupResult)


def encode(command: Command) -> bytes:
    return _encode(GroupCommand(GROUP_COMMAND_VERSION, command))


def decode(data: bytes) -> Command:
    """The command in a committed entry; :class:`CommandDecodeError` if it is not one."""
    try:
        envelope = _command_decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise CommandDecodeError(f"undecodable group command: {exc}") from None
    if envelope.version != GROUP_COMMAND_VERSION:
        raise CommandDecodeError(f"group command version {envelope.version} is unknown")
    return envelope.command


def encode_result(result: GroupResult) -> bytes:
    return _encode(result)


def decode_result(data: bytes) -> GroupResult:
    return _result_decoder.decode(data)
