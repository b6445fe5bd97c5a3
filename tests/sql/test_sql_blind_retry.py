"""The back-off of a write made atomic on its own (``client/sqltxn.write_atomically``):
it must grow with how long an attempt takes, or writers whose attempts are long (a
reference table's write over every shard) meet again at every retry."""

from __future__ import annotations

import asyncio
import itertools
import random

import pytest

from shardwise.client import sqltxn
from shardwise.client.turns import ShardTurns
from shardwise.model.txn import TransactionConflictError
from shardwise.sql.plans import Fragment, ShardBatch

ATTEMPT_S = 1.0
CONFLICTS = 12


class Attempt:
    """One try: takes ATTEMPT_S, then meets a lock of another writer (the first
    CONFLICTS tries)."""

    made = 0
    sql_failure = None
    rowcount = 7

    def __init__(self) -> None:
        Attempt.made += 1

    def add_sql(self, *args: object, **kwargs: object) -> None:
        pass

    async def commit(self) -> None:
        await asyncio.sleep(ATTEMPT_S)
        if Attempt.made <= CONFLICTS:
            raise TransactionConflictError("held by another transaction")


class Cluster:
    def __init__(self) -> None:
        self.turns = ShardTurns()

    def planned(self, keyspace: str) -> None:
        return None

    def remaining(self) -> float:
        return 1e9


@pytest.mark.virtual_time
async def test_the_pause_between_tries_grows_past_the_time_an_attempt_takes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pauses: list[float] = []

    def longest(low: float, high: float) -> float:
        pauses.append(high)
        return high

    monkeypatch.setattr(random, "uniform", longest)
    Attempt.made = 0
    batches = [ShardBatch(i, (Fragment("INSERT INTO sql_t VALUES (1)"),)) for i in range(4)]
    written = await sqltxn.write_atomically(Cluster(), Attempt, "default", batches)  # type: ignore[arg-type]
    assert written == 7 and len(pauses) == CONFLICTS
    # Doubling from a few milliseconds, then up to twice an attempt's time: not capped
    # at the 0.2 s that suits one-shard locks.
    assert pauses[-1] == pytest.approx(2 * ATTEMPT_S, rel=0.01)
    assert all(b >= a for a, b in itertools.pairwise(pauses))


class Overlapping:
    """A try that meets a lock whenever another try is in flight at the same time (all
    writes here span the same shards, as a client's bulk INSERTs over most shards do)."""

    in_flight = 0
    conflicts = 0
    sql_failure = None
    rowcount = 1

    def add_sql(self, *args: object, **kwargs: object) -> None:
        pass

    async def commit(self) -> None:
        Overlapping.in_flight += 1
        try:
            await asyncio.sleep(ATTEMPT_S)
            if Overlapping.in_flight > 1:
                Overlapping.conflicts += 1
                raise TransactionConflictError("held by another transaction")
        finally:
            Overlapping.in_flight -= 1


@pytest.mark.virtual_time
async def test_one_clients_writes_over_the_same_shards_take_turns_instead_of_racing() -> None:
    # Was: four writes in flight aborted one another; one could lose every race until
    # its deadline (a 1M-row load did).
    Overlapping.conflicts = 0
    cluster = Cluster()
    started = asyncio.get_running_loop().time()

    async def write(first: int) -> int:
        batches = [ShardBatch(i, (Fragment("INSERT INTO sql_t VALUES (1)"),)) for i in range(4)]
        return await sqltxn.write_atomically(cluster, Overlapping, "default", batches[first:])  # type: ignore[arg-type]

    assert await asyncio.gather(*(write(n) for n in range(3))) == [1, 1, 1]
    assert Overlapping.conflicts == 0
    assert asyncio.get_running_loop().time() - started == pytest.approx(3 * ATTEMPT_S)
