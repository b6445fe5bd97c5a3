"""Transactions in the simulator (a controller of 3, groups of 3, virtual time): the
commit paths, conflicts, and the locks plain operations meet."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from shardwise.client import Client
from shardwise.model.config import Configuration, ShardId
from shardwise.model.kv import Put
from shardwise.model.txn import TransactionConflictError, TxnPart, new_txn_id
from shardwise.shardserver.protocol import TXN_PREPARE, TxnPrepareRequest
from shardwise.testing import scenarios
from shardwise.testing.cluster import SimCluster

pytestmark = pytest.mark.virtual_time


def keys_on_groups(config: Configuration, count: int, groups: int) -> list[str]:
    """``count`` keys per group, so a transaction over them spans every group."""
    found: dict[int, list[str]] = {}
    i = 0
    while any(len(found.get(g, [])) < count for g in range(1, groups + 1)):
        key = f"k{i}"
        i += 1
        gid = config.owner(scenarios.shard_of(config, key))
        if len(found.setdefault(gid, [])) < count:
            found[gid].append(key)
    return [k for g in sorted(found) for k in found[g]]


async def test_one_group_and_two_group_transactions_commit(tmp_path: Path, seed: int) -> None:
    async with SimCluster(tmp_path, groups=2, seed=seed) as cluster:
        await cluster.join(1, 2)
        await cluster.settled()
        config = await cluster.configuration()
        a, b, c, d = keys_on_groups(config, 2, 2)  # a, b on group 1; c, d on group 2
        async with cluster.client() as kv:
            await kv.put(a, "10")
            await kv.put(c, "5")
            async with kv.transaction() as tx:  # one group: one entry
                assert await tx.get(a) == "10"
                tx.put(a, "9")
                tx.put(b, "1")
                assert await tx.get(b) == "1"  # its own write
                assert await tx.get_many([a, b, c]) == {a: "9", b: "1", c: "5"}
            assert (await kv.get(a), await kv.get(b)) == ("9", "1")
            async with kv.transaction() as tx:  # two groups: prepare, then resolve
                tx.put(a, str(int(await tx.get(a) or 0) - 4))
                tx.put(c, str(int(await tx.get(c) or 0) + 4))
                tx.delete(d)
            assert (await kv.get(a), await kv.get(c), await kv.get(d)) == ("5", "9", None)


async def test_a_read_that_changed_aborts_the_commit(tmp_path: Path, seed: int) -> None:
    async with SimCluster(tmp_path, groups=2, seed=seed) as cluster:
        await cluster.join(1, 2)
        await cluster.settled()
        config = await cluster.configuration()
        a, _, c, _ = keys_on_groups(config, 2, 2)
        async with cluster.client() as kv:
            await kv.put(a, "1")
            for other in (a, c):  # one group, then two
                tx = kv.transaction()
                assert await tx.get(a) == "1"
                tx.put(other, "from the transaction")
                await kv.put(a, "2")  # a write the transaction did not see
                with pytest.raises(TransactionConflictError):
                    await tx.commit()
                await kv.put(a, "1")
            assert await kv.get(c) is None


async def test_transfers_keep_the_total(tmp_path: Path, seed: int) -> None:
    """Concurrent transfers between accounts on two groups, retried on conflict: the
    total never changes and every transfer that returned is applied once."""
    async with SimCluster(tmp_path, groups=2, seed=seed) as cluster:
        await cluster.join(1, 2)
        await cluster.settled()
        config = await cluster.configuration()
        accounts = keys_on_groups(config, 3, 2)
        async with cluster.client() as kv:
            for account in accounts:
                await kv.put(account, "100")

            async def transfer(client: Client, n: int) -> None:
                source, target = accounts[n % 6], accounts[(n * 5 + 1) % 6]
                if source == target:
                    return

                async def body(tx: object) -> None:
                    assert hasattr(tx, "get")
                    s = int(await tx.get(source) or 0)
                    t = int(await tx.get(target) or 0)
                    if s >= 7:
                        tx.put(source, str(s - 7))  # type: ignore[attr-defined]
                        tx.put(target, str(t + 7))  # type: ignore[attr-defined]

                await client.run_transaction(body, max_attempts=50)

            await asyncio.gather(*(transfer(kv, n) for n in range(30)))
            values = [int(await kv.get(a) or 0) for a in accounts]
            assert sum(values) == 600 and min(values) >= 0, values


async def _prepare_and_vanish(
    cluster: SimCluster,
    txn: str,
    parts: dict[int, list[TxnPart]],
    participants: tuple[ShardId, ...],
) -> None:
    """Prepare ``parts`` (by group) as a client would, then never resolve them."""
    for gid, group_parts in parts.items():
        leader = await cluster.group_status(gid)
        assert leader is not None
        reply = await cluster.call(
            leader.node_id, TXN_PREPARE, TxnPrepareRequest(txn, participants, tuple(group_parts))
        )
        assert [v.state for v in reply.votes] == ["prepared"] * len(group_parts), reply


async def test_a_transaction_whose_client_died_is_recovered(tmp_path: Path, seed: int) -> None:
    """Prepared everywhere, then the client vanished: its participants' recovery commits
    it (every participant prepared). Prepared at one participant only: the other is
    fenced and it aborts. Either way the keys are unlocked and consistent."""
    async with SimCluster(tmp_path, groups=2, seed=seed) as cluster:
        await cluster.join(1, 2)
        await cluster.settled()
        config = await cluster.configuration()
        a, _, c, _ = keys_on_groups(config, 2, 2)
        sa, sc = scenarios.shard_of(config, a), scenarios.shard_of(config, c)
        both = (sa, sc)
        async with cluster.client() as kv:
            everywhere = new_txn_id()
            await _prepare_and_vanish(
                cluster,
                everywhere,
                {
                    1: [TxnPart(sa, writes=(Put(a, "A1"),))],
                    2: [TxnPart(sc, writes=(Put(c, "C1"),))],
                },
                both,
            )
            # Plain reads wait for the locks, which recovery releases by committing.
            assert (await kv.get(a), await kv.get(c)) == ("A1", "C1")

            halfway = new_txn_id()
            await _prepare_and_vanish(
                cluster, halfway, {1: [TxnPart(sa, writes=(Put(a, "A2"),))]}, both
            )
            await kv.put(a, "A3")  # waits for the recovery, which aborts (c was fenced)
            assert (await kv.get(a), await kv.get(c)) == ("A3", "C1")
