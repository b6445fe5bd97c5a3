"""The coordinator over LocalShards: DDL on every shard, routing, what shards ship, and
writes checked against a single SQLite database."""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest

from shardwise.errors import UnsupportedSqlError
from shardwise.model.config import Keyspace, Scheme, ShardId
from shardwise.sql import EXPLAIN_COLUMN, Coordinator, LocalShards
from shardwise.sql.difftest import (
    DEFAULT_TABLES,
    create_statements,
    differences,
    make_rows,
    reference_database,
    reference_query,
)

SHARDS = 8
KEYSPACE = Keyspace("default", Scheme(shards=SHARDS))


@pytest.fixture
def local() -> Iterator[LocalShards]:
    shards = LocalShards([KEYSPACE])
    yield shards
    shards.close()


def tables_on(local: LocalShards, shard: int) -> set[str]:
    conn = local.connection(ShardId("default", shard))
    return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


async def test_ddl_reaches_every_shard(local: LocalShards) -> None:
    sql = Coordinator(local, local)
    await sql.execute("CREATE TABLE kv (k TEXT PRIMARY KEY, v INTEGER) WITH (distribution = 'k')")
    await sql.execute("CREATE TABLE IF NOT EXISTS kv (k TEXT, v INTEGER) WITH (distribution = 'k')")
    assert all(tables_on(local, i) == {"sql_kv"} for i in range(SHARDS))
    await sql.execute("ALTER TABLE kv ADD COLUMN note TEXT DEFAULT 'n'")
    await sql.execute("CREATE INDEX kv_by_v ON kv (v)")
    await sql.execute("INSERT INTO kv (k, v) VALUES ('a', 1), ('b', 2)")
    result = await sql.execute("SELECT k, note FROM kv ORDER BY k")
    assert result.columns == ("k", "note")
    assert result.rows == [("a", "n"), ("b", "n")]
    await sql.execute("DROP TABLE kv")
    await sql.execute("DROP TABLE IF EXISTS kv")
    assert all(tables_on(local, i) == set() for i in range(SHARDS))


async def test_routing_and_what_shards_ship(local: LocalShards, rng: random.Random) -> None:
    sql = Coordinator(local, local)
    await sql.execute(
        "CREATE TABLE t (id INTEGER PRIMARY KEY, v INTEGER) WITH (distribution = 'id')"
    )
    rows = [(i, rng.randint(0, 1000)) for i in range(500)]
    marks = ", ".join("(?, ?)" for _ in rows)
    await sql.execute(f"INSERT INTO t VALUES {marks}", [x for row in rows for x in row])
    before = local.reads
    point = await sql.execute("SELECT v FROM t WHERE id = ?", [17])
    assert point.rows == [(rows[17][1],)]
    assert local.reads - before == 1  # a point query touches one shard
    top = await sql.execute("SELECT id, v FROM t ORDER BY v DESC, id LIMIT 10")
    assert top.rows == sorted(rows, key=lambda r: (-r[1], r[0]))[:10]
    assert max(sql.last_rows_shipped.values()) <= 10  # top-k: at most k rows per shard
    grouped = await sql.execute("SELECT v % 10, count(*) FROM t GROUP BY 1")
    assert sum(int(str(r[1])) for r in grouped.rows) == 500
    assert max(sql.last_rows_shipped.values()) <= 10  # partial groups, not rows


async def test_placeholder_styles_and_explain(local: LocalShards) -> None:
    sql = Coordinator(local, local)
    await sql.execute("CREATE TABLE t (id INTEGER, s TEXT) WITH (distribution = 'id')")
    await sql.execute("INSERT INTO t VALUES (?, ?), (?, ?)", [1, "a", 2, "b"])
    await sql.execute("INSERT INTO t VALUES (:id, :s)", {"id": 3, "s": "c"})
    await sql.execute("INSERT INTO t VALUES ($2,$1)", ["d", 4])  # no spaces: see parse.py
    result = await sql.execute("SELECT s FROM t WHERE id IN (?, ?) ORDER BY s", [1, 4])
    assert result.rows == [("a",), ("d",)]
    explained = await sql.execute("EXPLAIN SELECT count(*) FROM t")
    assert explained.columns == (EXPLAIN_COLUMN,)
    text = "\n".join(str(r[0]) for r in explained.rows)
    assert "partial-aggregates" in text and "all 8" in text
    now = await sql.execute("SELECT now() = CURRENT_TIMESTAMP, length(now())")
    assert now.rows == [(1, 19)]
    # ``?`` after EXPLAIN is numbered as without it (it was left unnumbered).
    pinned = await sql.execute("EXPLAIN SELECT s FROM t WHERE id = ?", [3])
    assert any("single-shard" in str(r[0]) for r in pinned.rows)


async def test_explain_analyze_runs_a_read_and_reports_each_stage(local: LocalShards) -> None:
    sql = Coordinator(local, local)
    await sql.execute("CREATE TABLE a (id INTEGER, x INTEGER) WITH (distribution = 'id')")
    await sql.execute("CREATE TABLE b (id INTEGER, a_x INTEGER) WITH (distribution = 'id')")
    await sql.execute("INSERT INTO a VALUES (1, 10), (2, 20), (3, 30)")
    await sql.execute("INSERT INTO b VALUES (1, 10), (2, 10), (3, 99)")
    joined = await sql.execute(
        "EXPLAIN ANALYZE SELECT a.id, b.id FROM a JOIN b ON b.a_x = a.x WHERE a.x < ?", [25]
    )
    lines = [str(r[0]) for r in joined.rows]
    assert lines[0].startswith("Distributed broadcast read of a, b")
    actual = lines[lines.index("actual:") + 1 :]
    assert actual[0].startswith("  scan 2: 8 shard(s) read in ") and "3 rows sent" in actual[0]
    assert (
        actual[1]
        == "  broadcast: 3 rows of 1 table(s) shipped to each of 8 shard(s) (24 rows sent)"
    )
    assert actual[2].startswith("  join: 8 shard(s) read in ") and ": 2 rows sent" in actual[2]
    assert actual[3].startswith("  2 rows returned in ")
    full = await sql.execute("EXPLAIN ANALYZE SELECT a.id, b.id FROM a FULL JOIN b ON b.a_x = a.x")
    lines = [str(r[0]) for r in full.rows]
    assert lines[0].startswith("Distributed coordinator-join read of a, b")
    actual = lines[lines.index("actual:") + 1 :]
    assert actual[0].startswith("  scan 1: 8 shard(s) read in ") and "3 rows sent" in actual[0]
    assert actual[1].startswith("  scan 2: 8 shard(s) read in ") and "3 rows sent" in actual[1]
    assert actual[2].startswith("  at the coordinator: 6 rows in 2 table(s) -> 5 rows in ")
    assert actual[3].startswith("  5 rows returned in ")
    pinned = await sql.execute("EXPLAIN ANALYZE SELECT x FROM a WHERE id = 2")
    assert "  1 shard(s) read in" in "\n".join(str(r[0]) for r in pinned.rows)
    with pytest.raises(UnsupportedSqlError, match="EXPLAIN ANALYZE"):
        await sql.execute("EXPLAIN ANALYZE DELETE FROM a")
    assert (await sql.execute("SELECT count(*) FROM a")).rows == [(3,)]  # nothing ran


async def test_writes_match_a_single_database(
    local: LocalShards, rng: random.Random, seed: int
) -> None:
    sql = Coordinator(local, local)
    data = make_rows(rng, DEFAULT_TABLES)
    reference = reference_database(data)
    for ddl in create_statements(DEFAULT_TABLES):
        await sql.execute(ddl)
    for name, rows in data.items():
        for row in rows:
            marks = ", ".join(f"${i + 1}" for i in range(len(row)))
            await sql.execute(f"INSERT INTO {name} VALUES ({marks})", list(row))
    statements = [
        "UPDATE t SET x = x + 1 WHERE g = $1",
        "UPDATE t SET s = upper(s), y = y * 2 WHERE id = $1",
        "UPDATE t SET h = NULL WHERE x > $1",
        "DELETE FROM t WHERE id IN ($1, 3, 5)",
        "DELETE FROM t WHERE x < $1 AND g = 2",
        "UPDATE u SET g = coalesce(g, 0) + 1 WHERE x IS NOT NULL OR $1 = 0",
        "DELETE FROM e WHERE id = $1",
    ]
    for number in range(60):
        statement = rng.choice(statements)
        param = rng.choice([*data["t"]])[0] if "id" in statement else rng.randint(-10, 6)
        got = await sql.execute(statement, [param])
        text, values = reference_query(statement, [param])
        want = reference.execute(text, values).rowcount
        assert got.rowcount == want, f"#{number} (seed={seed}): {statement} [{param!r}]"
    for name in data:
        got_rows = (await sql.execute(f"SELECT * FROM {name}")).rows
        want_rows = [tuple(r) for r in reference.execute(f"SELECT * FROM {name}")]
        assert not differences(got_rows, want_rows, ordered=False), f"seed={seed} table {name}"
    reference.close()
