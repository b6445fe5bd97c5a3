"""The pieces under the planner: sketches, moments, SQLite's order, placement of values,
shard schemas and deterministic statements."""

from __future__ import annotations

import ast
import random
import sqlite3
import statistics
from collections.abc import Sequence
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import shardwise.sql
from shardwise.model.config import Column, IndexDef, Keyspace, Scheme, Table
from shardwise.model.schemes import shard_map
from shardwise.sql import Catalog, StatementContext, plan, schema_changes
from shardwise.sql.distribution import Router, stored_key
from shardwise.sql.hll import Sketch, estimate_distinct
from shardwise.sql.moments import Moments
from shardwise.sql.ordering import SortKey, row_comparator
from shardwise.sql.plans import WritePlan
from shardwise.sql.values import SqlValue

# --- HyperLogLog -------------------------------------------------------------------------


def test_hll_is_accurate_and_merges_to_the_sketch_of_the_union(rng: random.Random) -> None:
    values: list[SqlValue] = [rng.getrandbits(48) for _ in range(20_000)]
    exact = len(set(values))
    whole = Sketch()
    parts = [Sketch() for _ in range(8)]
    for value in values:
        whole.add(value)
        parts[rng.randrange(8)].add(value)
    merged = Sketch()
    for part in parts:
        merged.merge(Sketch.decode(part.encode()))
    assert merged.registers == whole.registers
    assert abs(whole.estimate() - exact) / exact < 0.05


def test_hll_small_counts_and_sqlite_equality() -> None:
    assert estimate_distinct([]) == 0
    assert estimate_distinct([None, None]) == 0
    # 1 and 1.0 are one value to SQLite's DISTINCT; 1 and '1' are two.
    assert estimate_distinct([1, 1.0, 1]) == 1
    assert estimate_distinct([1, "1", b"1"]) == 3
    sparse = Sketch()
    sparse.add("x")
    assert len(sparse.encode()) < 16  # a near-empty sketch travels sparse
    assert Sketch.decode(sparse.encode()).registers == sparse.registers


# --- moments -------------------------------------------------------------------------------


def test_moments_merge_exactly(rng: random.Random) -> None:
    values = [rng.uniform(-1e6, 1e6) for _ in range(1000)]
    chunks: list[Moments] = [Moments() for _ in range(7)]
    for value in values:
        i = rng.randrange(7)
        chunks[i] = chunks[i].add(value)
    merged = Moments()
    for chunk in chunks:
        merged = merged.merge(Moments.decode(chunk.encode()))
    assert merged.count == len(values)
    samp = merged.statistic("var_samp")
    pop = merged.statistic("stddev_pop")
    assert samp is not None and pop is not None
    assert samp == pytest.approx(statistics.variance(values), rel=1e-9)
    assert pop == pytest.approx(statistics.pstdev(values), rel=1e-9)


def test_moments_follow_postgresql_for_few_values() -> None:
    assert Moments().statistic("var_pop") is None
    one = Moments().add(3.0)
    assert one.statistic("var_samp") is None
    assert one.statistic("var_pop") == 0.0


# --- SQLite's order ----------------------------------------------------------------------

values_strategy = st.one_of(
    st.none(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(alphabet=st.characters(blacklist_categories=["Cs"]), max_size=4),
    st.binary(max_size=4),
)


@given(
    rows=st.lists(st.tuples(values_strategy, values_strategy), max_size=30),
    descending=st.booleans(),
    nulls_first=st.booleans(),
)
def test_python_order_is_sqlite_order(
    rows: list[tuple[SqlValue, SqlValue]], descending: bool, nulls_first: bool
) -> None:
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE v (a, b, i)")
    conn.executemany("INSERT INTO v VALUES (?, ?, ?)", [(a, b, i) for i, (a, b) in enumerate(rows)])
    direction = "DESC" if descending else "ASC"
    nulls = "FIRST" if nulls_first else "LAST"
    query = f"SELECT a, b, i FROM v ORDER BY a {direction} NULLS {nulls}, b, i"
    want = [tuple(r) for r in conn.execute(query)]
    keys = [SortKey(0, descending, nulls_first), SortKey(1), SortKey(2)]
    got = sorted(want[::-1], key=row_comparator(keys))
    assert [r[2] for r in got] == [r[2] for r in want]


# --- placement of distribution values ------------------------------------------------------


def test_distribution_values_encode_as_sqlite_stores_them() -> None:
    keyspace = Keyspace("default", Scheme(shards=64))
    router = Router(keyspace)
    kv = shard_map(keyspace)
    # An INTEGER column stores 42, 42.0 and '42' as 42; a TEXT column stores 42 as '42'.
    keys = [stored_key(v, "INTEGER") for v in (42, 42.0, "42")] + [stored_key(42, "TEXT")]
    assert keys == [42, 42, 42, "42"]
    shards = {router.shard_of(k) for k in keys if k is not None}
    # ...and all land where the KV layer puts the key "42": tables are co-located.
    assert shards == {kv.index("42")}
    assert stored_key(1.5, "INTEGER") is None
    assert stored_key(None, "TEXT") is None
    assert stored_key(b"\x00", "BLOB") == b"\x00"


def test_range_keyspaces_route_by_key_order() -> None:
    router = Router(Keyspace("r", Scheme(kind="range", shards=3, split_points=("g", "p"))))
    assert [router.shard_of(k) for k in ("a", "g", "h", "zz")] == [0, 1, 1, 2]
    assert router.shards_between("b", "h") == frozenset({0, 1})
    assert router.shards_between(None, None) == frozenset({0, 1, 2})


# --- shard schema --------------------------------------------------------------------------


def test_schema_changes_take_a_shard_from_one_catalog_to_the_next() -> None:
    t1 = Table("t", "default", "id", (Column("id", "INTEGER NOT NULL"), Column("a", "TEXT")))
    t2 = Table(
        "t",
        "default",
        "id",
        (*t1.columns, Column("b", "INTEGER DEFAULT 0")),
        (IndexDef("t_a", ("a",)),),
    )
    other = Table("o", "elsewhere", "k", (Column("k", "TEXT"),))
    conn = sqlite3.connect(":memory:")
    for statement in schema_changes({}, {"t": t1, "o": other}, "default"):
        conn.execute(statement)
    for statement in schema_changes({"t": t1}, {"t": t2}, "default"):
        conn.execute(statement)
    names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
    assert names == {"sql_t", "sql_t__t_a"}
    conn.execute("INSERT INTO sql_t (id) VALUES (1)")
    assert conn.execute("SELECT b FROM sql_t").fetchall() == [(0,)]
    assert schema_changes({"t": t2}, {}, "default") == ['DROP TABLE IF EXISTS "sql_t"']


def test_a_table_dropped_and_created_again_is_a_new_table_to_a_shard_that_saw_neither() -> None:
    # A shard in transit while DROP TABLE t and CREATE TABLE t (alike) ran meets both at
    # once: the old rows must not come back under the new table.
    old = Table("t", "default", "id", (Column("id", "INTEGER"),), created_at=3)
    again = Table("t", "default", "id", (Column("id", "INTEGER"),), created_at=7)
    conn = sqlite3.connect(":memory:")
    for statement in schema_changes({}, {"t": old}, "default"):
        conn.execute(statement)
    conn.execute("INSERT INTO sql_t VALUES (1)")
    for statement in schema_changes({"t": old}, {"t": again}, "default"):
        conn.execute(statement)
    assert conn.execute("SELECT * FROM sql_t").fetchall() == []


# --- determinism ---------------------------------------------------------------------------


def test_statements_are_fixed_at_the_coordinator() -> None:
    keyspace = Keyspace("default", Scheme(shards=4))
    table = Table("t", "default", "id", (Column("id", "INTEGER"), Column("v", "")))
    catalog = Catalog({"t": table}, {"default": keyspace})
    sql = "INSERT INTO t VALUES (1, random()), (2, gen_random_uuid()), (3, date('now'))"
    first = plan(sql, None, catalog, StatementContext.fixed(seed=1)).plan
    again = plan(sql, None, catalog, StatementContext.fixed(seed=1)).plan
    other = plan(sql, None, catalog, StatementContext.fixed(seed=2)).plan
    assert isinstance(first, WritePlan) and isinstance(other, WritePlan)
    assert first == again  # the same context makes the same values
    values = [p for b in first.batches for s in b.statements for p in s.params.values()]
    assert "2000-01-01 00:00:00.000" in values
    assert first != other
    for batch in first.batches:
        for statement in batch.statements:
            assert "random" not in statement.sql.lower()
            assert "now" not in statement.sql.lower()


# --- purity ------------------------------------------------------------------------------

PURE_MODULES = frozenset(
    {
        "aggregates", "bind", "broadcast", "catalog", "colocated", "colnames", "ddl",
        "decisions", "determinism", "dialect", "distribution", "identifiers", "index_plan",
        "index_tables", "plan_cache",
        "join_plan",
        "param_insert", "shipped",
        "plan_text", "hll", "merge", "moments", "numeric", "ordering", "params", "parse",
        "plans", "planner", "pruning", "repartition", "select_bind", "select_plan",
        "shard_schema", "statement_cache", "stats", "values", "writes", "write_rules",
    }
)  # fmt: skip
IO_MODULES = {"sqlite3", "asyncio", "os", "socket", "time", "threading", "subprocess"}


def test_the_planner_does_no_io() -> None:
    """The planner's modules import nothing that does I/O or reads a clock (the
    coordinator, the engine and LocalShards are the edge)."""
    root = Path(shardwise.sql.__file__).parent
    for name in sorted(PURE_MODULES):
        tree = ast.parse((root / f"{name}.py").read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                found = {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                found = {node.module.split(".")[0]}
                if node.module.startswith("shardwise.sql."):
                    module = node.module.rsplit(".", 1)[1]
                    assert module in PURE_MODULES, f"{name} imports {node.module}"
            else:
                continue
            assert not found & IO_MODULES, f"{name} imports {found & IO_MODULES}"


async def test_compare_queries_names_the_query_and_seed_of_a_difference() -> None:
    from shardwise.sql.difftest import (  # noqa: PLC0415
        QueryGenerator,
        Row,
        compare_queries,
        make_rows,
        reference_database,
    )

    rng = random.Random(5)
    data = make_rows(rng)
    reference = reference_database(data)

    async def wrong(sql: str, params: Sequence[SqlValue]) -> list[Row]:
        return [("not", "the", "answer")]

    with pytest.raises(AssertionError, match=r"query #0 \(seed=5\).*differs"):
        await compare_queries(wrong, reference, QueryGenerator(rng, data), 3, seed=5)
    reference.close()
