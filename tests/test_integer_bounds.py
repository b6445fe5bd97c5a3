"""No integer from the wire or the log can be larger than SQLite's INTEGER.

A ``shard.write`` with ``seq = 2**63`` once passed every check, committed, and then
failed to apply on every replica (``Python int too large to convert to SQLite
INTEGER``), halting the group at every restart. Every ``int`` of every message a process
decodes is now bounded to 64 signed bits while it is decoded (``model/bounds.Int64``);
this test walks every request, reply, log command, Raft message and stored record, so a
new unbounded field fails here rather than in production.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import msgspec
import msgspec.inspect as mi
import pytest

from shardwise.controller import protocol as controller_protocol
from shardwise.controller.statemachine import _Snapshot as ControllerSnapshot
from shardwise.kvgroup import protocol as kvgroup_protocol
from shardwise.model import config
from shardwise.model.bounds import INT64_MAX
from shardwise.model.kv import Put
from shardwise.net.rpc import RpcMethod
from shardwise.raft.messages import MESSAGE_TYPES
from shardwise.shardserver import commands
from shardwise.shardserver import protocol as shard_protocol
from shardwise.shardserver.groupsnapshot import GroupSnapshot
from shardwise.storage import types as storage_types


def rpc_types() -> Iterator[tuple[str, Any]]:
    for module in (shard_protocol, controller_protocol, kvgroup_protocol):
        for value in vars(module).values():
            if isinstance(value, RpcMethod):
                yield f"{value.name} request", value.request_type
                yield f"{value.name} reply", value.response_type


DECODED: list[tuple[str, Any]] = [
    *rpc_types(),
    ("shard group log command", commands.GroupCommand),
    ("shard group result", commands.GroupResult),
    ("shard group snapshot", GroupSnapshot),
    ("controller log command", config.Command),
    ("controller result", config.ChangeResult),
    ("controller snapshot", ControllerSnapshot),
    *((f"raft {t.__name__}", t) for t in MESSAGE_TYPES),
    ("log entry", storage_types.LogEntry),
    ("hard state", storage_types.HardState),
    ("snapshot meta", storage_types.SnapshotMeta),
]


def unbounded_ints(info: mi.Type, path: str, seen: set[type]) -> Iterator[str]:
    """Paths to the integers of ``info`` that decode without a 64-bit bound."""
    if isinstance(info, mi.IntType):
        # Int64; or UInt64 (ge=0, MessagePack ends it at 2**64 - 1) for a digest that is
        # only compared, never stored in SQLite.
        int64 = info.ge is not None and info.ge >= -(2**63) and info.le is not None
        uint64 = info.ge == 0 and info.le is None
        if not (uint64 or (int64 and info.le is not None and info.le <= INT64_MAX)):
            yield path
    elif isinstance(info, mi.StructType):
        if info.cls in seen:
            return
        seen.add(info.cls)
        for field in info.fields:
            yield from unbounded_ints(field.type, f"{path}.{field.name}", seen)
    elif isinstance(info, mi.UnionType):
        for member in info.types:
            yield from unbounded_ints(member, path, seen)
    elif isinstance(info, mi.DictType):
        yield from unbounded_ints(info.key_type, f"{path}[key]", seen)
        yield from unbounded_ints(info.value_type, f"{path}[value]", seen)
    elif isinstance(info, mi.ListType | mi.TupleType | mi.VarTupleType | mi.SetType):
        items = info.item_types if isinstance(info, mi.TupleType) else (info.item_type,)
        for item in items:
            yield from unbounded_ints(item, f"{path}[]", seen)


@pytest.mark.parametrize(("what", "decoded_type"), DECODED, ids=[w for w, _ in DECODED])
def test_every_integer_that_is_decoded_is_bounded_to_64_bits(what: str, decoded_type: Any) -> None:
    found = list(unbounded_ints(mi.type_info(decoded_type), what, set()))
    assert not found, f"integers decoded without a 64-bit bound: {found}"


def test_the_check_finds_an_unbounded_field() -> None:
    class Loose(msgspec.Struct):
        seq: int
        nested: dict[int, tuple[int, ...]]

    found = list(unbounded_ints(mi.type_info(Loose), "loose", set()))
    assert found == ["loose.seq", "loose.nested[key]", "loose.nested[value][]"]


@pytest.mark.parametrize("seq", [2**63, 2**64 - 1])
def test_a_write_numbered_past_64_bits_does_not_decode(seq: int) -> None:
    request = shard_protocol.WriteRequest(config.ShardId("default", 0), "c", seq, Put("k", "v"))
    with pytest.raises(msgspec.ValidationError, match="int"):
        msgspec.msgpack.decode(msgspec.msgpack.encode(request), type=shard_protocol.WriteRequest)


def test_a_schema_digest_uses_all_64_bits() -> None:
    """A keyspace's schema digest is an unsigned 64-bit hash: half of all digests are
    past 2**63 and must still decode (bounding them as signed made every DDL wait
    forever for groups whose answers no longer decoded)."""
    for digest in (2**63, 2**64 - 1):
        request = shard_protocol.SqlReadRequest(config.ShardId("default", 0), "SELECT 1")
        request = msgspec.structs.replace(request, schema=digest)
        decoded = msgspec.msgpack.decode(
            msgspec.msgpack.encode(request), type=shard_protocol.SqlReadRequest
        )
        assert decoded.schema == digest
        reply = shard_protocol.SqlSchemaReply("ok", config_num=3, schema=digest)
        encoded = msgspec.msgpack.encode(reply)
        assert msgspec.msgpack.decode(encoded, type=shard_protocol.SqlSchemaReply) == reply
