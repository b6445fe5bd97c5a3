"""Hostile prepares: a participant list naming a shard that does not exist used to be
accepted, and its locks were held for ever (recovery could not settle it); sixteen of
them starved the recovery of genuine ones. Now the door refuses them, and nothing stays
locked."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from shardwise.errors import ClientTimeoutError
from shardwise.model.config import ShardId
from shardwise.model.kv import Put
from shardwise.model.txn import TxnPart, TxnRead, new_txn_id
from shardwise.shardserver.protocol import TXN_PREPARE, TxnPrepareRequest
from shardwise.testing import scenarios
from shardwise.testing.cluster import SimCluster

pytestmark = pytest.mark.virtual_time


@pytest.mark.parametrize(
    "bogus",
    [ShardId("no-such-keyspace", 0), ShardId("default", 10_000), ShardId("default", -1)],
    ids=["unknown-keyspace", "index-out-of-range", "negative-index"],
)
async def test_prepare_naming_a_bogus_participant_locks_for_ever(
    tmp_path: Path, seed: int, bogus: ShardId
) -> None:
    async with SimCluster(tmp_path, groups=1, seed=seed) as cluster:
        await cluster.join(1)
        await cluster.settled()
        config = await cluster.configuration()
        key = "k0"
        shard = scenarios.shard_of(config, key)
        leader = await cluster.group_status(1)
        assert leader is not None
        txn = new_txn_id()
        reply = await cluster.call(
            leader.node_id,
            TXN_PREPARE,
            TxnPrepareRequest(txn, (shard, bogus), (TxnPart(shard, writes=(Put(key, "x"),)),)),
        )
        assert reply.error and not reply.votes, reply  # refused at the door
        # Recovery starts after 2 s; give it 40 s (more than RECOVERY_DEADLINE_S).
        await asyncio.sleep(40)
        async with cluster.client() as kv:
            try:
                await kv.get(key, deadline_s=5)
            except ClientTimeoutError as exc:
                pytest.fail(f"the key is still locked after 40 s: {exc}")


@pytest.mark.parametrize("poison", [16, 0], ids=["poisoned", "control"])
async def test_sixteen_bogus_prepares_starve_recovery_of_a_real_one(
    tmp_path: Path, seed: int, poison: int
) -> None:
    """MAX_RECOVERING slots were taken, oldest first, by recoveries that could never
    settle: a genuine dead client's transaction was not recovered. (The control: none.)"""
    async with SimCluster(tmp_path, groups=1, seed=seed) as cluster:
        await cluster.join(1)
        await cluster.settled()
        config = await cluster.configuration()
        target = scenarios.shard_of(config, "k0")
        keys = [
            k for k in (f"k{i}" for i in range(2000)) if scenarios.shard_of(config, k) == target
        ]
        assert len(keys) >= 17
        leader = await cluster.group_status(1)
        assert leader is not None

        async def prepare(key: str, participants: tuple[ShardId, ...], *, bogus: bool) -> None:
            part = TxnPart(target, writes=(Put(key, "x"),))
            reply = await cluster.call(
                leader.node_id, TXN_PREPARE, TxnPrepareRequest(new_txn_id(), participants, (part,))
            )
            if bogus:
                assert reply.error and not reply.votes, reply
            else:
                assert [v.state for v in reply.votes] == ["prepared"], reply

        for key in keys[:poison]:
            await prepare(key, (target, ShardId("default", -1)), bogus=True)
        # A genuine transaction whose client died with every participant prepared:
        # recovery should commit it within ~2.5 s.
        await prepare(keys[16], (target,), bogus=False)
        await asyncio.sleep(12)  # (recovery would commit it after ~2.5 s)
        async with cluster.client() as kv:
            try:  # recovered and committed (the control passes; poisoned fails)
                assert await kv.get(keys[16], deadline_s=5) == "x"
            except ClientTimeoutError as exc:
                pytest.fail(f"a dead client's transaction was not recovered in 12 s: {exc}")


async def test_a_read_only_part_with_a_bogus_participant_blocks_writers_for_ever(
    tmp_path: Path, seed: int
) -> None:
    """A part that only reads needs only READ at the door; its shared locks keep every
    plain write off the key, and the bogus participant keeps recovery from ever
    releasing them: a read-only user can make any key unwritable."""
    async with SimCluster(tmp_path, groups=1, seed=seed) as cluster:
        await cluster.join(1)
        await cluster.settled()
        config = await cluster.configuration()
        key = "k0"
        shard = scenarios.shard_of(config, key)
        leader = await cluster.group_status(1)
        assert leader is not None
        part = TxnPart(shard, reads=(TxnRead(key, -1),))
        bogus = ShardId("no-such-keyspace", 0)
        await cluster.call(
            leader.node_id, TXN_PREPARE, TxnPrepareRequest(new_txn_id(), (shard, bogus), (part,))
        )
        await asyncio.sleep(40)
        async with cluster.client() as kv:
            try:
                await kv.put(key, "v", deadline_s=5)
            except ClientTimeoutError as exc:
                pytest.fail(f"the key is still write-locked after 40 s: {exc}")
