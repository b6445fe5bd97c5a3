"""A shard holds SQL writes to the function allow-list, before proposing and as it
applies: functions that differ between machines, date functions reading the clock or the
time zone (from the statement or from a row), a rowid at its maximum."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from shardwise.model.sql import SqlStatement
from shardwise.shardserver.shardfile import MAX_SQLITE_VALUE_BYTES
from shardwise.shardserver.sqlshard import plain_inserts
from shardwise.testing.hostile_sql import TABLE
from shardwise.testing.shard_replica import SHARD as S0
from shardwise.testing.shard_replica import ShardReplica


class Shard(ShardReplica):
    """A replica whose catalog holds the hostile generator's table ``h``."""

    def __init__(self, directory: Path) -> None:
        super().__init__(directory, {TABLE.name: TABLE})

    def rows(self, sql: str = 'SELECT id, t FROM "sql_h" ORDER BY id') -> list[tuple[object, ...]]:
        return super().rows(sql)


@pytest.fixture
def shard(tmp_path: Path) -> Shard:
    return Shard(tmp_path)


@pytest.mark.parametrize(
    "call",
    ["random()", "randomblob(2)", "sin(1)", "pow(2, 0.5)", "sqlite_version()", "changes()",
     "last_insert_rowid()", "CURRENT_TIMESTAMP", "current_date", "var_samp(1)"],
)  # fmt: skip
def test_functions_off_the_list_are_refused_before_the_log_and_at_apply(
    shard: Shard, call: str
) -> None:
    sql = f'INSERT INTO "sql_h" (id, t) VALUES (1, {call})'
    assert "not allowed in a write" in shard.sm.refused_sql(S0, (SqlStatement(sql),))
    result = shard.write(sql)
    assert result.code == "nondeterministic" and "not allowed" in result.error
    assert shard.rows() == []


@pytest.mark.parametrize(
    "call",
    ["date('now')", "date()", "strftime('%H:%M:%f')", "time('NOW')", "julianday(' now ')",
     "datetime('2020-01-01', 'localtime')", "unixepoch('2020-01-01', 'utc')", "date(x'6e6f77')"],
)  # fmt: skip
def test_date_functions_reading_the_clock_or_the_zone_are_refused(shard: Shard, call: str) -> None:
    assert shard.sm.refused_sql(S0, (SqlStatement(f"SELECT {call}"),)) == ""  # (named: fine)
    result = shard.write(f'INSERT INTO "sql_h" (id, t) VALUES (1, {call})')
    assert result.code == "nondeterministic", result
    assert shard.rows() == []


def test_a_date_function_of_a_row_holding_now_is_refused(shard: Shard) -> None:
    assert not shard.write(
        "INSERT INTO \"sql_h\" (id, t) VALUES (1, 'now'), (2, '2020-02-28')"
    ).error
    result = shard.write("UPDATE \"sql_h\" SET t = date(t, '+1 day')")
    assert result.code == "nondeterministic" and "'now'" in result.error
    assert shard.rows() == [(1, "now"), (2, "2020-02-28")]  # nothing changed
    assert not shard.write("UPDATE \"sql_h\" SET t = date(t, '+1 day') WHERE id = 2").error
    assert shard.rows()[1] == (2, "2020-02-29")


def test_deterministic_functions_are_allowed(shard: Shard) -> None:
    sql = (
        "INSERT INTO \"sql_h\" (id, t, i, r) VALUES (1, json_array(abs(-2), printf('%05.1f', 2.5), "
        "date('2024-02-28', '+1 day'), strftime('%j', '2024-12-31'), hex(x'00ff')), "
        "coalesce(NULL, length('abc')), round(sqrt(2.0), 3))"
    )
    assert shard.sm.refused_sql(S0, (SqlStatement(sql),)) == ""
    result = shard.write(sql)
    assert not result.error and result.rowcount == 1
    store = shard.sm.shards[S0].store
    assert store is not None
    assert store.read_sql('SELECT t, i, r FROM "sql_h"', {}, 1) == [
        ('[2,"002.5","2024-02-29","366","00FF"]', 3, 1.414)
    ]


def test_a_rowid_at_its_largest_value_is_refused(shard: Shard) -> None:
    """Past it SQLite chooses new rowids at random: the replicas would differ."""
    result = shard.write(f'INSERT INTO "sql_h" (rowid, id) VALUES ({2**63 - 1}, 1)')
    assert result.code == "nondeterministic" and "rowid" in result.error
    assert not shard.write('INSERT INTO "sql_h" (rowid, id) VALUES (5, 1)').error
    result = shard.write(f'UPDATE "sql_h" SET rowid = {2**63 - 1}')
    assert result.code == "nondeterministic"


def test_entries_logged_before_the_checks_replay_as_they_ran(shard: Shard) -> None:
    """An entry of an older version (no work limit) is applied as it was then, so a log
    written before the upgrade replays to the state the other replicas hold."""
    result = shard.write('INSERT INTO "sql_h" (id, i) VALUES (1, abs(sin(0)))', steps=0)
    assert not result.error and result.rowcount == 1


@pytest.mark.parametrize(
    "value",
    [f"zeroblob({MAX_SQLITE_VALUE_BYTES + 1})",
     f"hex(zeroblob({MAX_SQLITE_VALUE_BYTES // 2 + 1}))"],
)  # fmt: skip
def test_a_value_past_the_shard_s_length_limit_fails_the_write_alike(
    shard: Shard, value: str
) -> None:
    """SQLite's own cap is 1 GB: one write could have taken a replica's memory and disk."""
    result = shard.write(f'INSERT INTO "sql_h" (id, t) VALUES (1, {value})')
    assert result.error and "too big" in result.error, result
    assert shard.rows() == []
    assert not shard.write('INSERT INTO "sql_h" (id, t) VALUES (2, zeroblob(1000))').error
    padded = f"printf('%.*c', {MAX_SQLITE_VALUE_BYTES + 1}, 'x')"  # SQLite gives NULL instead
    assert not shard.write(f'INSERT INTO "sql_h" (id, t) VALUES (3, {padded})').error
    assert shard.rows()[-1] == (3, None)


def test_the_leader_times_a_write_before_proposing_it(shard: Shard) -> None:
    """A step can hash megabytes, so few steps can take seconds: the leader tries the
    batch on its own data, rolls it back, and refuses it past its time limit. What the
    trial wrote is gone either way."""
    values = ",".join(f"({i})" for i in range(1, 41))
    slow = SqlStatement(
        'INSERT INTO "sql_h" (id, i) SELECT 1, (SELECT sum(length(hex(zeroblob('
        "2000000 + a.column1 + b.column1)))) "
        f"FROM (VALUES {values}) a, (VALUES {values}) b)"
    )
    started = time.monotonic()
    why = shard.sm.time_trial(S0, (slow,), 0.25)
    assert "more than 0.25 s" in why
    assert time.monotonic() - started < 2.0  # (the whole statement takes several seconds)
    quick = SqlStatement("INSERT INTO \"sql_h\" (id, t) VALUES (7, 'x')")
    assert shard.sm.time_trial(S0, (quick,), 0.25) == ""
    assert shard.rows() == [], "a trial leaves nothing behind"
    assert not shard.write(quick.sql).error
    assert shard.rows() == [(7, "x")]


@pytest.mark.parametrize(
    ("sql", "plain"),
    [
        ('INSERT INTO "sql_h" (id, t) VALUES (:a, :b)', True),
        ("INSERT INTO \"sql_h\" (id, t) VALUES (1, 'x'), (2, CAST(3 AS TEXT))", True),
        ("INSERT INTO \"sql_h\" (id, t) VALUES (1, 'x' || 'y')", False),
        ('INSERT INTO "sql_h" (id, t) VALUES (1, hex(zeroblob(10)))', False),
        ('INSERT INTO "sql_h" (id, t) SELECT id, t FROM "sql_h"', False),
        ('INSERT INTO "sql_h" (id, t) VALUES (1, (SELECT max(t) FROM "sql_h"))', False),
        ("UPDATE \"sql_h\" SET t = 'x'", False),
        ('DELETE FROM "sql_h"', False),
    ],
)
def test_only_plain_inserts_skip_the_leader_s_trial(shard: Shard, sql: str, plain: bool) -> None:
    """A batch that only inserts the values it carries costs what its size allows; any
    function, read, concatenation, update or delete is timed."""
    store = shard.sm.shards[S0].store
    assert store is not None
    conn = store._sql_connection()
    params = {"a": 1, "b": "x"} if ":a" in sql else {}
    assert plain_inserts(conn, [SqlStatement(sql, params)]) is plain
