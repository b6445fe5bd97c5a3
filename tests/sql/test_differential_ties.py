"""Review of the differential SQL test's generator (``shardwise.sql.difftest``): seeds
beyond the one CI runs. It promises answers that are unique ("ORDER BY covers every
output column ... so LIMIT cannot pick between tied rows"), but ``sum(DISTINCT v)`` over
the mixed-storage column gives ``0`` for one group and ``0.0`` for another (and ``7`` /
``7.0``): values SQLite orders and de-duplicates as equal. A LIMIT that cuts between two
such rows, or a SELECT DISTINCT over them, then has two right answers; shardwise picks the
other one and the run fails with no bug behind it (seed 1004 at query #161; seed 1001 at
query #1717, a SELECT DISTINCT). Whole results (no LIMIT) agree."""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence

import pytest

from shardwise.model.config import Keyspace, Scheme
from shardwise.sql import Coordinator, LocalShards
from shardwise.sql.difftest import (
    RANGE_KEYSPACE,
    RANGE_SPLITS,
    QueryGenerator,
    Row,
    compare_queries,
    create_statements,
    make_rows,
    reference_database,
)
from shardwise.sql.values import SqlValue

KEYSPACE = Keyspace("default", Scheme(kind="hash", shards=8))
RANGED = Keyspace(RANGE_KEYSPACE, Scheme(kind="range", shards=4, split_points=RANGE_SPLITS))
SEED = 1004
QUERIES = 200


@pytest.fixture
def local() -> Iterator[LocalShards]:
    shards = LocalShards([KEYSPACE, RANGED])
    yield shards
    shards.close()


async def _load(coordinator: Coordinator, data: dict[str, list[Row]], rng: random.Random) -> None:
    """As ``tests/sql/test_differential.py`` loads (the same draws from ``rng``)."""
    for ddl in create_statements():
        await coordinator.execute(ddl)
    for name, rows in data.items():
        start = 0
        while start < len(rows):
            chunk = rows[start : start + rng.randint(1, 60)]
            start += len(chunk)
            width = len(chunk[0])
            marks = ", ".join(
                "(" + ", ".join(f"${width * i + j + 1}" for j in range(width)) + ")"
                for i in range(len(chunk))
            )
            params = [value for row in chunk for value in row]
            await coordinator.execute(f"INSERT INTO {name} VALUES {marks}", params)


@pytest.mark.xfail(
    strict=True,
    reason="difftest's generator makes queries with two right answers (0 vs 0.0 tied "
    "across a LIMIT): the run fails although shardwise answers correctly",
)
async def test_another_seed_of_the_differential_generator_passes(local: LocalShards) -> None:
    print(f"seed={SEED}")
    rng = random.Random(SEED)
    coordinator = Coordinator(local, local)
    data = make_rows(rng)
    await _load(coordinator, data, rng)
    reference = reference_database(data)

    async def execute(sql: str, params: Sequence[SqlValue]) -> list[Row]:
        return (await coordinator.execute(sql, params)).rows

    try:
        await compare_queries(execute, reference, QueryGenerator(rng, data), QUERIES, SEED)
    finally:
        reference.close()
