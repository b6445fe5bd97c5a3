"""Final transaction records must not pile up: they used to stay until a client's
forget, so a client that died (or made-up fences) filled the table until the shard
refused every prepare (``MAX_TXN_RECORDS``). Now they expire once their transaction is
too old to prepare (``MAX_TXN_AGE_MS``), by the leader's ``TxnExpire``."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from shardwise.model.config import ShardId
from shardwise.model.kv import Put
from shardwise.model.txn import MAX_TXN_AGE_MS, TxnPart, TxnRead, TxnState, new_txn_id
from shardwise.shardserver.protocol import TXN_PREPARE, TxnPrepareRequest
from shardwise.shardserver.store import ShardStore
from shardwise.shardserver.txn import store as txn_store
from shardwise.shardserver.txn.recovery import EXPIRE_EVERY_S
from shardwise.testing import scenarios
from shardwise.testing.cluster import SimCluster

# pytest (--import-mode=importlib) imports this file as part of the namespace package
# tests.shardserver; mypy, with no __init__.py in tests/, sees a top-level module instead.
from .test_txn_sim import keys_on_groups  # type: ignore[import-not-found]

SHARD = ShardId("default", 0)


def test_a_full_table_refuses_prepares_until_old_records_expire(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(txn_store, "MAX_TXN_RECORDS", 5)  # 10,000 in production
    now = 1_800_000_000_000
    with ShardStore.create(tmp_path / "s.db", SHARD, state="serving") as store:
        index = 0
        for _ in range(5):
            index += 1
            vote = store.txn_fence(index, new_txn_id(now))
            assert vote is not None and vote.state == TxnState.FENCED
        part = TxnPart(SHARD, writes=(Put("k", "v"),))
        index += 1
        vote = store.txn_prepare(index, new_txn_id(now), part, (SHARD,), now_ms=now)
        assert vote is not None and vote.state == TxnState.ABORTED and "open" in vote.reason
        # Not yet too old to prepare: kept (a prepare on its way must still be refused).
        index += 1
        assert store.txn_expire(index, now + MAX_TXN_AGE_MS) == 0
        index += 1
        assert store.txn_expire(index, now + MAX_TXN_AGE_MS + 2) == 5  # (a refusal: not kept)
        later = now + MAX_TXN_AGE_MS + 2
        index += 1
        vote = store.txn_prepare(index, new_txn_id(later), part, (SHARD,), now_ms=later)
        assert vote is not None and vote.state == TxnState.PREPARED, vote


def test_a_prepare_too_old_or_from_a_clock_far_ahead_is_refused(tmp_path: Path) -> None:
    now = 1_800_000_000_000
    part = TxnPart(SHARD, writes=(Put("k", "v"),))
    with ShardStore.create(tmp_path / "s.db", SHARD, state="serving") as store:
        old, ahead = new_txn_id(now - MAX_TXN_AGE_MS - 1), new_txn_id(now + 60_000)
        vote = store.txn_prepare(1, old, part, (SHARD,), now_ms=now)
        assert vote is not None and vote.state == TxnState.ABORTED and "too old" in vote.reason
        vote = store.txn_prepare(2, ahead, part, (SHARD,), now_ms=now)
        assert vote is not None and vote.state == TxnState.ABORTED and "ahead" in vote.reason
        # The shard's clock never goes back: a later entry stamped earlier (another
        # leader's clock) still sees the transaction as too old.
        vote = store.txn_prepare(3, new_txn_id(now - MAX_TXN_AGE_MS + 5), part, (SHARD,), now_ms=1)
        assert vote is not None and vote.state == TxnState.PREPARED, vote


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
        reply = await cluster.call(
            leader.node_id, TXN_PREPARE, TxnPrepareRequest(txn, (sa, sc), (stale,))
        )
        assert [v.state for v in reply.votes] == ["aborted"]
        # The client dies here (before its TxnResolver.finish): the leaders' clean-up
        # drops the record once the transaction is too old to prepare.
        await asyncio.sleep(MAX_TXN_AGE_MS / 1000 + 2 * EXPIRE_EVERY_S)
        leader = await cluster.group_status(1)
        assert leader is not None
        store = cluster._live[leader.node_id].state_machine.shards[sa].store
        record = store.txn_record(txn)
        assert record is None, f"still recorded: {record}"
