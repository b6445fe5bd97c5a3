"""Who may settle a transaction: resolve and fence used to be say-so commands that a
read-only user could send, and the transaction id they need was handed to every reader
of a locked key. Now a reply names a lock by a tag, not the id; fencing needs a grant
to write; and only the user who prepared a transaction (or a node) may resolve it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from shardwise.model.access import AccessCatalog, Role, User, parse_grant
from shardwise.model.config import ShardId
from shardwise.model.kv import Put
from shardwise.model.scram import make_verifier
from shardwise.model.txn import TxnPart, TxnVote, new_txn_id, txn_created_ms, txn_tag
from shardwise.net.rpc import CallContext
from shardwise.net.wire import PeerRole
from shardwise.shardserver.access import AccessGuard
from shardwise.shardserver.protocol import (
    READ,
    TXN_PREPARE,
    TXN_RESOLVE,
    ReadRequest,
    TxnPrepareRequest,
    TxnReply,
    TxnShardsRequest,
)
from shardwise.shardserver.store import ShardStore
from shardwise.shardserver.txn.handlers import TxnHandlers
from shardwise.testing import scenarios
from shardwise.testing.cluster import SimCluster

# pytest (--import-mode=importlib) imports this file as part of the namespace package
# tests.shardserver; mypy, with no __init__.py in tests/, sees a top-level module instead.
from .test_txn_sim import keys_on_groups  # type: ignore[import-not-found]


async def test_a_read_only_user_may_not_fence_nor_prepare_writes() -> None:
    guard = AccessGuard()
    role = Role("r", (parse_grant("read:default"),))
    verifier = make_verifier("pw", salt=b"s" * 16)
    guard.update(AccessCatalog(1, {"eve": User("eve", verifier, ("r",))}, {"r": role}))
    handlers: Any = TxnHandlers.__new__(TxnHandlers)
    handlers._keyspace_denied = guard.kv_denied
    proposed: list[object] = []

    async def propose(command: object) -> TxnReply:
        proposed.append(command)
        return TxnReply("ok")

    handlers._propose = propose
    eve = CallContext("eve-client", PeerRole.CLIENT, 0.0, "eve")
    shard, txn = ShardId("default", 0), new_txn_id()
    prepare = TxnPrepareRequest(txn, (shard,), (TxnPart(shard, writes=(Put("k", "v"),)),))
    assert (await handlers._prepare(prepare, eve)).denied
    assert (await handlers._fence(TxnShardsRequest(txn, (shard,)), eve)).denied
    assert not proposed
    # A resolve is proposed (she may resolve what she prepared), carrying who asks:
    await handlers._resolve(TxnShardsRequest(txn, (shard,), commit=False), eve)
    assert [getattr(c, "user", None) for c in proposed] == ["eve"]


@pytest.mark.virtual_time
async def test_a_reader_learns_no_id_and_another_user_cannot_resolve(
    tmp_path: Path, seed: int
) -> None:
    """Every participant prepared (so the transaction is committed). A reader of ``a``
    used to learn the id from the "locked" answer and resolve the shard of ``a`` as
    aborted, splitting the transaction. Now it sees a tag; and even with the id, a
    resolve by a user other than the one who prepared it is refused as it applies."""
    async with SimCluster(tmp_path, groups=2, seed=seed) as cluster:
        await cluster.join(1, 2)
        await cluster.settled()
        config = await cluster.configuration()
        a, _, c, _ = keys_on_groups(config, 2, 2)
        sa, sc = scenarios.shard_of(config, a), scenarios.shard_of(config, c)
        txn = new_txn_id()
        leaders = {}
        for gid, shard, key in ((1, sa, a), (2, sc, c)):
            status = await cluster.group_status(gid)
            assert status is not None
            leaders[gid] = status.node_id
            part = TxnPart(shard, writes=(Put(key, "new"),))
            reply = await cluster.call(
                status.node_id, TXN_PREPARE, TxnPrepareRequest(txn, (sa, sc), (part,))
            )
            assert [v.state for v in reply.votes] == ["prepared"]
        # Committed (every participant prepared). A mere reader learns the id:
        seen = await cluster.call(leaders[1], READ, ReadRequest(sa, a))
        assert seen.status == "locked" and seen.locked_by == txn_tag(txn) != txn
        # With the id, another user's resolve is refused (prepared by no user here, so
        # the check is the store's: a transaction prepared by "alice", resolved by "eve").
        store = cluster._live[leaders[1]].state_machine.shards[sa].store
        assert store.txn_record(txn).state == "prepared"
        # The client's background resolution (TxnResolver.finish) commits both:
        for gid, shard in ((1, sa), (2, sc)):
            await cluster.call(
                leaders[gid], TXN_RESOLVE, TxnShardsRequest(txn, (shard,), commit=True)
            )
        async with cluster.client() as kv:
            both = (await kv.get(a), await kv.get(c))
            assert both in ((None, None), ("new", "new")), f"half a transaction: {both}"


def test_only_the_user_who_prepared_may_resolve(tmp_path: Path) -> None:
    shard = ShardId("default", 0)
    part = TxnPart(shard, writes=(Put("k", "v"),))
    with ShardStore.create(tmp_path / "s.db", shard, state="serving") as store:
        txn = new_txn_id()
        now = txn_created_ms(txn)
        vote = store.txn_prepare(1, txn, part, (shard,), now_ms=now, owner="alice")
        assert vote is not None and vote.state == "prepared"
        assert store.txn_resolve(2, txn, False, "eve") == TxnVote(shard, "denied")
        assert store.txn_resolve(3, txn, True, "alice") == TxnVote(shard, "committed")
        other = new_txn_id()
        store.txn_prepare(
            4, other, TxnPart(shard, writes=(Put("j", "v"),)), (shard,), now_ms=now, owner="alice"
        )
        assert store.txn_resolve(5, other, False, "") == TxnVote(shard, "aborted")  # a node
