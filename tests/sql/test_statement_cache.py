"""Parsed statements kept by their text (``sql/statement_cache.py``): a statement run
again is not parsed again, answers stay those of one SQLite, and what is kept is never
changed by planning or made stale by DDL."""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence

import pytest
from sqlglot import exp

from shardwise.errors import SqlCatalogError, SqlParameterError, SqlSyntaxError
from shardwise.model.config import Keyspace, Scheme
from shardwise.sql import Coordinator, LocalShards, parse, planner, statement_cache
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
from shardwise.sql.params import Bound, Params, bind
from shardwise.sql.plan_cache import PLANS
from shardwise.sql.values import SqlValue

KEYSPACE = Keyspace("default", Scheme(kind="hash", shards=8))
RANGED = Keyspace(RANGE_KEYSPACE, Scheme(kind="range", shards=4, split_points=RANGE_SPLITS))
QUERIES = 300


@pytest.fixture
def local() -> Iterator[LocalShards]:
    shards = LocalShards([KEYSPACE, RANGED])
    yield shards
    shards.close()


@pytest.fixture
def parses(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The texts the cache had to parse, from an empty cache."""
    statement_cache._cached.cache_clear()
    statement_cache._shapes.clear()
    seen: list[str] = []
    real = parse.parse_statement

    def counting(sql: str) -> parse.ParsedStatement:
        seen.append(sql)
        return real(sql)

    monkeypatch.setattr(statement_cache, "parse_statement", counting)
    return seen


async def test_a_statement_run_again_with_new_parameters_is_not_parsed_again(
    local: LocalShards, parses: list[str]
) -> None:
    sql = Coordinator(local, local)
    plan_hits = PLANS.hits
    await sql.execute("CREATE TABLE t (id INTEGER, v TEXT) WITH (distribution = 'id')")
    insert = "INSERT INTO t VALUES (?, ?)"
    for n in range(20):
        await sql.execute(insert, [n, f"v{n}"])
    point = "SELECT v FROM t WHERE id = ?"
    for n in range(20):
        assert (await sql.execute(point, [n])).rows == [(f"v{n}",)]
    assert parses.count(insert) == 1 and parses.count(point) == 1
    hits, _ = statement_cache.cache_counts()
    assert hits + PLANS.hits - plan_hits >= 38  # (a kept plan does not look for the tree)


async def test_a_kept_statement_is_planned_against_the_catalog_of_its_run(
    local: LocalShards, parses: list[str]
) -> None:
    """DDL between two runs of one text: the second sees the new table, or fails."""
    sql = Coordinator(local, local)
    await sql.execute("CREATE TABLE t (id INTEGER, v TEXT) WITH (distribution = 'id')")
    await sql.execute("INSERT INTO t VALUES (1, 'a'), (2, 'b')")
    star = "SELECT * FROM t ORDER BY id"
    assert (await sql.execute(star)).rows == [(1, "a"), (2, "b")]
    await sql.execute("ALTER TABLE t ADD COLUMN w INTEGER DEFAULT 7")
    assert (await sql.execute(star)).rows == [(1, "a", 7), (2, "b", 7)]
    await sql.execute("DROP TABLE t")
    with pytest.raises(SqlCatalogError):
        await sql.execute(star)
    await sql.execute("CREATE TABLE t (k TEXT, id INTEGER) WITH (distribution = 'k')")
    await sql.execute("INSERT INTO t VALUES ('x', 3)")
    assert (await sql.execute(star)).rows == [("x", 3)]
    assert parses.count(star) == 1


async def test_bad_statements_fail_every_time_and_long_ones_are_not_kept(
    local: LocalShards, parses: list[str]
) -> None:
    sql = Coordinator(local, local)
    for _ in range(3):
        with pytest.raises(SqlSyntaxError):
            await sql.execute("SELEC 1")
    assert parses.count("SELEC 1") == 3
    long = "SELECT '" + "x" * statement_cache.MAX_CACHED_CHARS + "'"
    assert len(long) > statement_cache.MAX_CACHED_CHARS
    for _ in range(2):
        await sql.execute(long)
    assert parses.count(long) == 2
    assert statement_cache._cached.cache_info().maxsize == statement_cache.MAX_CACHED_STATEMENTS


async def test_generated_queries_run_twice_answer_as_single_sqlite_and_leave_the_kept_tree_alone(
    local: LocalShards, rng: random.Random, seed: int, parses: list[str]
) -> None:
    """Every generated query runs twice (the second from the cache); both answers must
    be the reference's, and after both the kept tree must equal a fresh parse: planning
    works on a copy."""
    coordinator = Coordinator(local, local)
    data = make_rows(rng)
    await load(coordinator, data, rng, create_statements())
    reference = reference_database(data)

    async def twice(sql: str, params: Sequence[SqlValue]) -> list[Row]:
        first = (await coordinator.execute(sql, params)).rows
        second = (await coordinator.execute(sql, params)).rows
        assert sorted(map(repr, first)) == sorted(map(repr, second)), (seed, sql, params)
        kept = statement_cache.parse(sql).statement
        fresh = statement_cache._parse(sql).parsed
        assert fresh is not None and kept == fresh.statement, (seed, sql)
        return second

    try:
        kinds = await compare_queries(twice, reference, QueryGenerator(rng, data), QUERIES, seed)
    finally:
        reference.close()
    assert kinds["ordered"] + kinds["unordered"] > QUERIES // 2, kinds


async def test_control_a_planner_that_binds_into_the_kept_tree_is_caught(
    local: LocalShards,
    rng: random.Random,
    seed: int,
    parses: list[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The planted bug: parameters bound into the kept tree itself (no copy)."""

    def bind_in_place(statement: exp.Expr, params: Params | None) -> Bound:
        monkeypatch.setattr(statement, "copy", lambda: statement, raising=False)
        return bind(statement, params)

    monkeypatch.setattr(planner, "bind", bind_in_place)
    with pytest.raises(AssertionError) as caught:
        await (
            test_generated_queries_run_twice_answer_as_single_sqlite_and_leave_the_kept_tree_alone(
                local, rng, seed, parses
            )
        )
    print(str(caught.value).splitlines()[0][:200])


async def test_a_long_insert_of_parameters_is_kept_by_its_shape_alone(
    local: LocalShards, parses: list[str]
) -> None:
    sql = Coordinator(local, local)
    await sql.execute("CREATE TABLE t (id INTEGER, v TEXT) WITH (distribution = 'id')")
    insert = "INSERT INTO t VALUES " + ", ".join(["(?, ?)"] * 1000)
    assert statement_cache.MAX_CACHED_CHARS < len(insert) <= statement_cache.MAX_SHAPE_CHARS
    for batch in range(3):
        params = [v for n in range(1000) for v in (batch * 1000 + n, f"v{n}")]
        assert (await sql.execute(insert, params)).rowcount == 1000
    assert parses.count(insert) == 1
    known = statement_cache.kept(insert)
    assert known.parsed is None and known.insert is not None and known.insert.rows == 1000
    assert (await sql.execute("SELECT count(*) FROM t")).rows == [(3000,)]
    # Its parse is still at hand for what the bulk path leaves to the planner (an error):
    with pytest.raises(SqlParameterError):
        await sql.execute(insert, [1, 2])
    assert parses.count(insert) == 2
    # Only shapes of INSERTs are kept, and only so many.
    long_select = "SELECT " + ", ".join(["1"] * 2000)
    for _ in range(2):
        await sql.execute(long_select)
    assert parses.count(long_select) == 2
    for width in range(statement_cache.MAX_CACHED_SHAPES + 5):
        many = "INSERT INTO t VALUES " + ", ".join(["(?, ?)"] * (1000 + width))
        await sql.execute(many, [v for n in range(1000 + width) for v in (-n - 1, "x")])
    assert len(statement_cache._shapes) == statement_cache.MAX_CACHED_SHAPES
    assert insert not in statement_cache._shapes
