"""Review reproductions: final txn records that nobody forgets pile up until the shard
refuses every prepare (MAX_TXN_RECORDS), and a read-only caller can get there at will.
The first test PASSES by demonstrating the behaviour (asserts the refusal); the second
asserts the correct behaviour and FAILS on the code as reviewed."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from shardwise.model.config import ShardId
from shardwise.model.kv import Put
from shardwise.model.txn import TxnPart, TxnRead, TxnState, new_txn_id
from shardwise.shardserver.protocol import TXN_PREPARE, TxnPrepareRequest
from shardwise.shardserver.store import ShardStore
from shardwise.shardserver.txn import store as txn_store
from shardwise.testing import scenarios
from shardwise.testing.cluster import SimCluster

from .test_txn_sim import keys_on_groups

SHARD = ShardId("default", 0)


def test_fences_of_made_up_ids_fill_the_table_and_refuse_every_prepare(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(txn_store, "MAX_TXN_RECORDS", 5)  # 10,000 in production
    with ShardStore.create(tmp_path / "s.db", SHARD, state="serving") as store:
        index = 0
        for _ in range(5):  # txn.fence needs only READ on the keyspace
            index += 1
            assert store.txn_fence(index, new_txn_id()).state == TxnState.FENCED  # type: ignore[union-attr]
        index += 1
        vote = store.txn_prepare(
            index, new_txn_id(), TxnPart(SHARD, writes=(Put("k", "v"),)), (SHARD,)
        )
        assert vote is not None and vote.state == TxnState.ABORTED, vote
        # ...and fences are always recorded: the table has no bound at all.
        for _ in range(100):
            index += 1
            store.txn_fence(index, new_txn_id())
        assert store._query("SELECT count(*) FROM txns")[0][0] == 105  # noqa: SLF001


@pytest.mark.virtual_time
async def test_a_refused_prepare_whose_client_died_is_never_forgotten(
    tmp_path: Path, seed: int
) -> None:
    async with SimCluster(tmp_path, groups=2, seed=seed) as cluster:
        await cluster.join(1, 2)
        await cluster.settled()
        config = await cluster.configuration()
        a, _, c, _ = keys_on_groups(config, 2, 2)
        sa, sc = scenarios.shard_of(config, a), scenarios.shard_of(config, c)
        leader = await cluster.group_status(1)
        assert leader is not None
        txn = new_txn_id()
        stale = TxnPart(sa, reads=(TxnRead(a, 12345),), writes=(Put(a, "x"),))
        reply = await cluster.call(leader.node_id, TXN_PREPARE, TxnPrepareRequest(txn, (sa, sc), (stale,)))
        assert [v.state for v in reply.votes] == ["aborted"]
        # The client dies here (before its TxnResolver.finish). Nothing else forgets it:
        await asyncio.sleep(30)
        leader = await cluster.group_status(1)
        assert leader is not None
        store = cluster._live[leader.node_id].state_machine.shards[sa].store  # type: ignore[attr-defined]  # noqa: SLF001
        record = store.txn_record(txn)
        assert record is None, f"still recorded after 30 s: {record}"
