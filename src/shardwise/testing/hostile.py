"""Well-formed but hostile traffic for a live group: every Raft message type and every
RPC method, with extreme integers, wrong and forged ids, stale and future terms and
undecodable payloads, all from one seeded random source.

A Raft message is made by mutating a realistic one of its type field by field; an RPC
request by mutating a realistic request of its method at its MessagePack leaves (or
replacing it with a stray value). Nothing here sends: the caller does, from whichever
connection it wants to test (a client's, or an authenticated node's that is no member of
the group).

Keys and strings this module makes never start with :data:`WORKLOAD_PREFIX`, so a
workload that keeps to keys with that prefix is never touched by a hostile write that
happens to be valid (its history would otherwise not explain what it reads).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import msgspec

from shardwise.model.config import ShardId
from shardwise.model.kv import Append, Cas, Delete, Get, KVOp, Put
from shardwise.model.sql import SqlStatement
from shardwise.net.harness import sample_raft_messages
from shardwise.net.rpc import RpcMethod
from shardwise.raft.messages import (
    AppendEntries,
    ConfChange,
    ConfChangeKind,
    EntryKind,
    Membership,
    Message,
    conf_change_payload,
    encode_membership,
    membership_payload,
)
from shardwise.storage.types import LogEntry, SnapshotMeta

WORKLOAD_PREFIX: Final = "lin-"
"""Keys a concurrent workload may use: no hostile request names one."""

INT64_MAX: Final = 2**63 - 1
EXTREME_INTS: Final = (
    0, 1, -1, 2, 2**31 - 1, 2**31, 2**32, 2**53 + 1, 2**62, 2**62 + 1,
    INT64_MAX - 1, INT64_MAX, -(2**63), -(2**63) + 1,
)  # fmt: skip
"""Integers every int field is tried with (all inside 64 bits: a frame with a wider one
does not decode and costs the connection, which :data:`OUT_OF_RANGE_INTS` tests)."""

OUT_OF_RANGE_INTS: Final = (2**63, 2**64 - 1)

STRANGE_TEXT: Final = ("", " ", "\x00", "é", "\u202e", "::", "a" * 300, "'; DROP TABLE t; --")


@dataclass(frozen=True)
class RawCall:
    """One hostile call: a method name and the body sent for it."""

    method: RpcMethod[msgspec.Raw, msgspec.Raw]
    body: bytes


_encode = msgspec.msgpack.Encoder().encode
_RAW_METHODS: dict[str, RpcMethod[msgspec.Raw, msgspec.Raw]] = {}


def raw_method(name: str) -> RpcMethod[msgspec.Raw, msgspec.Raw]:
    """A method of that name whose request and response are taken as they are."""
    method = _RAW_METHODS.get(name)
    if method is None:
        method = _RAW_METHODS[name] = RpcMethod(name, msgspec.Raw, msgspec.Raw)
    return method


class HostileTraffic:
    """Hostile messages for group ``group`` whose replicas are ``members``, sent by
    ``sender`` (the id the sending connection authenticated as)."""

    def __init__(
        self, rng: random.Random, *, group: int, members: Sequence[str], sender: str
    ) -> None:
        self.rng = rng
        self.group = group
        self.members = list(members)
        self.sender = sender
        self._samples = sample_raft_messages(snapshot_bytes=64)

    # --- values ------------------------------------------------------------------------

    def integer(self, current: int = 0) -> int:
        rng = self.rng
        roll = rng.random()
        if roll < 0.55:
            return rng.choice(EXTREME_INTS)
        if roll < 0.75:  # stale and future: near the current value
            return current + rng.randint(-3, 3)
        return rng.randrange(-(2**63), 2**63)

    def text(self) -> str:
        rng = self.rng
        if rng.random() < 0.5:
            return "fz" + rng.choice(STRANGE_TEXT)
        return "fz" + "".join(rng.choice("ab:/-_é\x01") for _ in range(rng.randint(0, 12)))

    def blob(self) -> bytes:
        return self.rng.randbytes(self.rng.choice((0, 1, 7, 33, 300)))

    def node_id(self) -> str:
        """Who a message claims to come from or go to: a member, the sender, a stranger."""
        return self.rng.choice([*self.members, self.sender, "fz-nobody", "c1", "x" * 64])

    def entry(self, index: int) -> LogEntry:
        rng = self.rng
        payload = rng.choice(
            [
                self.blob(),
                b"",
                bytes((EntryKind.CONF_CHANGE,)) + self.blob(),
                bytes((EntryKind.MEMBERSHIP,)) + self.blob(),
                bytes((rng.randrange(4, 256),)) + self.blob(),
                conf_change_payload(ConfChange(rng.choice(list(ConfChangeKind)), self.node_id())),
                membership_payload(Membership(frozenset({self.sender}))),
            ]
        )
        return LogEntry(index=index, term=self.integer(), data=payload)

    def meta(self) -> SnapshotMeta:
        config = self.rng.choice(
            [self.blob(), b"\xc1", encode_membership(Membership(frozenset({self.sender})))]
        )
        return SnapshotMeta(index=self.integer(), term=self.integer(), config=config)

    # --- Raft ----------------------------------------------------------------------------

    def raft_message(self, *, to: str | None = None) -> Message:
        """A Raft message of a random type, its every field possibly hostile; from
        ``sender`` (so the transport delivers it) unless forged, to ``to`` if given."""
        rng = self.rng
        message: Any = rng.choice(self._samples)
        changes: dict[str, Any] = {}
        for field in msgspec.structs.fields(message):
            value = getattr(message, field.name)
            if rng.random() < 0.4:
                continue
            if isinstance(value, bool):
                changes[field.name] = rng.random() < 0.5
            elif isinstance(value, int):
                changes[field.name] = self.integer(value)
            elif isinstance(value, bytes):
                changes[field.name] = self.blob()
            elif isinstance(value, SnapshotMeta):
                changes[field.name] = self.meta()
            elif isinstance(value, tuple):
                start = self.integer()
                start = min(max(start, 1), INT64_MAX - 10)
                changes[field.name] = tuple(self.entry(start + i) for i in range(rng.randint(0, 3)))
        forged = rng.random() < 0.05
        changes["sender"] = self.node_id() if forged else self.sender
        changes["to"] = to if to is not None else rng.choice(self.members)
        if isinstance(message, AppendEntries) and "entries" in changes:
            first = changes["entries"][0].index if changes["entries"] else 1
            changes["prev_index"] = first - 1
        return msgspec.structs.replace(message, **changes)  # type: ignore[no-any-return]

    def group_id(self) -> int:
        return self.rng.choice([self.group] * 8 + [0, self.group + 1, INT64_MAX])

    # --- calls ---------------------------------------------------------------------------

    def call(self, samples: dict[str, list[object]]) -> RawCall:
        """A hostile request for one of the methods in ``samples`` (method name ->
        realistic requests), or for a method nobody serves."""
        rng = self.rng
        name = rng.choice([*samples, "fz.nothing"])
        examples = samples.get(name) or [None]
        roll = rng.random()
        if roll < 0.7 and examples[0] is not None:
            tree = msgspec.to_builtins(rng.choice(examples))
            body = _encode(self._mutate(tree, depth=0))
        elif roll < 0.85:
            body = _encode(self._stray())
        else:
            body = self.blob()
        return RawCall(raw_method(name), body)

    def _stray(self) -> object:
        rng = self.rng
        return rng.choice(
            [None, True, self.integer(), rng.choice(OUT_OF_RANGE_INTS), self.text(), [], {}]
        )

    def _mutate(self, value: object, depth: int) -> object:
        rng = self.rng
        if depth > 6:
            return value
        if isinstance(value, bool):
            return value if rng.random() < 0.5 else not value
        if isinstance(value, int):
            if rng.random() < 0.5:
                return value
            return rng.choice(OUT_OF_RANGE_INTS) if rng.random() < 0.05 else self.integer(value)
        if isinstance(value, float):
            return rng.choice([value, -1.0, 0.0, 1e308, float("inf"), float("nan")])
        if isinstance(value, str):
            return value if rng.random() < 0.6 else self.text()
        if isinstance(value, bytes):
            return value if rng.random() < 0.6 else self.blob()
        if isinstance(value, list):
            items = [self._mutate(v, depth + 1) for v in value]
            if items and rng.random() < 0.1:
                items = items * rng.randint(2, 40)
            return items
        if isinstance(value, dict):
            mutated = {k: self._mutate(v, depth + 1) for k, v in value.items()}
            if rng.random() < 0.1:
                mutated[self.text()] = self._stray()
            return mutated
        return value


def shard_server_samples(config_num: int = 1) -> dict[str, list[object]]:
    """Realistic requests for every method of a shard server, none naming a workload key."""
    from shardwise.shardserver import protocol as p  # noqa: PLC0415 - services, on demand

    shard = ShardId("default", 0)
    ops: list[KVOp] = [
        Get("fz-k"),
        Put("fz-k", "v"),
        Append("fz-k", b"v"),
        Delete("fz-k"),
        Cas("fz-k", None, "v"),
    ]
    write = p.WriteRequest(shard, "fz-client", 1, Put("fz-k", "v"))
    statement = SqlStatement("INSERT INTO fz_t VALUES (:a)", {"a": 1})
    return {
        p.WRITE.name: [p.WriteRequest(shard, "fz-client", i + 1, op) for i, op in enumerate(ops)],
        p.READ.name: [p.ReadRequest(shard, "fz-k")],
        p.BATCH.name: [p.BatchRequest(reads=(p.ReadRequest(shard, "fz-k"),), writes=(write,))],
        p.SCAN.name: [p.ScanRequest(shard, prefix="fz", limit=10)],
        p.PULL.name: [p.PullRequest(shard, config_num, mode=m) for m in ("frozen", "base")],
        p.HANDED_OFF.name: [p.HandedOffRequest(shard, config_num)],
        p.STATUS.name: [p.StatusRequest()],
        p.SQL_READ.name: [p.SqlReadRequest(shard, "SELECT 1", max_rows=5)],
        p.SQL_WRITE.name: [p.SqlWriteRequest(shard, "fz-client", 1, (statement,))],
        p.SQL_SCHEMA.name: [p.SqlSchemaRequest("default")],
    }


def controller_samples() -> dict[str, list[object]]:
    """Realistic requests for the controller's read-only methods, and none for ``CHANGE``
    (a valid change is an operator's right, not an attack): it gets stray values only."""
    from shardwise.controller import protocol as c  # noqa: PLC0415

    return {
        c.QUERY.name: [c.QueryRequest(num=-1), c.QueryRequest(num=1, newer_than=0, wait_s=0.01)],
        c.STATUS.name: [c.StatusRequest()],
        c.CHANGE.name: [],
    }
