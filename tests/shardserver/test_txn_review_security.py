"""Review reproductions: resolve/fence/forget are say-so commands that need only READ,
and the transaction id they need is handed to every reader of a locked key. Each test
asserts the correct behaviour: both FAIL on the code as reviewed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from shardwise.model.access import AccessCatalog, Role, User, parse_grant
from shardwise.model.config import ShardId
from shardwise.model.kv import Put
from shardwise.model.scram import make_verifier
from shardwise.model.txn import TxnPart, new_txn_id
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
from shardwise.shardserver.txn.handlers import TxnHandlers
from shardwise.testing import scenarios
from shardwise.testing.cluster import SimCluster

from .test_txn_sim import keys_on_groups


async def test_a_read_only_user_may_resolve_and_fence_others_transactions() -> None:
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
    # Eve may not write...
    prepare = TxnPrepareRequest(txn, (shard,), (TxnPart(shard, writes=(Put("k", "v"),)),))
    assert (await handlers._prepare(prepare, eve)).denied
    # ...so she must not commit or abort (nor fence) anyone's prepared transaction at
    # one shard either (today all three are proposed).
    for commit in (True, False):
        reply = await handlers._resolve(TxnShardsRequest(txn, (shard,), commit=commit), eve)
        print("resolve", commit, reply)
    print("fence", await handlers._fence(TxnShardsRequest(txn, (shard,)), eve))
    assert not [type(c).__name__ for c in proposed], "a read-only user's resolve/fence was proposed"


@pytest.mark.virtual_time
async def test_a_stray_resolve_at_one_participant_splits_a_committed_transaction(
    tmp_path: Path, seed: int
) -> None:
    """Every participant prepared (so the transaction is committed, and its client says
    so). A reader of ``a`` learns the id from the "locked" answer and resolves the shard
    of ``a`` as aborted; the client's own resolution then commits ``c`` only."""
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
        assert seen.status == "locked" and seen.locked_by == txn
        # ...and aborts one participant:
        stray = await cluster.call(
            leaders[1], TXN_RESOLVE, TxnShardsRequest(seen.locked_by, (sa,), commit=False)
        )
        assert [v.state for v in stray.votes] == ["aborted"]
        # The client's background resolution (TxnResolver.finish) commits both:
        for gid, shard in ((1, sa), (2, sc)):
            await cluster.call(leaders[gid], TXN_RESOLVE, TxnShardsRequest(txn, (shard,), commit=True))
        async with cluster.client() as kv:
            both = (await kv.get(a), await kv.get(c))
            assert both in ((None, None), ("new", "new")), f"half a transaction: {both}"
