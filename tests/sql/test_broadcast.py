"""Broadcast joins at their bounds: what a request may carry decides the plan, counted
as the request carries it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from shardwise.model.config import Keyspace, Scheme
from shardwise.sql import Coordinator, LocalShards, broadcast
from shardwise.sql.shipped import MAX_SHIPPED_COLUMNS, ShippedTable, shipped_size


@pytest.fixture
def local() -> Iterator[LocalShards]:
    shards = LocalShards([Keyspace("default", Scheme("hash", 8))])
    yield shards
    shards.close()


async def _plan(sql: Coordinator, statement: str) -> str:
    return str((await sql.execute(f"EXPLAIN {statement}")).rows[0][0])


async def test_a_table_wider_than_a_shipment_is_not_shipped(local: LocalShards) -> None:
    """(The narrow table is shipped instead: the wide one anchors the join.)"""
    sql = Coordinator(local, local)
    width = MAX_SHIPPED_COLUMNS + 44
    columns = ", ".join(f"c{i} INTEGER" for i in range(width))
    await sql.execute(f"CREATE TABLE wide (id INTEGER, {columns}) WITH (distribution = 'id')")
    await sql.execute("CREATE TABLE a (id INTEGER, x INTEGER) WITH (distribution = 'id')")
    await sql.execute(f"INSERT INTO wide VALUES (1, {', '.join(['7'] * width)})")
    await sql.execute("INSERT INTO a VALUES (1, 7), (2, 8)")
    everything = "SELECT * FROM a JOIN wide ON a.x = wide.c0"
    plan = [str(r[0]) for r in (await sql.execute(f"EXPLAIN {everything}")).rows]
    assert plan[:2] == [
        "Distributed broadcast read of a, wide",
        "  scan 1: a AS a (id, x) as _sw_t0",
    ]
    rows = (await sql.execute(everything)).rows
    assert len(rows) == 1 and len(rows[0]) == 2 + 1 + width
    kept = "SELECT * FROM a LEFT JOIN wide ON a.x = wide.c0"  # (only wide can be shipped)
    assert not (await _plan(sql, kept)).startswith("Distributed broadcast read")
    assert sorted(int(str(r[0])) for r in (await sql.execute(kept)).rows) == [1, 2]
    narrow = "SELECT a.id, wide.c5 FROM a JOIN wide ON a.x = wide.c0"  # (2 columns shipped)
    assert (await _plan(sql, narrow)).startswith("Distributed broadcast read")
    assert (await sql.execute(narrow)).rows == [(1, 7)]


def test_bytes_are_counted_as_they_travel() -> None:
    """Text by its UTF-8 bytes, and a header's worst case per value: 10,000 rows of
    emoji that look like 4 MB by characters are 16 MB on the wire."""
    emoji = "\N{GRINNING FACE}" * 10
    table = ShippedTable("_sw_t0", (("v", "TEXT"), ("n", "INTEGER")), [(emoji, 1), (b"ab", None)])
    assert shipped_size((table,)) == (2, 4, 4 * 9 + 40 + 2)


async def test_shipped_text_past_the_byte_bound_falls_back(
    local: LocalShards, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(broadcast, "BROADCAST_MAX_BYTES", 1_000)
    sql = Coordinator(local, local)
    await sql.execute("CREATE TABLE a (id INTEGER, x INTEGER) WITH (distribution = 'id')")
    await sql.execute("CREATE TABLE b (id INTEGER, label TEXT) WITH (distribution = 'id')")
    await sql.execute("INSERT INTO a VALUES (1, 1), (2, 2)")
    label = "\N{GRINNING FACE}" * 60  # 60 characters, 240 bytes
    for i in range(4):
        await sql.execute("INSERT INTO b VALUES (?, ?)", [i, label])
    join = "SELECT a.id, b.label FROM a JOIN b ON b.id = a.x"
    analysis = [str(r[0]) for r in (await sql.execute(f"EXPLAIN ANALYZE {join}")).rows]
    assert analysis[0].startswith("Distributed broadcast read")
    assert any("4 rows to ship are over the broadcast bounds" in line for line in analysis)
    assert sorted((await sql.execute(join)).rows) == [(1, label), (2, label)]
