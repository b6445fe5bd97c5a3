"""Issue 19's classes, one regression test each: the answer SQLite gives over one
database holding every row, from the coordinator over eight shards."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence

import pytest

from shardwise.errors import SqlExecutionError, SqlLimitError
from shardwise.model.config import Keyspace, Scheme
from shardwise.sql import Coordinator, LocalShards
from shardwise.sql.bulk import MAX_BULK_ROWS, multi_row_inserts
from shardwise.sql.executor import Row
from shardwise.sql.parse import MAX_NESTING_DEPTH
from shardwise.sql.values import INT64_MAX, SqlValue

KEYSPACE = Keyspace("default", Scheme(kind="hash", shards=8))
COLUMNS = "id INTEGER PRIMARY KEY, a INTEGER, c TEXT, v, big INTEGER, n NUMERIC"
ROWS: list[Row] = [
    (i, 5 if i < 8 else i, "5" if i % 3 else "x", "7" if i % 2 else 2, INT64_MAX - i, 7)
    for i in range(16)
]


class Both:
    """The coordinator and the reference, loaded with the same rows."""

    def __init__(self, sql: Coordinator, reference: sqlite3.Connection) -> None:
        self.sql = sql
        self.reference = reference

    async def check(self, query: str, params: Sequence[SqlValue] = ()) -> list[Row]:
        want = [tuple(r) for r in self.reference.execute(query, params)]
        got = (await self.sql.execute(query, list(params))).rows
        assert sorted(got, key=repr) == sorted(want, key=repr), query
        assert [tuple(map(type, r)) for r in sorted(got, key=repr)] == [
            tuple(map(type, r)) for r in sorted(want, key=repr)
        ], query
        return got


@pytest.fixture
def local() -> Iterator[LocalShards]:
    shards = LocalShards([KEYSPACE])
    yield shards
    shards.close()


async def load(local: LocalShards) -> Both:
    sql = Coordinator(local, local)
    await sql.execute(f"CREATE TABLE t ({COLUMNS}) WITH (distribution = 'id')")
    marks = ", ".join("(?, ?, ?, ?, ?, ?)" for _ in ROWS)
    await sql.execute(f"INSERT INTO t VALUES {marks}", [x for r in ROWS for x in r])
    reference = sqlite3.connect(":memory:")
    reference.execute(f"CREATE TABLE t ({COLUMNS})")
    reference.executemany("INSERT INTO t VALUES (?, ?, ?, ?, ?, ?)", ROWS)
    return Both(sql, reference)


async def test_hex_literals_are_integers_and_blob_literals_blobs(local: LocalShards) -> None:
    both = await load(local)
    assert await both.check("SELECT COUNT(*) FROM t WHERE a = 0x05") == [(8,)]
    assert await both.check("SELECT 0x10, x'10'") == [(16, b"\x10")]
    await both.check("SELECT 0xFFFFFFFFFFFFFFFF, 0x8000000000000000, 5-0xFFFFFFFFFFFFFFFF")
    await both.check("SELECT id FROM t WHERE id = 0x0a")  # pruned to one shard by value


async def test_group_keys_keep_their_affinity_at_the_coordinator(local: LocalShards) -> None:
    both = await load(local)
    assert await both.check('SELECT "a", COUNT(*) FROM t GROUP BY "a" HAVING "a" = \'5\'') == [
        (5, 8)
    ]
    await both.check(
        "SELECT CAST(c AS INTEGER), COUNT(*) FROM t GROUP BY CAST(c AS INTEGER) "
        "HAVING CAST(c AS INTEGER) = '5'"
    )
    await both.check("SELECT n, count(*) FROM t GROUP BY n HAVING n = '7'")
    await both.check(
        "SELECT CAST(a AS TEXT), count(*) FROM t GROUP BY 1 HAVING CAST(a AS TEXT) = 5"
    )


async def test_sum_distinct_over_integer_looking_text_is_an_integer(local: LocalShards) -> None:
    both = await load(local)
    rows = await both.check(
        "SELECT SUM(DISTINCT v), typeof(SUM(DISTINCT v)), SUM(DISTINCT v) / 2 FROM t"
    )
    assert rows == [(9, "integer", 4)]
    await both.check("SELECT a, SUM(DISTINCT v), total(DISTINCT v) FROM t GROUP BY a")


async def test_deep_nesting_is_a_named_limit_not_a_crash(local: LocalShards) -> None:
    both = await load(local)
    inside = "(" * MAX_NESTING_DEPTH + "1" + ")" * MAX_NESTING_DEPTH
    await both.check(f"SELECT {inside}, count(*) FROM t WHERE {inside} = 1")
    for deep in (
        "SELECT " + "(" * 60 + "1" + ")" * 60,
        "SELECT " + "abs(" * 60 + "1" + ")" * 60,
        "SELECT " + "NOT " * 400 + "1",
        "SELECT " + "- " * 2000 + "1",
    ):
        with pytest.raises(SqlLimitError) as caught:
            await both.sql.execute(deep)
        assert caught.value.limit == "MAX_NESTING_DEPTH"
        if "(" in deep:  # counted before parsing: the error says where
            assert "nested too deeply at line 1, column" in str(caught.value)


async def test_limit_plus_offset_past_64_bits(local: LocalShards) -> None:
    both = await load(local)
    for query in (
        "SELECT id FROM t ORDER BY id LIMIT 9223372036854775807 OFFSET 3",
        "SELECT id FROM t LIMIT 9223372036854775807 OFFSET 9223372036854775807",
        "SELECT a, count(*) FROM t GROUP BY a ORDER BY a LIMIT ? OFFSET ?",
    ):
        params = [INT64_MAX, 2] if "?" in query else []
        await both.check(query, params)


async def test_expressions_over_group_key_columns(local: LocalShards) -> None:
    both = await load(local)
    await both.check("SELECT upper(c), COUNT(*) FROM t GROUP BY c")
    await both.check("SELECT a, COUNT(*) FROM t GROUP BY a HAVING a > 3")
    await both.check("SELECT t.a, a * 2, COUNT(*) FROM t GROUP BY t.a")
    assert await both.check("SELECT a, count(*) FROM t GROUP BY a HAVING a = '5'") == [(5, 8)]


async def test_partial_sums_are_not_narrower_than_the_answer(local: LocalShards) -> None:
    both = await load(local)
    await both.check("SELECT AVG(big), total(big) FROM t")
    await both.check("SELECT a, AVG(big) FROM t GROUP BY a")
    # One shard's part of a SUM passes 64 bits, the whole does not.
    await both.check("SELECT SUM(big - 9223372036854775000) FROM t")
    with pytest.raises(SqlExecutionError, match="integer overflow"):
        await both.sql.execute("SELECT SUM(big) FROM t")
    # SQLite moves a HAVING on group keys into WHERE: the dropped groups never overflow.
    await both.check("SELECT a, SUM(big) FROM t GROUP BY a HAVING a = 9")
    await both.check("SELECT a, SUM(big) FROM t GROUP BY a LIMIT 0")


async def test_numeric_and_decimal_have_numeric_affinity(local: LocalShards) -> None:
    both = await load(local)
    rows = await both.check("SELECT n / 2, typeof(n), CAST(7 AS NUMERIC) / 2 FROM t WHERE id = 1")
    assert rows == [(3, "integer", 3)]
    await both.sql.execute(
        "CREATE TABLE d (id INTEGER PRIMARY KEY, p DECIMAL(10, 2)) WITH (distribution = 'id')"
    )
    await both.sql.execute("INSERT INTO d VALUES (1, 7), (2, 2.5), (3, '4')")
    result = await both.sql.execute("SELECT id, p / 2, typeof(p) FROM d ORDER BY id")
    assert result.rows == [(1, 3, "integer"), (2, 1.25, "real"), (3, 2, "integer")]


def test_executemany_sends_multi_row_inserts() -> None:
    rows = [(i, f"n{i}") for i in range(MAX_BULK_ROWS + 5)]
    batches = multi_row_inserts("INSERT INTO t (id, c) VALUES (?, ?);", rows)
    assert batches is not None and len(batches) == 2
    first, params = batches[0]
    assert first.count("(?, ?)") == MAX_BULK_ROWS and params[:4] == [0, "n0", 1, "n1"]
    assert sum(len(p) for _, p in batches) == 2 * len(rows)
    # Nothing else is rewritten: it runs row by row.
    for other in (
        "INSERT INTO t VALUES ($1, $2)",
        "INSERT INTO t VALUES (?, ?) ON CONFLICT DO NOTHING",
        "INSERT INTO t VALUES (?, ?), (1, 'x')",
        "UPDATE t SET c = ? WHERE id = ?",
    ):
        assert multi_row_inserts(other, rows) is None, other
    assert multi_row_inserts("INSERT INTO t VALUES (?, ?)", [(1, 2, 3)]) is None
