"""Distributed SQL through global indexes against one SQLite holding every row.

The difftest kit's tables get global indexes on columns its generated conditions pin
(``g = ...``, ``h IN (...)``, ``v = ...`` over every storage class, ``s`` in the range
keyspace), some before the rows are loaded (kept by every INSERT) and some after (built
online from the rows there). Then the generated queries run, many of them through an
index (a lookup, or a covering read of the index alone), and must answer as the single
SQLite does; then every index must equal the index rebuilt from its table.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator, Sequence
from typing import Any

import pytest

from shardwise.model.config import Configuration, Keyspace, Scheme, ShardId
from shardwise.sql import Coordinator, LocalShards
from shardwise.sql.determinism import StatementContext
from shardwise.sql.difftest import (
    RANGE_KEYSPACE,
    RANGE_SPLITS,
    QueryGenerator,
    Row,
    compare_queries,
    create_statements,
    load,
    make_rows,
    reference_database,
)
from shardwise.sql.planner import plan
from shardwise.sql.plans import ReadPlan
from shardwise.sql.values import SqlValue
from shardwise.testing.index_check import index_problems

SHARDS = 8
QUERIES = 1200
KEYSPACE = Keyspace("default", Scheme(kind="hash", shards=SHARDS))
RANGED = Keyspace(RANGE_KEYSPACE, Scheme(kind="range", shards=4, split_points=RANGE_SPLITS))

BEFORE_LOAD = (
    "CREATE INDEX t_g ON t (g) WITH (scope = 'global')",
    "CREATE INDEX t_v ON t (v, x) WITH (scope = 'global')",
    "CREATE INDEX r_s ON r (s) INCLUDE (x, g) WITH (scope = 'global')",
)
AFTER_LOAD = (
    "CREATE INDEX t_h ON t (h) INCLUDE (g, x, y, s, v, big, n) WITH (scope = 'global')",
    "CREATE INDEX u_big ON u (big) WITH (scope = 'global')",
)


@pytest.fixture
def local() -> Iterator[LocalShards]:
    shards = LocalShards([KEYSPACE, RANGED])
    yield shards
    shards.close()


async def _load(coordinator: Coordinator, data: dict[str, list[Row]], rng: random.Random) -> None:
    await load(coordinator, data, rng, (*create_statements(), *BEFORE_LOAD))
    for ddl in AFTER_LOAD:
        await coordinator.execute(ddl)


async def _problems(local: LocalShards) -> list[str]:
    catalog = await local.catalog()
    config = Configuration(0, {}, dict(catalog.keyspaces), {}, dict(catalog.tables))

    async def read(keyspace: str, sql: str) -> list[list[tuple[Any, ...]]]:
        count = catalog.keyspaces[keyspace].scheme.shards
        return [
            [tuple(r) for r in local.connection(ShardId(keyspace, i)).execute(sql)]
            for i in range(count)
        ]

    return await index_problems(config, read)


async def test_queries_through_global_indexes_match_single_sqlite(
    local: LocalShards, rng: random.Random, seed: int
) -> None:
    started = time.monotonic()
    coordinator = Coordinator(local, local)
    data = make_rows(rng)
    await _load(coordinator, data, rng)
    assert await _problems(local) == []
    reference = reference_database(data)
    used = {"lookup": 0, "covering": 0}

    async def execute(sql: str, params: Sequence[SqlValue]) -> list[Row]:
        planned = plan(sql, list(params), await local.catalog(), StatementContext.fixed()).plan
        if isinstance(planned, ReadPlan):
            used["lookup"] += planned.lookup is not None
            used["covering"] += bool(planned.index)
        return (await coordinator.execute(sql, params)).rows

    try:
        kinds = await compare_queries(execute, reference, QueryGenerator(rng, data), QUERIES, seed)
    finally:
        reference.close()
    print(f"{QUERIES} queries in {time.monotonic() - started:.1f}s: {kinds}, indexes: {used}")
    # The generator pins indexed columns often enough for the indexes to be exercised.
    assert used["lookup"] > QUERIES // 20 and used["covering"] > 2, used


async def test_control_an_index_missing_entries_answers_differently(
    local: LocalShards, seed: int
) -> None:
    """The planted bug: a lookup through an index that lost entries. The checker and
    the comparison must both notice (the comparison only if a query meets the rows)."""
    rng = random.Random(seed)
    coordinator = Coordinator(local, local)
    data = make_rows(rng)
    await _load(coordinator, data, rng)
    for i in range(SHARDS):
        local.connection(ShardId("default", i)).execute(
            'DELETE FROM "sql__sw_gi_t_g" WHERE rowid % 3 = 0'
        )
    assert any("missing entry" in p for p in await _problems(local))
    reference = reference_database(data)
    try:
        for g in range(7):
            sql, params = "SELECT id FROM t WHERE g = ?", [g]
            want = sorted(reference.execute(sql, params).fetchall())
            got = sorted((await coordinator.execute(sql, params)).rows)
            if got != want:
                return
    finally:
        reference.close()
    pytest.fail("lookups through an index missing a third of its entries answered right")
