"""Plans kept by their text (``sql/plan_cache.py``), checked against the planner itself.

The check: a statement is planned through a cache with one set of values, then with many
others, hostile ones among them (64-bit edges, -0.0, NaN, integer-looking text, blobs,
NULL, values of the wrong class for a LIMIT); every plan the cache gives must be the
planner's own for those values, and every error the planner raises must be raised again.
A control run plants the bug the design rules out (a plan kept whatever its values
decide) and the same check must catch it.
"""

from __future__ import annotations

import functools
import math
import random
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import pytest

from shardwise.errors import ShardwiseError, SqlParameterError
from shardwise.model.config import Configuration, Keyspace, Scheme
from shardwise.sql import Catalog, Coordinator, LocalShards, decisions, plan_cache, planner
from shardwise.sql.catalog import catalog_of
from shardwise.sql.determinism import StatementContext
from shardwise.sql.difftest import (
    RANGE_KEYSPACE,
    RANGE_SPLITS,
    QueryGenerator,
    create_statements,
    make_rows,
)
from shardwise.sql.params import Params
from shardwise.sql.plans import ReadPlan
from shardwise.sql.values import INT64_MAX, INT64_MIN, SqlValue

KEYSPACE = Keyspace("default", Scheme(kind="hash", shards=8))
RANGED = Keyspace(RANGE_KEYSPACE, Scheme(kind="range", shards=4, split_points=RANGE_SPLITS))
CONTEXT = StatementContext.fixed(seed=3)
INDEXES = (
    "CREATE INDEX t_g ON t (g) WITH (scope = 'global')",
    "CREATE INDEX t_h ON t (h) INCLUDE (x) WITH (scope = 'global')",
    "CREATE INDEX u_big ON u (big) WITH (scope = 'global')",
    "CREATE INDEX t_x ON t (x)",
)
TEMPLATES = (
    "SELECT * FROM t WHERE id = ?",
    "SELECT x, s FROM t WHERE id = $1 AND x > $2",
    "SELECT * FROM t WHERE id IN (?, ?, ?)",
    "SELECT * FROM t WHERE id = ? OR id = ?",
    "SELECT * FROM t WHERE (id) = (?) AND g = ?",
    "SELECT * FROM u WHERE id = ?",
    "SELECT * FROM r WHERE id = ?",
    "SELECT * FROM r WHERE id BETWEEN ? AND ?",
    "SELECT * FROM r WHERE id >= ? ORDER BY id LIMIT ?",
    "SELECT id FROM t ORDER BY x DESC LIMIT ? OFFSET ?",
    "SELECT g, count(*) FROM t WHERE id IN (?, ?) GROUP BY g HAVING count(*) > ?",
    "SELECT id, g FROM t WHERE g = ?",
    "SELECT id, x FROM t WHERE h = ?",
    "SELECT x FROM t WHERE h IN (?, ?)",
    "SELECT * FROM u WHERE big = ?",
    "SELECT * FROM t WHERE x = ?",
    "SELECT t.id, u.s FROM t JOIN u ON t.id = u.big WHERE t.id = ?",
    "SELECT * FROM t WHERE id = :k AND s = :s",
    "SELECT ? + 1, ?",
    "UPDATE t SET x = ? WHERE id = ?",
    "UPDATE t SET s = ? WHERE g = ?",
    "DELETE FROM t WHERE id IN (?, ?)",
    "DELETE FROM r WHERE id < ?",
    "SELECT id FROM t WHERE id = ? AND y < now()",
)
HOSTILE: tuple[SqlValue, ...] = (
    None, 0, 1, -1, 7, 42, INT64_MAX, INT64_MIN, INT64_MAX - 1, 1 << 53, (1 << 53) + 1,
    0.0, -0.0, 2.5, 1e308, -1e308, math.inf, -math.inf, math.nan,
    "", "7", "007", " 7", "k1", "k4", "k9", "a", "é", "x'00'",
    b"", b"\x00", b"7", True, False,
)  # fmt: skip


@pytest.fixture
def local() -> Iterator[LocalShards]:
    shards = LocalShards([KEYSPACE, RANGED])
    yield shards
    shards.close()


async def _catalog(local: LocalShards) -> Catalog:
    coordinator = Coordinator(local, local)
    for ddl in (*create_statements(), *INDEXES):
        await coordinator.execute(ddl)
    return await local.catalog()


def _outcome(make: Callable[[], planner.Planned]) -> str:
    """A planning's result as text: the plan (repr: a NaN equals itself there), or the
    error's class and message."""
    try:
        return repr(make())
    except ShardwiseError as exc:
        return f"{type(exc).__name__}: {exc}"


def _values(rng: random.Random, count: int, named: tuple[str, ...] = ()) -> Params:
    drawn = [
        rng.choice(HOSTILE) if rng.random() < 0.6 else rng.randrange(-50, 50) for _ in range(count)
    ]
    return dict(zip(named, drawn, strict=True)) if named else drawn


def _differences(
    cache: plan_cache.PlanCache, catalog: Catalog, sql: str, runs: list[Params]
) -> list[str]:
    """Each run of ``sql`` whose kept plan (or error) is not the planner's own."""
    found = []
    for params in runs:

        def fresh(params: Params = params) -> planner.Planned:
            return planner._plan(sql, params, catalog, CONTEXT)

        want = _outcome(fresh)
        got = _outcome(functools.partial(cache.plan, sql, params, catalog, fresh))
        if got != want:
            found.append(f"{sql} with {params!r}:\n  kept: {got}\n  planner: {want}")
    return found


def _runs(rng: random.Random, sql: str, count: int) -> list[Params]:
    if ":k" in sql:
        return [_values(rng, 2, ("k", "s")) for _ in range(count)]
    marks = sql.count("?") + sum(f"${n}" in sql for n in range(1, 10))
    return [_values(rng, marks) for _ in range(count)]


async def test_a_kept_plan_is_the_planners_plan_for_every_value(
    local: LocalShards, seed: int
) -> None:
    rng = random.Random(seed)
    catalog = await _catalog(local)
    cache = plan_cache.PlanCache()
    problems: list[str] = []
    for sql in TEMPLATES:
        problems += _differences(cache, catalog, sql, _runs(rng, sql, 150))
    # The differential generator's statements, run again with other values.
    generator = QueryGenerator(rng, make_rows(rng))
    for _ in range(300):
        query = generator.next()
        if query.params and not query.past_limit:
            problems += _differences(cache, catalog, query.sql, _runs(rng, query.sql, 8))
    assert not problems, f"seed {seed}:\n" + "\n".join(problems[:5])
    assert cache.hits > 2000, cache.hits  # (the check is about kept plans: enough of them)


async def test_the_check_catches_a_plan_kept_whatever_its_values_decide(
    local: LocalShards, monkeypatch: pytest.MonkeyPatch, rng: random.Random
) -> None:
    """The control: decisions not noted, so one plan per text serves every value."""
    catalog = await _catalog(local)
    monkeypatch.setattr(decisions, "note", lambda *_: None)
    monkeypatch.setattr("shardwise.sql.params.note", lambda *_: None)
    cache = plan_cache.PlanCache()
    sql = "SELECT * FROM t WHERE id = ?"
    assert _differences(cache, catalog, sql, _runs(rng, sql, 50))


async def test_a_hit_binds_its_values_as_the_planner_does(local: LocalShards) -> None:
    catalog = await _catalog(local)
    cache = plan_cache.PlanCache()
    sql = "SELECT * FROM t WHERE id = ?"
    cache.plan(sql, [1], catalog, lambda: planner._plan(sql, [1], catalog, CONTEXT))
    for bad in ([], [1, 2], {"a": 1}, [1 << 64], [object()], None):
        with pytest.raises(SqlParameterError):
            cache.plan(sql, bad, catalog, lambda: pytest.fail("planned again"))
    assert cache.hits == 0


async def test_the_statements_instant_is_never_kept(local: LocalShards) -> None:
    """``now()`` is fixed per execution, as a parameter of the plan: never reused."""
    coordinator = Coordinator(local, local, wall_clock=lambda: moment[0])
    moment = [datetime(2030, 1, 1, tzinfo=UTC)]
    answers = []
    for _ in range(3):
        answers.append((await coordinator.execute("SELECT now(), ?", [1])).rows)
        moment[0] += timedelta(seconds=1)
    assert [a[0][0] for a in answers] == [
        "2030-01-01 00:00:00",
        "2030-01-01 00:00:01",
        "2030-01-01 00:00:02",
    ]


async def test_ddl_makes_a_new_plan(local: LocalShards) -> None:
    coordinator = Coordinator(local, local)
    await coordinator.execute(
        "CREATE TABLE k (id INTEGER PRIMARY KEY, a TEXT) WITH (distribution = 'id')"
    )
    await coordinator.execute("INSERT INTO k VALUES (1, 'one'), (2, 'two')")
    point = "SELECT * FROM k WHERE id = ?"
    assert (await coordinator.execute(point, [1])).rows == [(1, "one")]
    await coordinator.execute("ALTER TABLE k ADD COLUMN b INTEGER")
    result = await coordinator.execute(point, [2])
    assert result.columns == ("id", "a", "b") and result.rows == [(2, "two", None)]
    await coordinator.execute("CREATE INDEX k_a ON k (a) WITH (scope = 'global')")
    lookup = "SELECT id FROM k WHERE a = ?"
    assert (await coordinator.execute(lookup, ["two"])).rows == [(2,)]
    explained = await coordinator.execute(f"EXPLAIN {lookup}", ["two"])
    assert any("k_a" in str(line[0]) for line in explained.rows)


async def test_the_cache_is_bounded(local: LocalShards) -> None:
    catalog = await _catalog(local)
    cache = plan_cache.PlanCache(max_texts=3, max_plans=5)
    for n in range(40):
        sql = f"SELECT x FROM t WHERE id = ? AND g = {n % 7}"
        cache.plan(sql, [n], catalog, functools.partial(planner._plan, sql, [n], catalog, CONTEXT))
    assert len(cache._texts) <= 3 and len(cache._plans) <= 5


async def test_a_point_query_run_again_is_not_planned_again(local: LocalShards) -> None:
    catalog = await _catalog(local)
    cache = plan_cache.PlanCache()
    sql = "SELECT x FROM t WHERE id = ?"
    planned = 0

    def fresh(n: int) -> planner.Planned:
        nonlocal planned
        planned += 1
        return planner._plan(sql, [n], catalog, CONTEXT)

    for n in range(500):
        found = cache.plan(sql, [n], catalog, functools.partial(fresh, n)).plan
        assert isinstance(found, ReadPlan) and found.fragment is not None
        assert list(found.fragment.params.values()) == [n]
    assert planned <= KEYSPACE.scheme.shards  # (one plan per shard the values reach)


def test_one_configuration_one_catalog() -> None:
    """What keeps plans in a cluster client: the same catalog object per configuration."""
    first = Configuration(1, {}, {"default": KEYSPACE}, {}, {})
    again = Configuration(1, {}, {"default": KEYSPACE}, {}, {})
    assert catalog_of(first) is catalog_of(first)
    assert catalog_of(again) is not catalog_of(first)


async def test_kept_plans_hold_no_values_and_clients_catalogs_keep_their_own(
    local: LocalShards,
) -> None:
    catalog = await _catalog(local)
    twin = Catalog(catalog.tables, catalog.keyspaces)  # (another client's, the same tables)
    cache = plan_cache.PlanCache()
    sql = "UPDATE t SET s = ? WHERE id = ?"
    blob = "x" * (1 << 20)
    for n in range(200):
        for current in (catalog, twin):
            fresh = functools.partial(planner._plan, sql, [blob, n], current, CONTEXT)
            cache.plan(sql, [blob, n], current, fresh)
    assert cache.hits >= 400 - 2 * 2 * KEYSPACE.scheme.shards
    assert all(blob not in repr(kept.planned) for kept in cache._plans.values())
