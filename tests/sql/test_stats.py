"""Table statistics: ``ANALYZE`` counts rows into the controller's configuration, and
``EXPLAIN`` shows the rows each stage expects to read (``shardwise.sql.stats``)."""

from __future__ import annotations

from collections.abc import Iterator

import msgspec
import pytest

from shardwise.controller.access import change_denied
from shardwise.errors import SqlCatalogError, SqlSyntaxError, UnsupportedSqlError
from shardwise.model.access import AccessCatalog, Role, User, parse_grant
from shardwise.model.config import (
    Column,
    Keyspace,
    Scheme,
    SetStats,
    Table,
    initial_configuration,
)
from shardwise.model.scram import make_verifier
from shardwise.sql import Coordinator, LocalShards

SHARDS = 8


@pytest.fixture
def local() -> Iterator[LocalShards]:
    shards = LocalShards([Keyspace("default", Scheme(kind="hash", shards=SHARDS))])
    yield shards
    shards.close()


async def loaded(local: LocalShards) -> Coordinator:
    coordinator = Coordinator(local, local)
    for ddl in (
        "CREATE TABLE d (k INTEGER, r INTEGER) WITH (distribution = 'k')",
        "CREATE TABLE r (id INTEGER PRIMARY KEY, name TEXT) WITH (reference = true)",
        "CREATE TABLE e (k INTEGER) WITH (distribution = 'k')",
        "INSERT INTO r VALUES (0, 'a'), (1, 'b'), (2, 'c')",
        "INSERT INTO d VALUES " + ", ".join(f"({i}, {i % 4})" for i in range(160)),
    ):
        await coordinator.execute(ddl)
    return coordinator


async def explain(coordinator: Coordinator, sql: str) -> str:
    return "\n".join(str(r[0]) for r in (await coordinator.execute(f"EXPLAIN {sql}")).rows)


async def test_analyze_counts_every_table_or_those_named(local: LocalShards) -> None:
    coordinator = await loaded(local)
    assert not (await local.catalog()).stats
    named = await coordinator.execute("ANALYZE r, d, r")
    assert named.columns == ("table", "rows") and named.rows == [("r", 3), ("d", 160)]
    assert {n: s.rows for n, s in (await local.catalog()).stats.items()} == {"r": 3, "d": 160}
    await coordinator.execute("DELETE FROM d WHERE k >= 100")
    every = await coordinator.execute("ANALYZE")
    assert every.rows == [("d", 100), ("e", 0), ("r", 3)]
    await coordinator.execute("DROP TABLE d")  # its count goes with it
    assert set((await local.catalog()).stats) == {"e", "r"}


async def test_explain_shows_the_rows_each_stage_expects_to_read(local: LocalShards) -> None:
    coordinator = await loaded(local)
    assert "d not analyzed (ANALYZE counts rows)" in await explain(
        coordinator, "SELECT * FROM d WHERE k = 3"
    )
    await coordinator.execute("ANALYZE")
    # One shard of 8 holds about an eighth of the 160 rows.
    assert "expected rows read: d ~20\n" in await explain(
        coordinator, "SELECT * FROM d WHERE k = 3"
    )
    assert "expected rows read: d ~160\n" in await explain(coordinator, "SELECT count(*) FROM d")
    # A co-located join reads every shard's copy of the reference table.
    joined = await explain(coordinator, "SELECT d.k, r.name FROM d JOIN r ON r.id = d.r")
    assert f"expected rows read: d ~160, r ~{3 * SHARDS}\n" in joined
    # A coordinator join: each scan, and what reaches the coordinator at most.
    kept = await explain(coordinator, "SELECT r.name, d.k FROM r LEFT JOIN d ON d.r = r.id")
    assert "expected rows read: r ~3\n" in kept and "expected rows read: d ~160\n" in kept
    assert "at the coordinator, over the scans (at most ~163 rows sent):" in kept


@pytest.mark.parametrize(
    ("sql", "error", "message"),
    [
        ("ANALYZE nope", SqlCatalogError, "there is no table 'nope'"),
        ("ANALYZE VERBOSE d", UnsupportedSqlError, "ANALYZE with OPTIONS"),
        ("ANALYZE (SELECT 1)", SqlSyntaxError, "Expected table name"),
    ],
)
async def test_bad_analyze_is_refused(
    local: LocalShards, sql: str, error: type[Exception], message: str
) -> None:
    coordinator = await loaded(local)
    with pytest.raises(error, match=message):
        await coordinator.execute(sql)
    assert not (await local.catalog()).stats


def test_analyze_needs_write_on_the_tables_keyspace() -> None:
    catalog = AccessCatalog(
        1,
        {
            "reader": User("reader", make_verifier("pw", salt=b"s" * 16), ("r",)),
            "writer": User("writer", make_verifier("pw", salt=b"s" * 16), ("w",)),
        },
        {
            "r": Role("r", (parse_grant("read:default"),)),
            "w": Role("w", (parse_grant("write:default"),)),
        },
    )
    table = Table("t", "default", "id", (Column("id", "INTEGER"),))
    config = msgspec.structs.replace(initial_configuration(), tables={"t": table})
    assert change_denied(catalog, "writer", SetStats({"t": 1}), config) == ""
    assert "may not ANALYZE" in change_denied(catalog, "reader", SetStats({"t": 1}), config)
