"""A SQLite step's cost grows with the values it handles: a write of a few thousand steps
over 16 MB values held every replica's event loop for seconds, and a read ran far past
its time limit (found by a hostile review). A shard's values are now capped
(``MAX_SQLITE_VALUE_BYTES``), reads look at their clock every ``PROGRESS_STEPS``, and the
leader times each write before it is logged (``test_write_functions``)."""

from __future__ import annotations

import contextlib
import sqlite3
import time
from pathlib import Path

from shardwise.errors import SqlLimitError
from shardwise.model.sql import SqlStatement
from shardwise.shardserver.commands import SqlWrite, decode_result, encode
from shardwise.shardserver.protocol import schema_digest
from shardwise.shardserver.sqlshard import MAX_WRITE_STEPS, run_read
from shardwise.testing.hostile_sql import TABLE
from shardwise.testing.shard_replica import SHARD as S0
from shardwise.testing.shard_replica import ShardReplica

ROWS = 16  # 16 x 16 = 256 big hex() calls: ~2.5 s here; 200 gives ~6 minutes


def _costly() -> str:
    values = ",".join(f"({i})" for i in range(1, ROWS + 1))
    return (
        'INSERT INTO "sql_h" (id, i) SELECT 1, (SELECT sum(length(hex(zeroblob('
        "8000000 + a.column1 + b.column1)))) "
        f"FROM (VALUES {values}) a, (VALUES {values}) b)"
    )


def test_a_write_under_the_step_limit_cannot_run_for_seconds(tmp_path: Path) -> None:
    replica = ShardReplica(tmp_path, {TABLE.name: TABLE})
    statement = SqlStatement(_costly(), {})
    assert replica.sm.refused_sql(S0, (statement,)) == ""  # passes the leader's check
    # Even with a step limit 400 times below the default, the write is accepted...
    steps = MAX_WRITE_STEPS // 400
    digest = schema_digest(replica.config.tables, "default")
    command = SqlWrite(S0, "w", 1, 1, digest, (statement,), steps)
    started = time.monotonic()
    result = decode_result(replica.sm.apply(2, encode(command))).sql
    elapsed = time.monotonic() - started
    replica.sm.end_batch()
    assert result is not None
    # ...and the docs promise a write is stopped within 0.2-0.6 s.
    assert result.code == "statement_too_costly" or elapsed < 1.0, (
        f"a write of < {steps} steps held the apply loop {elapsed:.1f} s: {result}"
    )


def test_a_read_stops_at_its_time_limit(tmp_path: Path) -> None:
    """Reads check their clock only every PROGRESS_STEPS (20,000) VM steps, so a read of a
    few hundred steps runs past MAX_SQL_READ_S on the server's event loop. It needs no
    table at all, so any logged-in user (no grant) may send it (see test_sql_needs_a_grant)."""
    conn = sqlite3.connect(":memory:")
    sql = _costly().split("SELECT 1, ", 1)[1]  # the SELECT alone: no table
    started = time.monotonic()
    with contextlib.suppress(SqlLimitError):
        run_read(conn, "SELECT " + sql, {}, 10, shard="s", max_seconds=0.5)
    elapsed = time.monotonic() - started
    assert elapsed < 1.5, f"a read limited to 0.5 s held the loop {elapsed:.1f} s"
