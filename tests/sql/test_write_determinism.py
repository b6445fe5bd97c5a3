"""The coordinator makes a write deterministic before it leaves (the time read once, on
the coordinator) or refuses it with a typed error; the shards check again."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from shardwise.errors import NondeterministicSqlError
from shardwise.model.config import Keyspace, Scheme
from shardwise.sql import Coordinator, LocalShards

INSTANT = datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)


@pytest.fixture
def local() -> Iterator[LocalShards]:
    shards = LocalShards([Keyspace("default", Scheme(shards=4))])
    yield shards
    shards.close()


async def coordinator(local: LocalShards) -> Coordinator:
    sql = Coordinator(local, local, wall_clock=lambda: INSTANT)
    await sql.execute(
        "CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT) WITH (distribution = 'id')"
    )
    await sql.execute("INSERT INTO users VALUES (21, 'a'), (22, 'b')")
    return sql


@pytest.mark.parametrize(
    ("call", "want"),
    [
        ("strftime('%H:%M:%f')", "07:08:09.123"),
        ("date()", "2024-05-06"),
        ("time()", "07:08:09"),
        ("julianday()", "2460436.79732781"),  # (a TEXT column: as text)
        ("unixepoch()", "1714979289"),
        ("date('now', '+1 day')", "2024-05-07"),
        ("CURRENT_TIMESTAMP", "2024-05-06 07:08:09"),
    ],
)
async def test_date_functions_without_a_time_value_get_the_coordinators_instant(
    local: LocalShards, call: str, want: object
) -> None:
    sql = await coordinator(local)
    await sql.execute(f"UPDATE users SET name = {call} WHERE id = 21")
    await sql.execute(f"INSERT INTO users VALUES (23, {call})")
    rows = (await sql.execute("SELECT name FROM users WHERE id IN (21, 23)")).rows
    assert rows == [(want,), (want,)]


@pytest.mark.parametrize(
    "expression",
    ["sin(2)", "sqlite_version()", "exp(1)", "date('2020-01-01', 'localtime')",
     "datetime('now', 'utc')"],
)  # fmt: skip
async def test_a_write_the_replicas_could_disagree_on_is_refused_before_it_is_sent(
    local: LocalShards, expression: str
) -> None:
    sql = await coordinator(local)
    with pytest.raises(NondeterministicSqlError):
        await sql.execute(f"UPDATE users SET name = {expression} WHERE id = 21")
    with pytest.raises(NondeterministicSqlError):
        await sql.execute(f"INSERT INTO users VALUES (30, {expression})")
    assert (await sql.execute("SELECT name FROM users ORDER BY id")).rows == [("a",), ("b",)]


async def test_reads_are_not_restricted(local: LocalShards) -> None:
    sql = await coordinator(local)
    rows = (await sql.execute("SELECT sqlite_version() IS NOT NULL, abs(sin(0)) FROM users")).rows
    assert rows == [(1, 0.0), (1, 0.0)]


async def test_a_repeated_refused_write_is_refused_every_time(
    local: LocalShards,
) -> None:
    """The function check is kept by table and text (``coordinator._function_refusal``):
    a kept answer must refuse as the first did, whatever the values, and a write the
    check allows must stay allowed."""
    sql = await coordinator(local)
    for n in range(3):
        with pytest.raises(NondeterministicSqlError, match="sin"):
            await sql.execute("UPDATE users SET name = sin(?) WHERE id = ?", (n, 21))
    for n in range(3):
        await sql.execute("UPDATE users SET name = abs(?) WHERE id = ?", (-n, 22))
    assert (await sql.execute("SELECT name FROM users WHERE id = 22")).rows == [("2",)]
