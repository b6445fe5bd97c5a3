"""Distributed SQL against one SQLite database holding every row: the same answers.

The data and at least :data:`QUERIES` queries come from the test's seed (printed; replay
with ``SHARDWISE_TEST_SEED``); a mismatch names the query, its parameters and the seed.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator, Sequence

import pytest

from shardwise.model.config import Keyspace, Scheme, ShardId
from shardwise.model.schemes import shard_map
from shardwise.sql import Coordinator, LocalShards
from shardwise.sql.difftest import (
    RANGE_KEYSPACE,
    RANGE_SPLITS,
    TABLES,
    QueryGenerator,
    Row,
    compare_queries,
    create_statements,
    load,
    make_rows,
    reference_database,
)
from shardwise.sql.values import SqlValue

SHARDS = 8
QUERIES = 2400
"""Generated queries per run (issue 19 asks for at least 2,000)."""

KEYSPACE = Keyspace("default", Scheme(kind="hash", shards=SHARDS))
RANGED = Keyspace(RANGE_KEYSPACE, Scheme(kind="range", shards=4, split_points=RANGE_SPLITS))


@pytest.fixture
def local() -> Iterator[LocalShards]:
    shards = LocalShards([KEYSPACE, RANGED])
    yield shards
    shards.close()


async def _load(coordinator: Coordinator, data: dict[str, list[Row]], rng: random.Random) -> None:
    await load(coordinator, data, rng, create_statements())


async def test_rows_land_on_the_shard_of_their_distribution_value(
    local: LocalShards, rng: random.Random
) -> None:
    coordinator = Coordinator(local, local)
    data = make_rows(rng)
    await _load(coordinator, data, rng)
    for name, rows in data.items():
        keyspace = RANGED if TABLES[name][2] == RANGE_KEYSPACE else KEYSPACE
        mapping = shard_map(keyspace)
        seen = 0
        for shard_id in range(keyspace.scheme.shards):
            conn = local.connection(ShardId(keyspace.name, shard_id))
            for (key,) in conn.execute(f"SELECT id FROM sql_{name}"):
                assert mapping.index(key) == shard_id, (name, key)
                seen += 1
        assert seen == len(rows)
    # Rows sit on every split point of the range keyspace, each in the shard it opens.
    on_splits = {r[0] for r in data["r"]} & set(RANGE_SPLITS)
    assert on_splits == set(RANGE_SPLITS)
    # The empty table is empty everywhere; the small one leaves most shards empty.
    assert TABLES["u"][1] < SHARDS


async def run_seed(
    local: LocalShards, rng: random.Random, seed: int, queries: int
) -> dict[str, int]:
    """Load the seed's data, then compare ``queries`` generated queries with one SQLite."""
    coordinator = Coordinator(local, local)
    data = make_rows(rng)
    await _load(coordinator, data, rng)
    reference = reference_database(data)

    async def execute(sql: str, params: Sequence[SqlValue]) -> list[Row]:
        return (await coordinator.execute(sql, params)).rows

    try:
        return await compare_queries(execute, reference, QueryGenerator(rng, data), queries, seed)
    finally:
        reference.close()


async def test_generated_queries_match_single_sqlite(
    local: LocalShards, rng: random.Random, seed: int
) -> None:
    started = time.monotonic()
    kinds = await run_seed(local, rng, seed, QUERIES)
    print(f"{QUERIES} queries in {time.monotonic() - started:.1f}s: {kinds}")


TIED_SEED = 1004
"""A seed past CI's that meets a generator flaw (found in review): ``sum(DISTINCT v)``
over the mixed-storage column gives ``0`` for one group and ``0.0`` for another, values
SQLite orders and de-duplicates as equal, so a LIMIT that cuts between them (here at
query #161) or a SELECT DISTINCT over them has two right answers and shardwise may pick
the other. Whole results agree. Seeds 1001 and 1017 meet it too."""


@pytest.mark.xfail(
    strict=True,
    reason="difftest's generator makes queries with two right answers (0 vs 0.0 tied "
    "across a LIMIT): the run fails although shardwise answers correctly",
)
async def test_a_seed_past_ci_whose_queries_tie(local: LocalShards) -> None:
    print(f"seed={TIED_SEED}")
    await run_seed(local, random.Random(TIED_SEED), TIED_SEED, 200)
