"""Entries that cannot be applied become the same error result on every replica, never a
halt; errors of the machine still halt; a SQL write past its work limit is stopped at the
same step everywhere.

Commands are planted in the log directly (encoded by hand, past the checks a server makes
before proposing), and three replicas apply the same log with different batch boundaries.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from shardwise.errors import ShardStoreError, SqlWriteTooCostlyError
from shardwise.model.config import (
    Column,
    Configuration,
    IndexDef,
    ShardId,
    Table,
    initial_configuration,
)
from shardwise.model.kv import MAX_KEY_BYTES, Get, Put
from shardwise.model.sql import SqlStatement
from shardwise.shardserver import sqlshard
from shardwise.shardserver.commands import (
    ClientBatch,
    ClientOp,
    Command,
    GroupResult,
    Reconfigure,
    SqlWrite,
    decode_result,
    encode,
)
from shardwise.shardserver.protocol import schema_digest
from shardwise.shardserver.statemachine import ShardGroupStateMachine
from shardwise.storage.space import DiskFullError

S0 = ShardId("default", 0)
T = Table(
    "t",
    "default",
    "id",
    (Column("id", "INTEGER NOT NULL"), Column("v", "TEXT"), Column("n", "INTEGER")),
    (IndexDef("pkey", ("id",), unique=True),),
)
STEPS = 200_000
"""A small work limit, so the costly write is stopped within milliseconds."""
ROWS = 60
CROSS_JOIN = 'UPDATE "sql_t" SET n = (SELECT count(*) FROM "sql_t" a, "sql_t" b, "sql_t" c)'


def configuration() -> Configuration:
    base = initial_configuration()
    return Configuration(
        num=1,
        groups={1: ("127.0.0.1:1",)},
        keyspaces=base.keyspaces,
        owners={"default": (1,) * len(base.owners["default"])},
        tables={"t": T},
    )


def sql(client: str, seq: int, *statements: str | SqlStatement, steps: int = STEPS) -> SqlWrite:
    config = configuration()
    planned = tuple(s if isinstance(s, SqlStatement) else SqlStatement(s) for s in statements)
    return SqlWrite(S0, client, seq, 1, schema_digest(config.tables, "default"), planned, steps)


def the_log() -> list[bytes]:
    """A log with entries that fail to apply, between ones that apply."""
    rows = ", ".join(f"({i}, 'r{i}', {i})" for i in range(ROWS))
    commands: list[Command | bytes] = [
        Reconfigure(configuration()),
        sql("w", 1, f'INSERT INTO "sql_t" (id, v, n) VALUES {rows}'),
        b"\x93garbage",  # no command at all
        ClientOp(S0, "k", 1, Put("x" * (MAX_KEY_BYTES + 1), "v")),  # over the key limit
        ClientBatch(
            (
                ClientOp(S0, "k", 2, Put("fine", "1")),
                ClientOp(S0, "k", 3, Put("y" * (MAX_KEY_BYTES + 1), "v")),
            )
        ),
        sql("w", 2, SqlStatement('INSERT INTO "sql_t" (id) VALUES (:id)', {"id": 2**63})),
        sql("w", 3, "INSERT INTO \"sql_t\" (id, v) VALUES (1, 'again')"),  # UNIQUE
        sql("w", 4, "UPDATE \"sql_t\" SET v = 'late'", CROSS_JOIN),  # over the work limit
        ClientOp(S0, "k", 4, Put("after", "2")),
        sql("w", 4, "UPDATE \"sql_t\" SET v = 'late'", CROSS_JOIN),  # its retry
        sql("w", 5, "UPDATE \"sql_t\" SET v = v || '!' WHERE id < 10"),
    ]
    return [c if isinstance(c, bytes) else encode(c) for c in commands]


def replay(
    directory: Path, log: list[bytes], batch: int
) -> tuple[ShardGroupStateMachine, list[GroupResult]]:
    sm = ShardGroupStateMachine(1, directory)
    results: list[GroupResult] = []
    for index, entry in enumerate(log, start=1):
        results.append(decode_result(sm.apply(index, entry)))
        if index % batch == 0:
            sm.end_batch()
    sm.end_batch()
    return sm, results


def test_failing_entries_give_the_same_result_everywhere_and_nothing_halts(
    tmp_path: Path,
) -> None:
    log = the_log()
    replicas = [replay(tmp_path / f"r{b}", log, b) for b in (1, 3, len(log))]
    (sm, results), others = replicas[0], replicas[1:]
    for other, other_results in others:
        assert other_results == results
        assert other.applied_index() == sm.applied_index() == len(log)
        assert other.shards[S0].store.content_digest() == sm.shards[S0].store.content_digest()  # type: ignore[union-attr]
    outcomes = [r.outcome for r in results]
    assert outcomes[2] == outcomes[3] == "failed"
    assert "undecodable" in results[2].error and "key of" in results[3].error
    batch = results[4].batch
    assert [r.outcome for r in batch] == ["ok", "failed"]
    assert results[5].sql is not None and "too large" in results[5].sql.error, results[5]
    assert results[6].sql is not None and results[6].sql.constraint
    costly = results[7].sql
    assert costly is not None and costly.code == SqlWriteTooCostlyError.code
    assert costly.limit == STEPS and not costly.rowcount
    assert results[9].sql == costly  # the retry: the recorded answer, not a second run
    assert results[10].sql is not None and results[10].sql.rowcount == 10
    store = sm.shards[S0].store
    assert store is not None
    # The entries around the stopped write kept their effects; it kept none.
    assert store.get("fine") == "1" and store.get("after") == "2"
    rows = store.read_sql('SELECT v FROM "sql_t" WHERE id IN (0, 20) ORDER BY id', {}, 9)
    assert rows == [("r0!",), ("r20",)]
    # A restart rebuilds from the snapshot (and the log after it): the same content.
    restarted = ShardGroupStateMachine(1, tmp_path / "restarted")
    restarted.restore(sm.snapshot(), sm.applied_index())
    assert restarted.shards[S0].store.content_digest() == store.content_digest()  # type: ignore[union-attr]
    # ... and goes on alike (the stopped write left no trace in memory either: a write
    # version counted in memory but rolled back in the file would stamp the next put).
    for replica in (sm, restarted):
        replica.apply(len(log) + 1, encode(ClientOp(S0, "k", 10, Put("next", "3"))))
        replica.end_batch()
    assert restarted.shards[S0].store.content_digest() == store.content_digest()  # type: ignore[union-attr]
    for replica, _ in replicas:
        replica.close()
    restarted.close()


def test_errors_of_the_machine_still_halt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Disk full, out of memory: this replica alone may meet them, so it must not answer
    for the group; the state machine raises (a full disk as ``DiskFullError``, which
    stops the replica until there is room again; anything else halts it)."""
    log = the_log()
    sm, _ = replay(tmp_path / "r", log[:2], 1)
    full = sqlite3.OperationalError("database or disk is full")
    full.sqlite_errorcode = sqlite3.SQLITE_FULL
    for machine_error in (full, MemoryError()):

        def fail(*_: object, error: BaseException = machine_error, **__: object) -> None:
            raise error

        monkeypatch.setattr(sqlshard, "run_batch", fail)
        with pytest.raises((type(machine_error), ShardStoreError, DiskFullError)):
            sm.apply(3, encode(sql("w", 9, 'DELETE FROM "sql_t"')))
    sm.close()


def _steps_to_stop(conn: sqlite3.Connection, statement: SqlStatement) -> int:
    """The smallest limit (to the handler's granularity) the statement passes under."""

    def stopped(limit: int) -> bool:
        conn.execute("BEGIN")
        try:
            sqlshard.run_batch(conn, [statement], max_steps=limit)
        except SqlWriteTooCostlyError:
            return True
        finally:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
        return False

    low, high = 1, 1 << 26
    assert not stopped(high)
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if stopped(middle) else (low, middle)
    return high


def test_the_work_limit_stops_a_write_at_the_same_step_on_stores_of_any_history() -> None:
    """Two files with the same rows reached differently (one transaction; many, with
    deletes and re-inserts): the limit a write needs is the same on both."""
    one = sqlite3.connect(":memory:", isolation_level=None)
    many = sqlite3.connect(":memory:", isolation_level=None)
    for conn in (one, many):
        conn.execute('CREATE TABLE "sql_t" (id INTEGER NOT NULL, v TEXT, n INTEGER)')
        conn.execute('CREATE UNIQUE INDEX "sql_t__pkey" ON "sql_t" (id)')
    one.execute("BEGIN")
    for i in range(300):
        one.execute('INSERT INTO "sql_t" VALUES (?, ?, ?)', (i, f"r{i}", i))
    one.execute("COMMIT")
    for i in range(300):
        many.execute('INSERT INTO "sql_t" VALUES (?, ?, ?)', (i, "x" * 500, -i))
    many.execute('DELETE FROM "sql_t" WHERE id % 3 = 0')
    many.execute("UPDATE \"sql_t\" SET v = 'r' || id, n = id")
    for i in range(0, 300, 3):
        many.execute('INSERT INTO "sql_t" VALUES (?, ?, ?)', (i, f"r{i}", i))
    statement = SqlStatement('UPDATE "sql_t" SET n = n + length(v) WHERE id % 7 = 1')
    needed = _steps_to_stop(one, statement)
    assert needed == _steps_to_stop(many, statement)
    assert needed > sqlshard.WRITE_PROGRESS_STEPS  # the test measures something


def test_a_write_at_the_default_limit_is_stopped_quickly(tmp_path: Path) -> None:
    """The default limit stops a 3-way cross join of a few hundred rows well within an
    election timeout (every replica applies it on its event loop)."""
    conn = sqlite3.connect(":memory:", isolation_level=None)
    conn.execute('CREATE TABLE "sql_t" (id INTEGER NOT NULL, v TEXT, n INTEGER)')
    conn.executemany('INSERT INTO "sql_t" VALUES (?, ?, ?)', [(i, "v", i) for i in range(400)])
    conn.execute("BEGIN")
    with pytest.raises(SqlWriteTooCostlyError) as stopped:
        sqlshard.run_batch(conn, [SqlStatement(CROSS_JOIN)], max_steps=sqlshard.MAX_WRITE_STEPS)
    assert stopped.value.value == sqlshard.MAX_WRITE_STEPS
    assert not conn.in_transaction  # SQLite rolled the whole transaction back
    assert conn.execute('SELECT count(*) FROM "sql_t" WHERE n IS NOT id').fetchone() == (0,)
    del tmp_path


def test_a_kv_read_after_failures_is_served(tmp_path: Path) -> None:
    sm, _ = replay(tmp_path / "r", the_log(), 2)
    assert sm.read(S0, "after").value == "2"
    index = len(the_log()) + 1
    result = decode_result(sm.apply(index, encode(ClientOp(S0, "k", 9, Get("fine")))))
    assert result.outcome == "ok" and result.result is not None and result.result.value == "1"
    sm.close()
