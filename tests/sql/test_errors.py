"""Bad SQL: typed errors that say where and what, and nothing half-applied."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from shardwise.errors import (
    DistributionColumnUpdateError,
    DistributionValueError,
    NondeterministicSqlError,
    ShardwiseError,
    SqlCatalogError,
    SqlError,
    SqlExecutionError,
    SqlLimitError,
    SqlParameterError,
    SqlSemanticError,
    SqlSyntaxError,
    UnsupportedSqlError,
)
from shardwise.model.config import Keyspace, Scheme
from shardwise.sql import Coordinator, LocalShards, MergeLimits

KEYSPACES = [
    Keyspace("default", Scheme(kind="hash", shards=4)),
    Keyspace("ranges", Scheme(kind="range", shards=2, split_points=("m",))),
]
SCHEMA = (
    "CREATE TABLE t (id INTEGER PRIMARY KEY, g INTEGER, h TEXT NOT NULL DEFAULT 'h') "
    "WITH (distribution = 'id')"
)


@pytest.fixture
def local() -> Iterator[LocalShards]:
    shards = LocalShards(KEYSPACES)
    yield shards
    shards.close()


async def make(local: LocalShards) -> Coordinator:
    """A coordinator over ``t`` with four rows (async fixtures need a plugin; this is not one)."""
    coordinator = Coordinator(local, local)
    await coordinator.execute(SCHEMA)
    await coordinator.execute("INSERT INTO t (id, g) VALUES (1, 1), (2, 2), (3, 3), (4, 4)")
    return coordinator


async def count(coordinator: Coordinator) -> int:
    value = (await coordinator.execute("SELECT count(*) FROM t")).rows[0][0]
    assert isinstance(value, int)
    return value


@pytest.mark.parametrize(
    ("sql", "line", "column"),
    [
        ("SELECT a FROM", 1, 13),
        ("SELECT id,\n  g FROM t WHERE g = = 1", 2, 22),
        ("SELECT 1,\n  'never closed", 2, 3),
        ("SELECT /* open comment", 1, 8),
        ("EXPLAIN SELECT FROM WHERE", 1, 1),
        ("", 1, 1),
    ],
)
async def test_syntax_errors_report_line_and_column(
    local: LocalShards, sql: str, line: int, column: int
) -> None:
    coordinator = await make(local)
    with pytest.raises(SqlSyntaxError) as info:
        await coordinator.execute(sql)
    assert info.value.line == line
    if sql.startswith("EXPLAIN"):
        assert info.value.column > len("EXPLAIN ")
    else:
        assert info.value.column == column
    assert f"line {line}" in str(info.value)
    assert isinstance(info.value, ShardwiseError)


@pytest.mark.parametrize(
    ("sql", "construct"),
    [
        ("SELECT * FROM t NATURAL JOIN t AS u", "NATURAL JOIN"),
        ("SELECT * FROM t WHERE g = ANY (SELECT g FROM t)", "ANY"),
        ("SELECT sum(u.g) OVER () FROM t JOIN t AS u ON t.id = u.id", "window function"),
        ("SELECT * FROM t JOIN t AS u ON t.id = u.id UNION SELECT * FROM t", "UNION"),
        ("SELECT id FROM t UNION SELECT g FROM t", "UNION"),
        ("WITH RECURSIVE c AS (SELECT 1) SELECT * FROM c", "WITH RECURSIVE"),
        ("SELECT sum(g) OVER () FROM t", "window function"),
        ("SELECT count(*) FILTER (WHERE g > 1) FROM t", "FILTER"),
        ("SELECT h COLLATE nocase FROM t", "COLLATE"),
        ("SELECT DISTINCT ON (g) g FROM t", "DISTINCT ON"),
        ("SELECT g, group_concat(h) FROM t GROUP BY g", "GROUP_CONCAT"),
        ("SELECT median(g) FROM t", "the aggregate"),
        ("SELECT * FROM t FOR UPDATE", "FOR UPDATE"),
        ("INSERT INTO t (id) VALUES (9) ON CONFLICT DO NOTHING", "ON CONFLICT"),
        ("DELETE FROM t WHERE id = 1 RETURNING *", "RETURNING"),
        ("UPDATE t SET g = 1 FROM t AS u WHERE u.id = t.id", "UPDATE ... FROM"),
        ("TRUNCATE t", "TRUNCATE"),
        ("BEGIN", "BEGIN"),
        ("SELECT 1; SELECT 2", "more than one statement"),
        ("ALTER TABLE t DROP COLUMN g", "ALTER TABLE action"),
        ("CREATE TABLE x (id INT) DISTRIBUTED BY (id)", "CREATE TABLE"),
        ("SELECT g FROM t GROUP BY ROLLUP (g)", "ROLLUP"),
    ],
)
async def test_unsupported_constructs_name_themselves(
    local: LocalShards, sql: str, construct: str
) -> None:
    coordinator = await make(local)
    with pytest.raises(UnsupportedSqlError) as info:
        await coordinator.execute(sql)
    assert construct.lower() in str(info.value).lower()


@pytest.mark.parametrize(
    ("sql", "error", "words"),
    [
        ("SELECT nope FROM t", SqlCatalogError, "nope"),
        ("SELECT * FROM missing", SqlCatalogError, "missing"),
        ("SELECT u.id FROM t", SqlCatalogError, "no table 'u'"),
        ("SELECT g, count(*) FROM t", SqlSemanticError, "GROUP BY"),
        ("SELECT id FROM t WHERE count(*) > 1", SqlSemanticError, "WHERE"),
        ("SELECT sum(count(*)) FROM t", SqlSemanticError, "nested"),
        ("SELECT DISTINCT g FROM t ORDER BY h", SqlSemanticError, "DISTINCT"),
        ("SELECT id FROM t ORDER BY 3", SqlSemanticError, "position 3"),
        ("SELECT id FROM t LIMIT -1", SqlSemanticError, "LIMIT"),
        ("UPDATE t SET id = 5 WHERE id = 1", DistributionColumnUpdateError, "distribution"),
        ("INSERT INTO t (g) VALUES (1)", DistributionValueError, "distribution column"),
        ("INSERT INTO t (id) VALUES (NULL)", DistributionValueError, "NULL"),
        ("INSERT INTO t (id) VALUES (1.5)", DistributionValueError, "1.5"),
        ("INSERT INTO t (id) VALUES ('abc')", DistributionValueError, "abc"),
        ("INSERT INTO t (id) VALUES (1 + 1)", DistributionValueError, "literal"),
        ("UPDATE t SET g = random()", NondeterministicSqlError, "random()"),
        ("DELETE FROM t WHERE g < random()", NondeterministicSqlError, "random()"),
        ("SELECT changes() FROM t", NondeterministicSqlError, "changes"),
        ("CREATE TABLE t (id INT) WITH (distribution = 'id')", SqlCatalogError, "exists"),
        ("CREATE TABLE n (id INT)", SqlCatalogError, "distribution"),
        ("CREATE TABLE n (id REAL) WITH (distribution = 'id')", SqlCatalogError, "REAL"),
        (
            "CREATE TABLE n (id INT, a REAL UNIQUE) WITH (distribution = 'id')",
            SqlCatalogError,
            "INTEGER, TEXT or BLOB",
        ),
        ("CREATE INDEX i ON t (g) INCLUDE (h)", SqlCatalogError, "INCLUDE is for global"),
        ("CREATE UNIQUE INDEX i ON t (g) WITH (scope = 'local')", SqlCatalogError, "global"),
        ("CREATE INDEX i ON t (g) WITH (scope = 'everywhere')", SqlCatalogError, "'global'"),
        ("CREATE INDEX i ON t (g) WITH (fill = 1)", UnsupportedSqlError, "scope"),
        ("CREATE INDEX i ON t (g, g) WITH (scope = 'global')", SqlCatalogError, "twice"),
        ("DROP INDEX missing", SqlCatalogError, "no index"),
        (
            "CREATE TABLE n (k INT) WITH (distribution = 'k', keyspace = 'ranges')",
            SqlCatalogError,
            "TEXT",
        ),
        (
            "CREATE TABLE n (k INT DEFAULT now()) WITH (distribution = 'k')",
            NondeterministicSqlError,
            "default",
        ),
        ("CREATE TABLE n (_sw_x INT) WITH (distribution = '_sw_x')", SqlCatalogError, "reserved"),
        ("ALTER TABLE t ADD COLUMN z INT NOT NULL", SqlCatalogError, "DEFAULT"),
        ("DROP TABLE missing", SqlCatalogError, "missing"),
    ],
)
async def test_semantic_and_catalog_errors(
    local: LocalShards, sql: str, error: type[SqlError], words: str
) -> None:
    coordinator = await make(local)
    with pytest.raises(error) as info:
        await coordinator.execute(sql)
    assert words.lower() in str(info.value).lower()


@pytest.mark.parametrize(
    ("sql", "params", "words"),
    [
        ("SELECT * FROM t WHERE id = $1", [], "takes 1"),
        ("SELECT * FROM t WHERE id = $1", [1, 2], "takes 1"),
        ("SELECT * FROM t WHERE id = ?", {"a": 1}, "sequence"),
        ("SELECT * FROM t WHERE id = :a", [1], "mapping"),
        ("SELECT * FROM t WHERE id = :a", {"b": 1}, ":a"),
        ("SELECT * FROM t WHERE id = $1", [object()], "object"),
        ("SELECT * FROM t WHERE id = $1", [1 << 70], "64-bit"),
        ("SELECT * FROM t WHERE id = ? AND g = $1", [1], "either"),
        ("SELECT * FROM t", [1], "no parameters"),
    ],
)
async def test_parameter_errors(
    local: LocalShards, sql: str, params: list[object] | dict[str, object], words: str
) -> None:
    coordinator = await make(local)
    with pytest.raises(SqlParameterError) as info:
        await coordinator.execute(sql, params)
    assert words in str(info.value)


async def test_parameters_are_never_spliced_into_sql(local: LocalShards) -> None:
    coordinator = await make(local)
    evil = "1; DROP TABLE t; --"
    result = await coordinator.execute("SELECT count(*) FROM t WHERE h = ? OR g = ?", [evil, 2])
    assert result.rows == [(1,)]
    explained = await coordinator.execute("EXPLAIN UPDATE t SET h = $1 WHERE id = $2", [evil, 1])
    text = "\n".join(str(r[0]) for r in explained.rows)
    assert "DROP TABLE t; --'" in text  # shown among the bound values...
    assert 'SET "h" = :p1' in text  # ...never in the SQL text
    assert await count(coordinator) == 4


async def test_a_bad_row_applies_nothing(local: LocalShards) -> None:
    coordinator = await make(local)
    with pytest.raises(DistributionValueError):
        await coordinator.execute("INSERT INTO t (id) VALUES (10), (11), (NULL), (12)")
    assert await count(coordinator) == 4


async def test_a_failing_shard_batch_is_rolled_back(local: LocalShards) -> None:
    coordinator = await make(local)
    # Both rows go to id 1's shard: the duplicate key fails the batch, which applies whole
    # or not at all.
    with pytest.raises(SqlExecutionError) as info:
        await coordinator.execute("INSERT INTO t (id) VALUES (1), (1)")
    assert "UNIQUE" in str(info.value)
    assert await count(coordinator) == 4


async def test_coordinator_bounds_are_typed_errors(local: LocalShards) -> None:
    coordinator = Coordinator(local, local, limits=MergeLimits(max_rows=3))
    await coordinator.execute(SCHEMA)
    await coordinator.execute("INSERT INTO t (id) VALUES (1), (2), (3), (4), (5), (6)")
    with pytest.raises(SqlLimitError) as info:
        await coordinator.execute("SELECT * FROM t")
    assert info.value.limit == "max_rows"
    # An answer that fits is fine: top-k ships at most k rows per shard.
    assert len((await coordinator.execute("SELECT id FROM t ORDER BY id LIMIT 1")).rows) == 1
    small = Coordinator(local, local, limits=MergeLimits(max_bytes=40))
    await small.execute("UPDATE t SET h = 'a long enough text value'")
    with pytest.raises(SqlLimitError) as bytes_info:
        await small.execute("SELECT h FROM t")
    assert bytes_info.value.limit == "max_bytes"


async def test_sum_overflow_is_an_error_as_in_sqlite(local: LocalShards) -> None:
    coordinator = await make(local)
    big = (1 << 63) - 1
    await coordinator.execute("UPDATE t SET g = $1", [big])
    with pytest.raises(SqlExecutionError) as info:
        await coordinator.execute("SELECT sum(g) FROM t")
    assert "overflow" in str(info.value)
