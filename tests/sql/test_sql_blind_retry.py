"""The back-off of a write made atomic on its own (``client/sqltxn.write_atomically``):
it must grow with how long an attempt takes, or writers whose attempts are long (a
reference table's write over every shard) meet again at every retry."""

from __future__ import annotations

import asyncio
import itertools
import random

import pytest

from shardwise.client import sqltxn
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
