"""Hostile tests of the coordinator join (``shardwise.sql.join_plan``): inputs where the
answer differs from one SQLite database holding the same rows, where something is
accepted that a single-table read refuses, or where internal names leak.

Every test here failed when written; each names its bug. The cluster is in-process
(``LocalShards``); the reference is one SQLite database with the same rows. Joins are on
columns that are not distribution columns (or hold a subquery / WITH), so they go to
the coordinator join rather than the co-located one.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence

import pytest

from shardwise.errors import ShardwiseError, SqlLimitError
from shardwise.model.config import Keyspace, Scheme
from shardwise.sql import Coordinator, LocalShards
from shardwise.sql.functions import register
from shardwise.sql.merge import MergeLimits
from shardwise.sql.values import SqlValue

KEYSPACE = Keyspace("default", Scheme(kind="hash", shards=4))

TABLES = {
    # name: (columns, distribution column); u is placed by c, not id, so a join on id is
    # never co-located
    "t": ("id INTEGER, a INTEGER, b TEXT, n NUMERIC, v", "id"),
    "u": ("id INTEGER, a TEXT, c INTEGER, v", "c"),
    "e": ("id INTEGER, a INTEGER, b TEXT", "id"),
}
ROWS: dict[str, list[tuple[SqlValue, ...]]] = {
    "t": [
        (1, 1, "x", 1, None),
        (2, 2, "y", 2.5, "2"),
        (3, None, "z", None, 3),
        (4, 4, None, "4", b"\x01"),
        (5, 5, "X", 10, 1),
    ],
    "u": [
        (1, "1", 10, None),
        (2, "2", 20, 2),
        (3, "3", 30, "3"),
        (8, "8", -1, None),
        (6, None, 60, "x"),
        (7, "07", 70, 7),
    ],
    "e": [],
}


@pytest.fixture
def local() -> Iterator[LocalShards]:
    shards = LocalShards([KEYSPACE])
    yield shards
    shards.close()


@pytest.fixture
def reference() -> Iterator[sqlite3.Connection]:
    conn = sqlite3.connect(":memory:", isolation_level=None)
    register(conn)
    for name, (columns, _) in TABLES.items():
        conn.execute(f"CREATE TABLE {name} ({columns})")
        for row in ROWS[name]:
            conn.execute(f"INSERT INTO {name} VALUES ({', '.join('?' * len(row))})", row)
    yield conn
    conn.close()


async def _cluster(local: LocalShards, limits: MergeLimits | None = None) -> Coordinator:
    coordinator = Coordinator(local, local, limits=limits)
    for name, (columns, column) in TABLES.items():
        await coordinator.execute(
            f"CREATE TABLE {name} ({columns}) WITH (distribution = '{column}')"
        )
        for row in ROWS[name]:
            marks = ", ".join("?" * len(row))
            await coordinator.execute(f"INSERT INTO {name} VALUES ({marks})", list(row))
    return coordinator


def _sorted(rows: Sequence[Sequence[SqlValue]]) -> list[tuple[SqlValue, ...]]:
    return sorted((tuple(r) for r in rows), key=repr)


async def _same_as_reference(
    coordinator: Coordinator, reference: sqlite3.Connection, sql: str
) -> None:
    expected = _sorted(reference.execute(sql).fetchall())
    got = _sorted((await coordinator.execute(sql)).rows)
    assert got == expected, f"{sql}\n got: {got}\n expected: {expected}"


# --- 1. unknown column names become string literals ------------------------------------
# The coordinator's statement is SQLite text with every identifier double-quoted
# (to_sqlite(identify=True)); SQLite's "double-quoted string" misfeature then reads a
# quoted name that matches no column as a string literal. join_plan never checks that an
# unqualified column exists, so a typo silently becomes the string 'nope' (the reference,
# and a single-table read, refuse it: "no such column").


async def test_unknown_column_in_on_is_refused_not_a_string(local: LocalShards) -> None:
    coordinator = await _cluster(local)
    sql = "SELECT t.id FROM t JOIN u ON t.a = u.c OR nope = 'nope'"
    # got: all 30 rows of the cross join ('nope' = 'nope' is true)
    with pytest.raises(ShardwiseError, match="nope"):
        await coordinator.execute(sql)


async def test_unknown_column_in_subquery_is_refused_not_a_string(local: LocalShards) -> None:
    coordinator = await _cluster(local)
    # got: every row of t (typo = the string 'typo', never equal to an id)
    with pytest.raises(ShardwiseError, match="typo"):
        await coordinator.execute("SELECT id FROM t WHERE id NOT IN (SELECT typo FROM u)")


async def test_double_quoted_string_in_a_join_is_refused_as_single_table_does(
    local: LocalShards,
) -> None:
    coordinator = await _cluster(local)
    with pytest.raises(ShardwiseError):  # the single-table read refuses: no column "1"
        await coordinator.execute('SELECT id FROM u WHERE a = "1"')
    # got: [(1,)] -- "1" read as the string '1'
    with pytest.raises(ShardwiseError):
        await coordinator.execute(
            'SELECT t.id FROM t WHERE EXISTS (SELECT 1 FROM u WHERE u.a = "1")'
        )


# --- 2. rowid of the coordinator's scan table ------------------------------------------
# A single-table read (and the co-located join) refuses rowid ("column 'rowid' does not
# exist"); the coordinator join passes it to SQLite, which answers with the rowid of the
# coordinator's in-memory _sw_t0 table: numbers that depend on shard order and mean
# nothing (the reference answers with the real rowids: a different answer).


@pytest.mark.parametrize("name", ["rowid", "oid", "_rowid_"])
async def test_rowid_in_coordinator_join_is_refused(local: LocalShards, name: str) -> None:
    coordinator = await _cluster(local)
    # got: [(1, 1), (2, 3), (3, 2)] (reference: [(1, 1), (2, 2), (3, 3)])
    with pytest.raises(ShardwiseError):
        await coordinator.execute(f"SELECT id, {name} FROM t WHERE id IN (SELECT id FROM u)")


# --- 3. a CTE's name is treated as a CTE everywhere in the statement -------------------
# join_plan._cte_names collects the names of every WITH in the tree, and _references
# skips every table of such a name, whatever the scope. A CTE defined inside a subquery
# then hides a real table of the same name outside it: that table is never scanned nor
# renamed, and the coordinator's SQLite sees the bare name.


async def test_cte_inside_subquery_does_not_hide_outer_table(
    local: LocalShards, reference: sqlite3.Connection
) -> None:
    coordinator = await _cluster(local)
    # got: SqlExecutionError: no such table: t (reference: the row of t with a = 5)
    await _same_as_reference(
        coordinator,
        reference,
        "SELECT * FROM t WHERE a IN (WITH t AS (SELECT 5 AS a) SELECT a FROM t)",
    )


async def test_cte_inside_derived_table_does_not_hide_joined_table(
    local: LocalShards, reference: sqlite3.Connection
) -> None:
    coordinator = await _cluster(local)
    await _same_as_reference(
        coordinator,
        reference,
        "SELECT d.id, t.id FROM (WITH t AS (SELECT 1 AS id) SELECT id FROM t) d "
        "JOIN t ON d.id = t.id",
    )


async def test_cte_scope_bug_does_not_expose_the_coordinators_schema(
    local: LocalShards,
) -> None:
    """The same bug lets a user read the coordinator's own sqlite_master: the internal
    scan names (_sw_t0) and their DDL come back as rows."""
    coordinator = await _cluster(local)
    sql = (
        "SELECT name, sql FROM sqlite_master WHERE EXISTS (SELECT 1 FROM t) "
        "AND EXISTS (WITH sqlite_master AS (SELECT 1 AS z) SELECT z FROM sqlite_master)"
    )
    try:
        result = await coordinator.execute(sql)
    except ShardwiseError as exc:
        assert "_sw_t" not in str(exc)
        return
    # got: [('_sw_t0', 'CREATE TABLE "_sw_t0" ("id" INTEGER, ...)')]
    assert "_sw_t" not in repr(result.rows)
    assert result.rows == []  # there is no user table named sqlite_master


# --- 4. WHERE pushdown of an unqualified USING column ----------------------------------
# _only_reference decides which table an unqualified column belongs to by looking only at
# the top-level *tables* of the catalog. With ``d JOIN t USING (id)`` where d is a
# derived table or CTE, SQLite resolves a bare ``id`` to d.id (the left one, no
# ambiguity error with USING), but the planner pushes the condition into t's scan. The
# two columns are equal under the join's affinity, not identical: '1' (TEXT) = 1.


@pytest.mark.parametrize(
    "source",
    [
        "WITH d AS (SELECT a AS id FROM u) SELECT d.id, t.b FROM d",
        "SELECT d.id, t.b FROM (SELECT a AS id FROM u) d",
    ],
)
async def test_using_column_condition_not_pushed_into_the_wrong_table(
    local: LocalShards, reference: sqlite3.Connection, source: str
) -> None:
    coordinator = await _cluster(local)
    # got: [] (reference: [('1', 'x'), ('2', 'y'), ('3', 'z')])
    await _same_as_reference(
        coordinator, reference, f"{source} JOIN t USING (id) WHERE typeof(id) = 'text'"
    )


# --- 5. SEMI / ANTI joins ------------------------------------------------------------
# Neither PostgreSQL nor SQLite has them; sqlglot parses them and writes EXISTS / NOT
# EXISTS for SQLite. join_plan does not refuse them and treats an ANTI join without a
# side as an inner join: its ON conditions are pushed into the scans as WHERE conditions,
# so t's rows that fail ``t.a > 2`` (which an anti join keeps) are dropped. A RIGHT ANTI
# join answers with rows of the wrong table.


async def test_anti_join_is_refused_or_means_not_exists(
    local: LocalShards, reference: sqlite3.Connection
) -> None:
    coordinator = await _cluster(local)
    try:
        got = (
            await coordinator.execute("SELECT t.id FROM t ANTI JOIN u ON t.id = u.id AND t.a > 2")
        ).rows
    except ShardwiseError:
        return  # refused: fine
    expected = reference.execute(
        "SELECT t.id FROM t WHERE NOT EXISTS (SELECT 1 FROM u WHERE t.id = u.id AND t.a > 2)"
    ).fetchall()
    # got: [(4,), (5,)] (NOT EXISTS: all five ids)
    assert _sorted(got) == _sorted(expected)


async def test_right_anti_join_is_refused(local: LocalShards) -> None:
    coordinator = await _cluster(local)
    # got: [(4,), (5,)]: rows of t, the side a RIGHT anti join would drop
    with pytest.raises(ShardwiseError):
        await coordinator.execute("SELECT t.id FROM t RIGHT ANTI JOIN u ON t.id = u.id")


# --- 6. a pushed-down condition runs twice -------------------------------------------
# random() stays per row in a read; a WHERE conjunct naming one table is run in the scan
# on the shards *and* again in the coordinator's statement, so a row passes with
# probability p*p instead of p. 400 rows, p = 1/2: about 200 should pass; about 100 do.


async def test_random_condition_is_not_applied_twice(local: LocalShards) -> None:
    coordinator = Coordinator(local, local)
    await coordinator.execute("CREATE TABLE big (id INTEGER, x INTEGER) WITH (distribution = 'id')")
    await coordinator.execute("CREATE TABLE one (id INTEGER) WITH (distribution = 'id')")
    rows = ", ".join(f"({i}, {i % 7})" for i in range(400))
    await coordinator.execute(f"INSERT INTO big VALUES {rows}")
    await coordinator.execute("INSERT INTO one VALUES (1)")
    result = await coordinator.execute(
        "SELECT count(*) FROM big b "
        "WHERE b.id * 0 + random() % 2 = 0 AND EXISTS (SELECT 1 FROM one)"
    )
    (count,) = result.rows[0]
    assert isinstance(count, int)
    # Binomial(400, 1/2): 200 +- 10; the bug gives Binomial(400, 1/4): 100 +- 9.
    assert 150 <= count <= 250, count


# --- 7. the coordinator's answer has no byte bound -----------------------------------
# A single-table read whose rows exceed max_bytes is refused; the coordinator join checks
# only the scans' bytes and the answer's row count, so a join can hand back an answer of
# any size (max_rows x any width) and exhaust the coordinator's memory.


async def test_join_answer_is_bounded_by_max_bytes(local: LocalShards) -> None:
    limits = MergeLimits(max_rows=10_000, max_bytes=1 << 20)
    coordinator = Coordinator(local, local, limits=limits)
    await coordinator.execute("CREATE TABLE big (id INTEGER) WITH (distribution = 'id')")
    await coordinator.execute("CREATE TABLE one (id INTEGER) WITH (distribution = 'id')")
    await coordinator.execute("INSERT INTO big VALUES " + ", ".join(f"({i})" for i in range(300)))
    await coordinator.execute("INSERT INTO one VALUES (1)")
    with pytest.raises(SqlLimitError):  # the single-table read is refused
        await coordinator.execute("SELECT zeroblob(100000) FROM big")
    # got: 300 rows, 30 MB, with max_bytes = 1 MB
    with pytest.raises(SqlLimitError):
        await coordinator.execute(
            "SELECT zeroblob(100000) FROM big WHERE id IN (SELECT id FROM one) OR id < 300"
        )


# --- 8. LIMIT / OFFSET not checked ---------------------------------------------------
# A single-table read refuses a negative LIMIT or OFFSET (as PostgreSQL does); the
# coordinator join hands them to SQLite, where LIMIT -1 means "no limit" and a negative
# OFFSET means 0.


@pytest.mark.parametrize(
    ("clause", "params"),
    [("LIMIT -1", []), ("LIMIT $1", [-1]), ("ORDER BY t.id LIMIT 2 OFFSET -3", [])],
)
async def test_negative_limit_or_offset_refused_in_a_join(
    local: LocalShards, clause: str, params: list[SqlValue]
) -> None:
    coordinator = await _cluster(local)
    single = clause.replace("t.id", "id")
    with pytest.raises(ShardwiseError):  # the single-table read refuses it
        await coordinator.execute(f"SELECT id FROM t {single}", params)
    # got: rows (SQLite's meaning of a negative LIMIT / OFFSET)
    with pytest.raises(ShardwiseError):
        await coordinator.execute(f"SELECT t.id FROM t JOIN u ON t.a = u.c {clause}", params)


# --- 9. a scalar subquery that returns several rows ------------------------------------
# PostgreSQL refuses it; SQLite takes the first row, which at the coordinator depends on
# the order the shards answered in.


async def test_a_scalar_subquery_of_several_rows_is_refused(local: LocalShards) -> None:
    coordinator = await _cluster(local)
    with pytest.raises(ShardwiseError, match="more than one row returned by a subquery"):
        await coordinator.execute("SELECT id, (SELECT u.id FROM u WHERE u.c > 0) FROM t")
    with pytest.raises(ShardwiseError, match="more than one row returned by a subquery"):
        await coordinator.execute("SELECT id FROM t WHERE a = (SELECT c FROM u WHERE c > 0)")
    # One row, or none (NULL), and ORDER BY / LIMIT inside still apply.
    one = await coordinator.execute(
        "SELECT t.id, (SELECT u.c FROM u WHERE u.id = t.id) FROM t ORDER BY t.id"
    )
    assert one.rows == [(1, 10), (2, 20), (3, 30), (4, None), (5, None)]
    top = await coordinator.execute(
        "SELECT (SELECT u.c FROM u ORDER BY u.c DESC LIMIT 1), (SELECT count(*) FROM e)"
    )
    assert top.rows == [(70, 0)]


async def test_a_cte_named_like_a_table_reads_the_table_in_its_own_body(
    local: LocalShards,
) -> None:
    # As in PostgreSQL, a (non-recursive) WITH name is not visible in its own body: there
    # the name is the table's. (It was taken for the CTE, and SQLite refused a circular
    # reference.)
    coordinator = await _cluster(local)
    result = await coordinator.execute(
        "WITH t AS (SELECT id, a * 2 AS a FROM t WHERE id > 3) SELECT id, a FROM t ORDER BY id"
    )
    assert result.rows == [(4, 8), (5, 10)]


async def test_a_scalar_subquery_ordered_by_its_own_alias(local: LocalShards) -> None:
    # Wrapping a scalar subquery for the single-row check renamed its item, so an ORDER BY
    # naming the item's alias lost it.
    coordinator = await _cluster(local)
    result = await coordinator.execute(
        "SELECT id, (SELECT u.c AS best FROM u WHERE u.id <= t.id ORDER BY best DESC LIMIT 1) "
        "FROM t ORDER BY id"
    )
    assert result.rows == [(1, 10), (2, 20), (3, 30), (4, 30), (5, 30)]
