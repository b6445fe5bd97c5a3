"""Hostile tests of the co-located join (``shardwise.sql.colocated``): inputs where a
co-located plan's answer or names differ from PostgreSQL's / one SQLite database holding
all rows, or where internal names (``_sw_j``, ``alias.column`` virtual names) leak.

Every test here failed when written; each names its bug. The cluster is in-process
(``LocalShards``); every join is on distribution columns of one keyspace, so the planner
picks the co-located plan.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence

import pytest

from shardwise.errors import ShardwiseError
from shardwise.model.config import Keyspace, Scheme
from shardwise.sql import Coordinator, LocalShards
from shardwise.sql.functions import register
from shardwise.sql.values import SqlValue

KEYSPACE = Keyspace("default", Scheme(kind="hash", shards=4))

Tables = dict[str, tuple[str, str, list[tuple[SqlValue, ...]]]]

TABLES: Tables = {
    # name: (columns, distribution column, rows)
    "c": (
        "id INTEGER, name TEXT, tier INTEGER",
        "id",
        [
            (1, "ann", 1),
            (2, "bob", 2),
            (3, "cy", None),
            (4, "dee", 1),
            (5, None, 2),
            (6, "fay", 3),
            (7, "gus", 1),
        ],
    ),
    "o": (
        "id INTEGER, cid BIGINT, amount INTEGER, note TEXT",
        "cid",
        [
            (10, 1, 5, "a"),
            (11, 1, 7, None),
            (12, 2, 3, "b"),
            (13, 4, None, "c"),
            (14, 9, 8, "d"),
            (15, 7, 2, "e"),
            (16, 7, 2, "e"),
            (17, 6, 1, None),
        ],
    ),
}

DOTTED: Tables = {
    # column names that look like the co-located join's virtual names ("alias.column")
    "a": (
        'id INTEGER, "b.x" INTEGER, "o.cid" TEXT',
        "id",
        [(1, 10, "z"), (2, 20, "a"), (3, 30, "m")],
    ),
    "b": ("id INTEGER, x INTEGER", "id", [(1, 100), (2, 200), (3, 300)]),
    "o": ("id INT, cid INTEGER", "cid", [(7, 1), (8, 2), (9, 3)]),
}


@pytest.fixture
def local() -> Iterator[LocalShards]:
    shards = LocalShards([KEYSPACE])
    yield shards
    shards.close()


def _reference(tables: Tables) -> sqlite3.Connection:
    conn = sqlite3.connect(":memory:", isolation_level=None)
    register(conn)
    for name, (columns, _, rows) in tables.items():
        conn.execute(f"CREATE TABLE {name} ({columns})")
        for row in rows:
            conn.execute(f"INSERT INTO {name} VALUES ({', '.join('?' * len(row))})", row)
    return conn


async def _cluster(local: LocalShards, tables: Tables = TABLES) -> Coordinator:
    coordinator = Coordinator(local, local)
    for name, (columns, column, rows) in tables.items():
        await coordinator.execute(
            f"CREATE TABLE {name} ({columns}) WITH (distribution = '{column}')"
        )
        for row in rows:
            marks = ", ".join("?" * len(row))
            await coordinator.execute(f"INSERT INTO {name} VALUES ({marks})", list(row))
    return coordinator


def _sorted(rows: Sequence[Sequence[SqlValue]]) -> list[tuple[SqlValue, ...]]:
    return sorted((tuple(r) for r in rows), key=repr)


# --- 1. an output alias inside an ORDER BY / GROUP BY expression -----------------------
# colocated._names_an_output leaves unrewritten every bare column anywhere in ORDER BY
# whose name is a select alias, not only a bare ORDER BY item. PostgreSQL (and the
# single-table path, select_bind._order) reads a name inside an expression as an input
# column. The un-rewritten name then reaches Scope.bind, which fails with "column 'name'
# does not exist in table '_sw_j'": a wrong refusal and a leaked internal name.


async def test_order_by_expression_over_alias_that_is_an_input_column(
    local: LocalShards,
) -> None:
    coordinator = await _cluster(local)
    # PostgreSQL: name inside `name || ''` is the input column c.name (the single-table
    # read agrees: SELECT amount AS note FROM o ORDER BY note || '' orders by o.note).
    sql = "SELECT o.amount AS name, o.id FROM c JOIN o ON c.id = o.cid ORDER BY name || '', o.id"
    expected = (
        _reference(TABLES)
        .execute(
            "SELECT o.amount AS name, o.id FROM c JOIN o ON c.id = o.cid "
            "ORDER BY c.name || '', o.id"
        )
        .fetchall()
    )
    # got: SqlCatalogError: column 'name' does not exist in table '_sw_j'
    got = (await coordinator.execute(sql)).rows
    assert [tuple(r) for r in got] == expected


async def test_order_by_expression_over_output_alias_error_names_no_internal_table(
    local: LocalShards,
) -> None:
    coordinator = await _cluster(local)
    # PostgreSQL: ERROR column "total" does not exist. got: "... in table '_sw_j'"
    with pytest.raises(ShardwiseError) as info:
        await coordinator.execute(
            "SELECT o.amount AS total FROM c JOIN o ON c.id = o.cid ORDER BY total + 1"
        )
    assert "_sw_j" not in str(info.value)


async def test_group_by_expression_over_output_alias_error_names_no_internal_table(
    local: LocalShards,
) -> None:
    coordinator = await _cluster(local)
    # got: SqlCatalogError: column 't' does not exist in table '_sw_j'
    with pytest.raises(ShardwiseError) as info:
        await coordinator.execute(
            "SELECT c.tier AS t, count(*) FROM c JOIN o ON c.id = o.cid GROUP BY t + 0"
        )
    assert "_sw_j" not in str(info.value)


# --- 2. ORDER BY a bare output name that is no alias -----------------------------------
# PostgreSQL matches a bare ORDER BY name against every output column's name (an alias
# or a column's own name) before the input columns; select_bind._order does so for one
# table. colocated._names_an_output only knows explicit aliases, so `ORDER BY id` after
# `SELECT c.id` goes to the resolver, which finds c.id and o.id: "ambiguous".


async def test_order_by_unaliased_output_name(local: LocalShards) -> None:
    coordinator = await _cluster(local)
    sql = "SELECT c.id, count(*) FROM c JOIN o ON c.id = o.cid GROUP BY c.id ORDER BY id DESC"
    # PostgreSQL: ordered by the output column id. got: "column reference 'id' is ambiguous"
    got = (await coordinator.execute(sql)).rows
    assert [tuple(r) for r in got] == [(7, 2), (6, 1), (4, 1), (2, 1), (1, 2)]


# --- 3. result column names with a star --------------------------------------------------
# plan_colocated drops `heads` (each item's first word as written) whenever a `*` or
# `t.*` expands the select list, so the names fall back to sqlglot's: ifnull -> coalesce,
# now -> current_timestamp. The same items after `*` on one table are named ifnull, now.


async def test_star_then_function_keeps_the_written_function_name(local: LocalShards) -> None:
    coordinator = await _cluster(local)
    single = await coordinator.execute("SELECT *, ifnull(amount, 0), now() FROM o")
    assert single.columns[-2:] == ("ifnull", "now")
    joined = await coordinator.execute(
        "SELECT c.*, ifnull(o.amount, 0), now() FROM c JOIN o ON c.id = o.cid"
    )
    # got: ('coalesce', 'current_timestamp')
    assert joined.columns == ("id", "name", "tier", "ifnull", "now")


# --- 4. user names that equal the virtual names -----------------------------------------
# The rewritten statement uses unqualified virtual names ("c.id"); select_bind then
# matches them against output names (ORDER BY) and reads an output alias against the
# virtual columns (GROUP BY, _group_key checks scope.names), so a user name spelled like a
# virtual name is taken for the other one.


async def test_group_by_output_alias_spelled_like_a_virtual_column(local: LocalShards) -> None:
    coordinator = await _cluster(local)
    # No input column is named "c.id", so PostgreSQL groups by the output (o.amount).
    sql = 'SELECT o.amount AS "c.id", count(*) FROM c JOIN o ON c.id = o.cid GROUP BY "c.id"'
    expected = _sorted(_reference(TABLES).execute(sql).fetchall())
    # got: SqlSemanticError: column 'o.amount' must appear in the GROUP BY clause
    assert _sorted((await coordinator.execute(sql)).rows) == expected


async def test_qualified_order_by_not_taken_for_an_output_named_like_it(
    local: LocalShards,
) -> None:
    coordinator = await _cluster(local, DOTTED)
    # ORDER BY o.cid is table o's cid; table a's column "o.cid" is only an output name.
    sql = 'SELECT a."o.cid", o.cid FROM a JOIN o ON a.id = o.cid ORDER BY o.cid LIMIT 1'
    expected = _reference(DOTTED).execute(sql).fetchall()  # [('z', 1)]
    # got: [('a', 2)] -- ordered by a."o.cid" (the output named "o.cid")
    assert [tuple(r) for r in (await coordinator.execute(sql)).rows] == expected


async def test_dotted_alias_and_dotted_column_get_distinct_virtual_names(
    local: LocalShards,
) -> None:
    # a."b.x" and "a.b".x both become the virtual column "a.b.x": the derived table has
    # two columns of one name and every reference reads the first.
    coordinator = await _cluster(local, DOTTED)
    sql = 'SELECT a."b.x", "a.b".x FROM a AS a JOIN b AS "a.b" ON a.id = "a.b".id'
    expected = _sorted(_reference(DOTTED).execute(sql).fetchall())
    # got: [(10, 10), (20, 20), (30, 30)] (expected: [(10, 100), (20, 200), (30, 300)])
    assert _sorted((await coordinator.execute(sql)).rows) == expected


async def test_a_planner_error_names_the_columns_as_written(local: LocalShards) -> None:
    # The bug: errors of the single-table planner named the joined rows' virtual columns
    # ("column '_sw_c1' must appear in the GROUP BY clause").
    coordinator = await _cluster(local)
    with pytest.raises(ShardwiseError) as info:
        await coordinator.execute(
            "SELECT c.id, c.name, count(*) FROM c JOIN o ON o.cid = c.id GROUP BY c.id"
        )
    assert "'c.name' must appear in the GROUP BY clause" in str(info.value)
    assert "_sw_" not in str(info.value)
