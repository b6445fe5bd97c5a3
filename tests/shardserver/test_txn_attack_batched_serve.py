"""Hostile review of ``serve_batch`` (``shardserver/batches.py``) with transactions' calls:
a user's batch that mixes calls refused at the door with admitted ones must answer each
caller with its own reply, in the request's order, and log only what was admitted. The
server is a stand-in around a real ``ShardGroupStateMachine`` (proposals apply to it at
once) and the real door (``TxnHandlers.admit_*``) and access guard."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from shardwise.model.access import AccessCatalog, Role, User, parse_grant
from shardwise.model.config import ShardId
from shardwise.model.kv import Put
from shardwise.model.scram import make_verifier
from shardwise.model.txn import TxnPart, TxnRead, new_txn_id
from shardwise.net.rpc import CallContext
from shardwise.net.wire import PeerRole
from shardwise.shardserver import batches
from shardwise.shardserver.access import AccessGuard
from shardwise.shardserver.commands import ClientBatch, Command, Reconfigure, decode_result, encode
from shardwise.shardserver.protocol import (
    BatchRequest,
    ReadRequest,
    TxnCommitRequest,
    TxnPrepareRequest,
    TxnShardsRequest,
    WriteRequest,
)
from shardwise.shardserver.server import ShardServer
from shardwise.shardserver.statemachine import ShardGroupStateMachine
from shardwise.shardserver.txn.handlers import TxnHandlers

# pytest (--import-mode=importlib) imports this file as part of the namespace package
# tests.shardserver; mypy, with no __init__.py in tests/, sees a top-level module instead.
from .test_group_statemachine import config  # type: ignore[import-not-found]

S = [ShardId("default", i) for i in range(4)]


class _Server:
    """What ``serve_batch`` uses of a ``ShardServer``, on one replica that leads."""

    def __init__(self, directory: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.sm = ShardGroupStateMachine(1, directory)
        self.index = 0
        self.logged: list[Command] = []
        self.apply(Reconfigure(config(1, {0: 1, 1: 1}, groups=(1,))))
        self.guard = self.access = AccessGuard()
        role = Role("reader", (parse_grant("read:default"),))
        verifier = make_verifier("pw", salt=b"s" * 16)
        self.guard.update(
            AccessCatalog(1, {"eve": User("eve", verifier, ("reader",))}, {"reader": role})
        )
        status = SimpleNamespace(halted=False, leader="me", applied=0, commit=0)
        self.host = SimpleNamespace(
            id="me", state_machine=self.sm, status=lambda: status, node=SimpleNamespace(leader="me")
        )
        txns: Any = TxnHandlers.__new__(TxnHandlers)
        txns.host = self.host
        txns._access = self.guard
        txns._keyspace_denied = self.guard.kv_denied
        txns._sql_denied = lambda *a, **k: None
        txns._max_steps, txns._max_seconds = 1000, 1.0

        async def propose_alone(command: Command) -> Any:
            return txns.reply_of(self.apply(command))

        txns._propose = propose_alone
        self.txns = txns
        self.reads_served: Counter[ShardId] = Counter()
        self.writes_served: Counter[ShardId] = Counter()

        async def propose_batch(server: Any, entry: ClientBatch) -> Any:
            if not entry.ops and not entry.txns:
                return None
            return self.apply(entry)

        monkeypatch.setattr(batches, "_propose", propose_batch)

    def apply(self, command: Command) -> Any:
        self.index += 1
        self.logged.append(command)
        result = decode_result(self.sm.apply(self.index, encode(command)))
        self.sm.end_batch()
        return result

    def kv_refusal(self, context: CallContext, need: Any, shard: ShardId) -> Any:
        return ShardServer.kv_refusal(self, context, need, shard)  # type: ignore[arg-type]

    def read_reply(self, shard: ShardId, found: Any, leader: str | None) -> Any:
        return ShardServer.read_reply(self, shard, found, leader)  # type: ignore[arg-type]

    def write_reply(self, shard: ShardId, result: Any) -> Any:
        return ShardServer.write_reply(self, shard, result)  # type: ignore[arg-type]


async def test_a_users_batch_answers_each_call_its_own_reply(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Eve may read the keyspace, not write it. Her batch holds, in each kind, calls the
    door refuses between calls it admits; each reply must be the one its call would get
    alone, and nothing refused may reach the log."""
    server = _Server(tmp_path, monkeypatch)
    eve = CallContext("eve-client", PeerRole.CLIENT, 0.0, "eve")
    t_read, t_write = new_txn_id(), new_txn_id()
    request = BatchRequest(
        reads=(
            ReadRequest(S[0], "k", versioned=True, validated=True),
            ReadRequest(S[1], "k"),
        ),
        writes=(WriteRequest(S[0], "eve", 1, Put("k", "v")),),  # denied
        commits=(
            TxnCommitRequest("eve", 2, (TxnPart(S[2], writes=(Put("w", "1"),)),)),  # denied
            TxnCommitRequest("eve", 3, ()),  # no parts: refused
            TxnCommitRequest("eve", 4, (TxnPart(S[3], reads=(TxnRead("r", -1),)),)),  # ok
        ),
        prepares=(
            TxnPrepareRequest("not an id", (S[1],), (TxnPart(S[1], reads=(TxnRead("x", -1),)),)),
            TxnPrepareRequest(t_read, (S[1],), (TxnPart(S[1], reads=(TxnRead("x", -1),)),)),
            TxnPrepareRequest(t_write, (S[2],), (TxnPart(S[2], writes=(Put("y", "1"),)),)),
        ),
        resolves=(
            TxnShardsRequest(t_read, (S[0],), commit=False),  # ok: S[0] only read
            TxnShardsRequest("not an id", (S[0],)),
        ),
    )

    # (The reads that are not ``validated`` go through ReadIndex: stand it in.)
    async def linearizable(server_: Any, requests: Any) -> Any:
        return await batches.leader_reads(server_, requests)

    monkeypatch.setattr(batches, "_linearizable", linearizable)
    reply = await batches.serve_batch(server, request, eve)  # type: ignore[arg-type]

    assert [r.status for r in reply.reads] == ["ok", "ok"] and not any(r.error for r in reply.reads)
    assert len(reply.writes) == 1 and reply.writes[0].denied
    txns = reply.txns
    assert len(txns) == 8
    c_denied, c_empty, c_ok, p_bad, p_ok, p_denied, r_ok, r_bad = txns
    assert c_denied.denied and not c_denied.votes
    assert c_empty.error and not c_empty.denied and not c_empty.votes
    assert [(v.shard, v.state) for v in c_ok.votes] == [(S[3], "committed")]
    assert p_bad.error and not p_bad.votes
    assert [(v.shard, v.state) for v in p_ok.votes] == [(S[1], "prepared")]
    assert p_denied.denied and not p_denied.votes
    assert [(v.shard, v.state) for v in r_ok.votes] == [(S[0], "aborted")]
    assert r_bad.error and not r_bad.votes
    # Only the admitted calls were logged, with who asked.
    logged = [c for c in server.logged if not isinstance(c, Reconfigure)]
    assert len(logged) == 1 and isinstance(logged[0], ClientBatch)
    assert not logged[0].ops
    assert [type(c).__name__ for c in logged[0].txns] == ["TxnCommit", "TxnPrepare", "TxnResolve"]
    assert [getattr(c, "user", None) for c in logged[0].txns] == [None, "eve", "eve"]
    server.sm.close()
