"""Repartition joins: bounded steps, skew, NULL keys, rows moved, and the function that
places a key in its step."""

from __future__ import annotations

import random
import sqlite3
from collections.abc import Iterator, Sequence

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shardwise.errors import SqlLimitError
from shardwise.model.config import Keyspace, Scheme
from shardwise.sql import Coordinator, LocalShards, broadcast, planner, repartition
from shardwise.sql.difftest import Row, differences
from shardwise.sql.functions import partition, register
from shardwise.sql.merge import MergeLimits
from shardwise.sql.plan_cache import PLANS
from shardwise.sql.values import INT64_MAX, INT64_MIN

SCHEMA = (
    "CREATE TABLE s (id INTEGER, store INTEGER, amount INTEGER)",
    "CREATE TABLE st (code TEXT, id INTEGER, city TEXT)",
)
PLACEMENT = (" WITH (distribution = 'id')", " WITH (distribution = 'code')")
JOIN = (
    "SELECT st.city, count(*), sum(s.amount), count(st.code) FROM s LEFT JOIN st"
    " ON st.id = s.store GROUP BY st.city"
)


@pytest.fixture
def local(monkeypatch: pytest.MonkeyPatch) -> Iterator[LocalShards]:
    """Shards where joins of ``s`` and ``st`` are repartition joins of 50-row steps."""
    monkeypatch.setattr(planner, "plan_broadcast", lambda *args, **kwargs: None)
    monkeypatch.setattr(repartition, "REPARTITION_STEP_ROWS", 50)
    shards = LocalShards([Keyspace("default", Scheme("hash", 8))])
    yield shards
    shards.close()


async def _load(
    local: LocalShards, sales: Sequence[Row], stores: Sequence[Row]
) -> tuple[Coordinator, sqlite3.Connection]:
    sql = Coordinator(local, local)
    reference = sqlite3.connect(":memory:", isolation_level=None)
    register(reference)
    for ddl, placement in zip(SCHEMA, PLACEMENT, strict=True):
        await sql.execute(ddl + placement)
        reference.execute(ddl)
    for table, rows in (("s", sales), ("st", stores)):
        for row in rows:
            await sql.execute(f"INSERT INTO {table} VALUES (?, ?, ?)", list(row))
            reference.execute(f"INSERT INTO {table} VALUES (?, ?, ?)", row)
    return sql, reference


async def test_null_keys_are_read_only_where_a_left_join_keeps_them_and_group_as_one(
    local: LocalShards, rng: random.Random
) -> None:
    sales = [(i, None if i % 3 else rng.randrange(30), i) for i in range(240)]
    stores = [(f"c{i}", None if i % 7 == 0 else i % 35, f"city{i % 4}") for i in range(60)]
    sql, reference = await _load(local, sales, stores)
    inner = JOIN.replace("LEFT JOIN", "JOIN")
    got = (await sql.execute(inner)).rows
    assert differences(got, reference.execute(inner).fetchall(), ordered=False) == ""
    analysis = await _lines(sql, f"EXPLAIN ANALYZE {inner}")
    assert analysis[0] == "Distributed repartition read of s, st"
    # A NULL key matches nothing: an inner join reads none of the 160 + 9 such rows.
    assert any(": 131 rows of the scans read" in line for line in analysis), analysis
    # The side a LEFT JOIN keeps reads them all, in one step: 160 of them do not fit a
    # step of 50, and the error says what does not.
    with pytest.raises(SqlLimitError, match=r"one value of s.store = st.id .*NULL counts as one"):
        await sql.execute(JOIN)
    grouped = (
        "SELECT s.store, count(*), count(st.code) FROM s LEFT JOIN st ON st.id = s.store"
        " WHERE s.id < 60 GROUP BY s.store"
    )
    got = (await sql.execute(grouped)).rows
    assert differences(got, reference.execute(grouped).fetchall(), ordered=False) == ""
    assert sum(1 for row in got if row[0] is None) == 1  # (one NULL group, not one per step)


async def test_one_key_with_more_rows_than_a_step_is_a_clear_limit_error(
    local: LocalShards, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(repartition, "MAX_REPARTITION_STEPS", 64)
    sales: list[Row] = [(i, 7, i) for i in range(60)]  # one store id: no step holds them
    sales += [(i, i % 10, i) for i in range(100, 120)]
    stores = [(f"c{i}", i, "x") for i in range(10)]
    sql, _ = await _load(local, sales, stores)
    with pytest.raises(SqlLimitError, match=r"even in 64 step\(s\): one value of s.store = st.id"):
        await sql.execute(JOIN)
    # The rest of the table still joins (a filter leaves the heavy key out).
    rows = (await sql.execute(f"{JOIN.replace(' GROUP BY', ' WHERE s.store <> 7 GROUP BY')}")).rows
    assert rows == [("x", 18, sum(range(100, 120)) - 107 - 117, 18)]


async def test_analyze_plans_the_steps_and_a_small_join_stays_a_coordinator_join(
    local: LocalShards, monkeypatch: pytest.MonkeyPatch
) -> None:
    sales = [(i, i % 40, i) for i in range(150)]
    stores = [(f"c{i}", i, "x") for i in range(40)]
    sql, reference = await _load(local, sales, stores)
    await sql.execute("ANALYZE")
    plan = await _lines(sql, f"EXPLAIN {JOIN}")
    assert plan[1].startswith("  on s.store = st.id, in 6 step(s) (more if one holds over 50")
    got = (await sql.execute(JOIN)).rows
    assert differences(got, reference.execute(JOIN).fetchall(), ordered=False) == ""
    analysis = await _lines(sql, f"EXPLAIN ANALYZE {JOIN}")
    assert not any("too few" in line for line in analysis)
    monkeypatch.setattr(repartition, "REPARTITION_STEP_ROWS", 1_000)
    PLANS.clear()  # (the kept plan was made under the old constant)
    plan = await _lines(sql, f"EXPLAIN {JOIN}")
    assert plan[0] == "Distributed coordinator-join read of s, st"


async def _lines(sql: Coordinator, statement: str) -> list[str]:
    return [str(r[0]) for r in (await sql.execute(statement)).rows]


@given(
    st.one_of(
        st.none(),
        st.integers(INT64_MIN, INT64_MAX),
        st.text(),
        st.binary(),
        st.floats(allow_nan=False),
    ),
    st.integers(1, 1000),
)
def test_a_key_has_one_step_and_equal_keys_share_it(value: object, parts: int) -> None:
    step = partition(value, parts)  # type: ignore[arg-type]
    assert step is not None and 0 <= step < parts
    assert partition(value, parts) == step  # type: ignore[arg-type]
    if isinstance(value, int) and abs(value) < 2**53:
        assert partition(float(value), parts) == partition(value, parts)


def test_the_step_function_in_sqlite() -> None:
    conn = sqlite3.connect(":memory:")
    register(conn)
    one = conn.execute("SELECT shardwise_partition(5, 8), shardwise_partition(5.0, 8)").fetchone()
    assert one[0] == one[1]
    for bad in ("0", "-1", "'8'", "NULL", "2.5"):
        assert conn.execute(f"SELECT shardwise_partition(5, {bad})").fetchone() == (None,)
    assert conn.execute("SELECT shardwise_partition(NULL, 16)").fetchone() == (0,)


async def test_a_broadcast_past_its_bounds_becomes_the_repartition_join(
    monkeypatch: pytest.MonkeyPatch, rng: random.Random
) -> None:
    monkeypatch.setattr(repartition, "REPARTITION_STEP_ROWS", 50)
    monkeypatch.setattr(broadcast, "BROADCAST_MAX_ROWS", 20)
    local = LocalShards([Keyspace("default", Scheme("hash", 8))])
    try:
        sales = [(i, rng.randrange(30), i) for i in range(150)]
        stores = [(f"c{i}", i % 35, f"city{i % 4}") for i in range(60)]
        sql, reference = await _load(local, sales, stores)
        analysis = await _lines(sql, f"EXPLAIN ANALYZE {JOIN}")
        assert analysis[0] == "Distributed broadcast read of s, st"
        assert any(
            "over 20 rows or 4,194,304 bytes to ship: the repartition join" in line
            for line in analysis
        ), analysis
        assert any(
            line.startswith("  the rows to ship are over the broadcast bounds")
            and line.endswith("the repartition join instead")
            for line in analysis
        )
        got = (await sql.execute(JOIN)).rows
        assert differences(got, reference.execute(JOIN).fetchall(), ordered=False) == ""
    finally:
        local.close()


async def test_an_answer_past_the_limit_is_that_error_not_more_steps(local: LocalShards) -> None:
    sql = Coordinator(local, local, limits=MergeLimits(max_rows=300))
    for ddl, placement in zip(SCHEMA, PLACEMENT, strict=True):
        await sql.execute(ddl + placement)
    for i in range(20):  # 20 x 20 rows of one key: 40 rows read, 400 rows of answer
        await sql.execute("INSERT INTO s VALUES (?, 7, 1)", [i])
        await sql.execute("INSERT INTO st VALUES (?, 7, 'x')", [f"c{i}"])
    analysis = await _lines(sql, "EXPLAIN SELECT s.id, st.code FROM s JOIN st ON st.id = s.store")
    assert analysis[0] == "Distributed repartition read of s, st"
    with pytest.raises(SqlLimitError, match=r"the statement's answer hold too many rows"):
        await sql.execute("SELECT s.id, st.code FROM s JOIN st ON st.id = s.store")


@pytest.mark.parametrize("name", ['x"y', "p`q", "a b"])
async def test_column_names_that_need_quoting_join_at_the_coordinator(
    local: LocalShards, name: str
) -> None:
    sql = Coordinator(local, local)
    quoted = '"' + name.replace('"', '""') + '"'
    await sql.execute(f"CREATE TABLE a (id INTEGER, k INTEGER, {quoted} INTEGER)"
                      " WITH (distribution = 'id')")  # fmt: skip
    await sql.execute("CREATE TABLE b (id INTEGER, k INTEGER) WITH (distribution = 'id')")
    await sql.execute("INSERT INTO a VALUES (1, 5, 10), (2, 6, 20)")
    await sql.execute("INSERT INTO b VALUES (1, 5), (2, 5)")
    for join in ("JOIN", "FULL JOIN"):  # (repartition, then the coordinator join)
        statement = f"SELECT a.{quoted}, b.id FROM a {join} b ON a.k = b.k"
        rows = sorted((await sql.execute(statement)).rows, key=repr)
        assert rows == sorted([(10, 1), (10, 2)] + ([(20, None)] if join != "JOIN" else []),
                              key=repr)  # fmt: skip
