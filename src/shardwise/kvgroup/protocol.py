"""The calls a KV group serves. Outcomes a client acts on (not the leader, try again) are
part of the reply; transport failures arrive as typed exceptions from the transport."""

from __future__ import annotations

import msgspec

from shardwise.model.bounds import Int64
from shardwise.model.kv import KVOp, KVResult
from shardwise.model.replies import ReplicaStatus, Status
from shardwise.net.rpc import RpcMethod


class WriteRequest(msgspec.Struct, frozen=True):
    client_id: str
    seq: Int64
    op: KVOp


class ReadRequest(msgspec.Struct, frozen=True):
    key: str


class Reply(msgspec.Struct, frozen=True):
    status: Status
    leader: str | None = None
    result: KVResult | None = None
    """For a write: what the state machine answered. For a read: ``value`` holds it."""
    value: str | None = None


class StatusRequest(msgspec.Struct, frozen=True):
    pass


class StatusReply(ReplicaStatus, frozen=True):
    pass


WRITE = RpcMethod("kv.write", WriteRequest, Reply)
READ = RpcMethod("kv.read", ReadRequest, Reply)
STATUS = RpcMethod("kv.status", StatusRequest, StatusReply)
