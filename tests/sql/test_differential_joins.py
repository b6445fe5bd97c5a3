"""Joins and subqueries against one SQLite database holding every row: the same answers.

The multi-table schema and queries come from ``shardwise.sql.difftest_joins`` and the
test's seed (printed; replay with ``SHARDWISE_TEST_SEED``)."""

from __future__ import annotations

import dataclasses
import random
import re
from collections import Counter
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime

import pytest

from shardwise.model.config import Keyspace, Scheme
from shardwise.sql import (
    Coordinator,
    LocalShards,
    colocated,
    coordinator,
    join_plan,
    planner,
    repartition,
)
from shardwise.sql.bind import conjuncts
from shardwise.sql.determinism import StatementContext
from shardwise.sql.difftest import Query, Row, compare_queries, differences
from shardwise.sql.difftest_joins import (
    Execute,
    JoinQueryGenerator,
    join_reference,
    load_join_tables,
    make_join_rows,
)
from shardwise.sql.planner import plan
from shardwise.sql.plans import JoinPlan, ReadPlan, TableScan
from shardwise.sql.shipped import ShippedTable
from shardwise.sql.values import SqlValue

QUERIES = 1_200
"""Generated join and subquery queries per run (the issue asks for at least 1,000)."""

KEYSPACE = Keyspace("default", Scheme(kind="hash", shards=8))


@pytest.fixture
def local() -> Iterator[LocalShards]:
    shards = LocalShards([KEYSPACE])
    yield shards
    shards.close()


def runner(coordinator: Coordinator) -> Execute:
    async def execute(sql: str, params: Sequence[SqlValue]) -> list[Row]:
        return (await coordinator.execute(sql, list(params))).rows

    return execute


async def test_generated_joins_and_subqueries_match_single_sqlite(
    local: LocalShards, seed: int, rng: random.Random
) -> None:
    data = make_join_rows(rng)
    reference = join_reference(data)
    execute = runner(Coordinator(local, local))
    await load_join_tables(execute, data)
    generator = Recording(JoinQueryGenerator(rng))
    kinds = await compare_queries(execute, reference, generator, QUERIES, seed)
    catalog = await local.catalog()
    context = StatementContext(datetime(2026, 1, 1, tzinfo=UTC), 0)
    plans = [plan(q.sql, q.params, catalog, context).plan for q in generator.queries]
    strategies = Counter(_strategy(p) for p in plans)
    print(f"seed={seed}: {kinds} {dict(strategies)}")
    assert kinds["ordered"] > QUERIES // 4 and kinds["unordered"] > QUERIES // 4
    # Both strategies, and the co-located one down to a single shard, on data where
    # they matter.
    assert strategies["coordinator-join"] > QUERIES // 4
    assert strategies["broadcast"] > QUERIES // 10
    assert strategies["co-located"] > QUERIES // 20
    assert strategies["co-located single-shard"] > 0
    # Joins with the reference table t run on the shards.
    with_reference = sum(
        1
        for p in plans
        if isinstance(p, ReadPlan)
        and p.table.startswith("co-located join ")
        and re.search(r"\bt\b", p.table)
    )
    assert with_reference > QUERIES // 40
    reference.close()


REPARTITION_QUERIES = 400
"""Generated queries of the run with broadcast joins off and small repartition steps."""
STEP_ROWS = 80
"""Rows a step holds there: several steps for every join, room for the most skewed key
(a third of the orders are one customer's)."""


@pytest.mark.parametrize("analyzed", [False, True])
async def test_generated_joins_match_single_sqlite_by_repartition_in_many_steps(
    local: LocalShards,
    seed: int,
    rng: random.Random,
    monkeypatch: pytest.MonkeyPatch,
    analyzed: bool,
) -> None:
    """With broadcast joins off and steps of 80 rows, every join on a column neither
    table is distributed by runs as a repartition join over several steps: planned from
    ANALYZE's counts, or grown from one step when the tables were never analyzed."""
    monkeypatch.setattr(planner, "plan_broadcast", lambda *args, **kwargs: None)
    monkeypatch.setattr(repartition, "REPARTITION_STEP_ROWS", STEP_ROWS)
    data = make_join_rows(rng)
    reference = join_reference(data)
    execute = runner(Coordinator(local, local))
    await load_join_tables(execute, data)
    if analyzed:
        await execute("ANALYZE", [])
    generator = Recording(JoinQueryGenerator(rng))
    await compare_queries(execute, reference, generator, REPARTITION_QUERIES, seed)
    catalog = await local.catalog()
    context = StatementContext(datetime(2026, 1, 1, tzinfo=UTC), 0)
    plans = [plan(q.sql, q.params, catalog, context).plan for q in generator.queries]
    steps = [p.repartition.steps for p in plans if isinstance(p, JoinPlan) and p.repartition]
    print(f"seed={seed}: {len(steps)} repartition joins, planned steps {Counter(steps)}")
    assert len(steps) > REPARTITION_QUERIES // 40
    assert all(s > 1 for s in steps) if analyzed else all(s == 1 for s in steps)
    reference.close()


async def test_control_repartition_sides_split_differently_is_caught(
    local: LocalShards, seed: int, rng: random.Random, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The comparison catches a repartition join whose two scans put equal keys in
    different steps (the second scan's step numbered backwards)."""
    monkeypatch.setattr(planner, "plan_broadcast", lambda *args, **kwargs: None)
    monkeypatch.setattr(repartition, "REPARTITION_STEP_ROWS", STEP_ROWS)
    original = repartition._stepped

    def backwards(scan: TableScan, key: str, *, nulls: bool) -> TableScan:
        stepped = original(scan, key, nulls=nulls)
        if scan.name != "_sw_t1":
            return stepped
        fragment = stepped.read.fragment
        assert fragment is not None
        sql = fragment.sql.replace(":sw_step", "(:sw_steps - 1 - :sw_step)").replace(
            "(:sw_steps - 1 - :sw_step)s", ":sw_steps"
        )
        read = dataclasses.replace(stepped.read, fragment=dataclasses.replace(fragment, sql=sql))
        return dataclasses.replace(stepped, read=read)

    monkeypatch.setattr(repartition, "_stepped", backwards)
    await _differs(local, rng, seed, failed=False)


async def _differs(
    local: LocalShards, rng: random.Random, seed: int, *, failed: bool = True
) -> None:
    """The generated queries, over the join tables, find a difference (a planted bug);
    with ``failed``, a query that fails counts as one."""
    data = make_join_rows(rng)
    reference = join_reference(data)
    execute = runner(Coordinator(local, local))
    await load_join_tables(execute, data)
    with pytest.raises(AssertionError, match=r"differs|failed" if failed else "differs"):
        await compare_queries(execute, reference, JoinQueryGenerator(rng), QUERIES, seed)
    reference.close()


class Recording:
    def __init__(self, inner: JoinQueryGenerator) -> None:
        self.inner = inner
        self.queries: list[Query] = []

    def next(self) -> Query:
        query = self.inner.next()
        self.queries.append(query)
        return query


def _strategy(planned: object) -> str:
    if isinstance(planned, JoinPlan):
        return planned.strategy
    assert isinstance(planned, ReadPlan)
    if planned.table.startswith("co-located"):
        return "co-located single-shard" if planned.strategy == "single-shard" else "co-located"
    return planned.strategy


@pytest.mark.parametrize(
    "planted",
    [
        "outer-join-filter",
        "left-join-on-filter",
        "co-located-not-on-keys",
        "pins-any-affinity",
        "reference-rows-preserved",
        "shipped-untyped",
    ],
)
async def test_control_a_planted_pushdown_bug_is_caught(
    local: LocalShards, seed: int, rng: random.Random, monkeypatch: pytest.MonkeyPatch, planted: str
) -> None:
    """The comparison catches a scan narrowed where it must not be (WHERE conditions
    pushed into the NULL-extended side of an outer join, an outer join's ON condition
    pushed into its preserved side, a constant carried across an equality of two
    affinities) and a join run inside the shards that does not join on the distribution
    columns, or that keeps a reference table's unmatched rows on every shard, and a
    broadcast join whose shipped rows lose their columns' affinity."""
    if planted == "shipped-untyped":
        # The bug: a broadcast join's shipped rows declared without their affinity (as a
        # VALUES list would be), so text_column = 5 no longer converts the 5.
        def untyped(scan, rows):  # type: ignore[no-untyped-def]
            return ShippedTable(scan.name, tuple((n, "BLOB") for n, _ in scan.columns), rows)

        monkeypatch.setattr(coordinator, "_shipped", untyped)
    elif planted == "reference-rows-preserved":
        # The bug: t LEFT JOIN c run inside the shards.
        monkeypatch.setattr(colocated, "_may_anchor", lambda side: True)
    elif planted == "pins-any-affinity":
        # The bug: a.k = b.k AND a.k = 3 carried to b.k = 3 whatever b.k's affinity.
        monkeypatch.setattr(join_plan, "_affinity", lambda catalog, reference, column: "")
    elif planted == "co-located-not-on-keys":
        # The bug: any join of one keyspace run inside the shards, whatever it joins on.
        monkeypatch.setattr(colocated, "_joined_on_distribution", lambda select, refs: True)
    elif planted == "outer-join-filter":
        monkeypatch.setattr(join_plan, "_mark_outer_joins", lambda select, references: None)
    else:
        original = join_plan._push_conditions

        def as_where(select, references, catalog):  # type: ignore[no-untyped-def]
            # The bug: an outer join's ON condition treated as a WHERE condition, so it
            # narrows the preserved side too (whose rows must all survive).
            original(select, references, catalog)
            top = references  # (the tables this SELECT names itself)
            for join in select.args.get("joins") or ():
                for condition in conjuncts(join.args.get("on")):
                    found = join_plan._only_reference(condition, top, catalog)
                    if found is not None and found.node is not join.this:
                        found.filters.append(condition)

        monkeypatch.setattr(join_plan, "_push_conditions", as_where)
    await _differs(local, rng, seed)


@pytest.mark.parametrize(
    "select",
    [
        # co-located
        "SELECT o.id, c.id, o.amount FROM c JOIN o ON o.cid = c.id WHERE o.amount > 10",
        # coordinator join, a subquery, a derived table
        "SELECT p.id, o.cid, p.qty FROM o JOIN p ON p.oid = o.id",
        "SELECT id, tier, NULL FROM c WHERE id NOT IN (SELECT cid FROM o)",
        "SELECT d.cid, d.n, d.total FROM (SELECT cid, count(*) AS n, sum(amount) AS total "
        "FROM o GROUP BY cid) AS d",
    ],
)
async def test_insert_select_over_joins_writes_what_one_sqlite_writes(
    local: LocalShards, rng: random.Random, select: str
) -> None:
    data = make_join_rows(rng)
    reference = join_reference(data)
    execute = runner(Coordinator(local, local))
    await load_join_tables(execute, data)
    create = "CREATE TABLE w (id INTEGER, k INTEGER, x REAL)"
    await execute(f"{create} WITH (distribution = 'id')", [])
    reference.execute(create)
    await execute(f"INSERT INTO w (id, k, x) {select}", [])
    reference.execute(f"INSERT INTO w (id, k, x) {select}")
    got = await execute("SELECT id, k, x FROM w", [])
    want = reference.execute("SELECT id, k, x FROM w").fetchall()
    assert got, "the statement copied nothing: pick data where it matters"
    assert differences(got, want, ordered=False) == ""
    reference.close()
