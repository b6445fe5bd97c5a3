"""A slow client against a recoverer: recovery used to abort and then forget a
transaction whose client was only slow; the client's still-retrying prepare then landed
on a shard with no record and prepared, and the client (every vote "prepared") reported
it committed while one participant had aborted: half a transaction. Now records live
until the transaction is too old to prepare anywhere."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from shardwise.model.txn import TransactionConflictError
from shardwise.testing.cluster import SimCluster

# pytest (--import-mode=importlib) imports this file as part of the namespace package
# tests.shardserver; mypy, with no __init__.py in tests/, sees a top-level module instead.
from .test_txn_sim import keys_on_groups  # type: ignore[import-not-found]

pytestmark = pytest.mark.virtual_time


async def test_a_prepare_retried_after_recovery_forgot_commits_half(
    tmp_path: Path, seed: int
) -> None:
    async with SimCluster(tmp_path, groups=2, seed=seed) as cluster:
        await cluster.join(1, 2)
        await cluster.settled()
        config = await cluster.configuration()
        a, _, c, _ = keys_on_groups(config, 2, 2)  # a on group 1, c on group 2
        async with cluster.client() as kv:
            await kv.put(a, "a0")
            await kv.put(c, "c0")
            tx = kv.transaction()
            assert (await tx.get(a), await tx.get(c)) == ("a0", "c0")
            tx.put(a, "a1")
            tx.put(c, "c1")
            # The client loses group 2 for 6 s (the servers still reach each other).
            cluster.partition(["client-1"], cluster.servers[2])
            commit = asyncio.create_task(tx.commit())
            await asyncio.sleep(6)  # group 1's recovery fences c, aborts, forgets
            cluster.heal()
            try:
                await commit
                said = "committed"
            except TransactionConflictError:
                said = "aborted"
            await asyncio.sleep(1)  # the background resolution
            seen = (await kv.get(a), await kv.get(c))
            expected = ("a1", "c1") if said == "committed" else ("a0", "c0")
            assert seen == expected, f"the client said {said}; the keys are {seen}"
