"""SQL on one shard's SQLite file: write batches, read fragments, and the tables the
catalog implies.

The planner (``shardwise.sql``) sends a shard SQLite text with named parameters; this
module runs it on the shard's own connection, never anything else:

* **Only user tables.** While a fragment runs, an authorizer lets it read (and, for a
  write, change) tables named ``sql_*`` only (:data:`~shardwise.sql.catalog.PHYSICAL_PREFIX`)
  and nothing else: no ``kv``, ``sessions`` or ``meta``, no DDL, no PRAGMA, no ATTACH.
  Setting an authorizer makes SQLite re-prepare cached statements, so a statement text
  once allowed as a write can never be replayed as a read.
* **Writes fail identically everywhere.** A batch runs inside a SAVEPOINT of its own
  transaction (the store commits the entries before it first). An error that depends
  only on the batch and the shard's data (a constraint, a type mismatch, a bad
  statement: :func:`deterministic`) rolls the savepoint back and becomes the command's
  result, the same on every replica. Any other error (disk full, I/O) is raised, and the
  host halts the replica rather than let it diverge.
* **Writes are deterministic by construction** (a batch logged with a work limit, i.e.
  by this version; older entries replay as they ran): functions only from
  :data:`~shardwise.sql.write_functions.WRITE_FUNCTIONS` (the authorizer), the date and
  time functions checked as they run (``TimeFunctions``: no ``'now'``, no time zone), and
  no rowid at its largest value (SQLite would pick the next one at random). Each is
  refused as ``nondeterministic``, the same on every replica.
* **Writes have a work limit** (:data:`MAX_WRITE_STEPS` SQLite VM steps, counted by the
  progress handler: the same count on every replica for the same SQLite, schema and
  data). Past it the batch is interrupted, which rolls back its whole transaction, and
  :class:`~shardwise.errors.SqlWriteTooCostlyError` is raised for the store to record.
* **The leader times a write before proposing it** (:func:`time_trial`: run on the
  shard as it stands, rolled back, refused past :data:`MAX_WRITE_SECONDS`), because a
  step's cost grows with the values it handles. Not deterministic, and need not be: it
  only decides what enters the log.
* **Reads are bounded**: rows (the caller's ``max_rows``), bytes (one reply frame) and
  time (the fragment holds the server's event loop), each a typed
  :class:`~shardwise.errors.SqlLimitError`.
* **Schema.** A shard records in its ``meta`` table the catalog tables its SQLite schema
  reflects (``sql_tables``), so bringing it to any catalog is
  ``schema_changes(recorded, target)``: idempotent, and correct for a shard created, kept,
  or installed from another group's image whatever configuration that image was made in.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

import msgspec

from shardwise.errors import (
    NondeterministicSqlError,
    SqlError,
    SqlExecutionError,
    SqlLimitError,
    SqlWriteTooCostlyError,
)
from shardwise.model.config import Table
from shardwise.model.sql import SqlStatement
from shardwise.net.frames import MAX_FRAME_BYTES
from shardwise.shardserver.commands import SqlWriteResult
from shardwise.shardserver.protocol import (
    ShippedRows,
    SqlFailure,
)
from shardwise.shardserver.sql_checks import insert_each_shape
from shardwise.sql.capture import is_capture_table
from shardwise.sql.catalog import PHYSICAL_PREFIX
from shardwise.sql.identifiers import quote_identifier
from shardwise.sql.shard_schema import schema_changes
from shardwise.sql.shipped import ShippedTable, is_shipped, refusal, shipped_tables
from shardwise.sql.values import INT64_MAX
from shardwise.sql.write_functions import TimeFunctions
from shardwise.sql.write_rules import function_refusal

MAX_SQL_REPLY_BYTES: Final = MAX_FRAME_BYTES - (1 << 20)
"""Rows one read fragment may return, by size: a reply is one frame (``MAX_FRAME_BYTES``),
less room for its envelope. Rows are counted at their MessagePack size, about."""

MAX_SQL_READ_ROWS: Final = 1_000_001
"""Rows one read fragment may return whatever the caller asks: the coordinator's own
bound (``MAX_COORDINATOR_ROWS``) plus the one row that shows it was passed."""

MAX_SQL_READ_S: Final = 5.0
"""Longest a read fragment may run. It runs on the server's event loop (on the shard's
own connection, so it sees exactly the applied state), holding up the group's heartbeats
meanwhile; past this it is interrupted. A reader thread would lift this (follow-up)."""

PROGRESS_STEPS: Final = 100
"""SQLite VM steps between looks at a read's or a trial write's clock. Few, because a
step's cost depends on the size of the values it handles: 100 steps over values at the
shard's limit (``MAX_SQLITE_VALUE_BYTES``) take a few tens of milliseconds; over small
values a look costs about 5% of the work."""

FETCH_ROWS: Final = 1024
"""Rows taken from SQLite at once while a read's bounds are checked."""

MAX_WRITE_STEPS: Final = 20_000_000
"""The most SQLite VM steps one SQL write batch may take on a shard (the default of the
shard server's ``--sql-write-max-steps``). Every replica applies the batch on its event
loop, so a long one stalls the group (an election comes after 0.5-1 s without
heartbeats). Measured on SQLite 3.40: 35-110 million steps a second, an UPDATE of
100,000 rows 1.4 million steps (40 ms), so the bound allows an UPDATE of about a
million rows in a shard and stops ordinary writes within 0.2-0.6 s. A step over large
values costs more (up to milliseconds at ``MAX_SQLITE_VALUE_BYTES``): the leader's
trial (:data:`MAX_WRITE_SECONDS`) is what keeps slow writes out of the log."""

MAX_WRITE_SECONDS: Final = 0.25
"""How long a SQL write batch may take when the leader tries it before proposing it (the
default of ``--sql-write-max-seconds``). Steps do not measure work (one step may hash a
megabyte), so the leader also times the batch on its own data, rolls it back, and
refuses it past this: what enters the log has been seen to run quickly. Well under the
0.5 s a group goes without heartbeats before a follower may stand for election."""

WRITE_PROGRESS_STEPS: Final = 1000
"""VM steps between calls of a write's step counter: the limit is met to within this
many steps, for a call of Python every few microseconds of SQLite work."""

SQL_TABLES_KEY: Final = "sql_tables"
"""The ``meta`` key holding the catalog tables a shard's schema reflects."""

SAVEPOINT: Final = "sw_sql"

_DETERMINISTIC_CODES: Final = frozenset(
    {
        sqlite3.SQLITE_ERROR,  # a bad statement: no such table or column, integer overflow
        sqlite3.SQLITE_CONSTRAINT,  # UNIQUE, NOT NULL, CHECK
        sqlite3.SQLITE_MISMATCH,  # a non-integer rowid, STRICT types
        sqlite3.SQLITE_TOOBIG,  # a string or blob over SQLite's own bound
        sqlite3.SQLITE_RANGE,  # a parameter index out of range
        sqlite3.SQLITE_AUTH,  # the authorizer refused: not a user table
    }
)

_READ_ACTIONS: Final = frozenset({sqlite3.SQLITE_SELECT, sqlite3.SQLITE_FUNCTION})
_WRITE_ACTIONS: Final = frozenset(
    {sqlite3.SQLITE_INSERT, sqlite3.SQLITE_UPDATE, sqlite3.SQLITE_DELETE}
)
_TABLE_ACTIONS: Final = frozenset({sqlite3.SQLITE_READ}) | _WRITE_ACTIONS

_encode = msgspec.msgpack.Encoder().encode
_tables_decoder = msgspec.msgpack.Decoder(dict[str, Table])


# --- the catalog a shard reflects ------------------------------------------------------------


def encode_tables(tables: Mapping[str, Table]) -> bytes:
    return _encode(dict(tables))


def decode_tables(data: object) -> dict[str, Table]:
    if not isinstance(data, bytes):
        return {}  # a shard that never had SQL tables
    return _tables_decoder.decode(data)


def sync_schema(
    conn: sqlite3.Connection,
    recorded: Mapping[str, Table],
    target: Mapping[str, Table],
    keyspace: str,
) -> list[str]:
    """Run the DDL from ``recorded`` to ``target`` on ``conn`` (inside the caller's
    transaction). A statement that fails deterministically (``CREATE UNIQUE INDEX`` over
    duplicate rows) is skipped on every replica alike; the failures are returned."""
    failures: list[str] = []
    for statement in schema_changes(recorded, target, keyspace):
        conn.execute(f"SAVEPOINT {SAVEPOINT}")
        try:
            conn.execute(statement)
        except (sqlite3.Error, ValueError, OverflowError) as exc:
            if not deterministic(exc):
                raise
            conn.execute(f"ROLLBACK TO {SAVEPOINT}")
            failures.append(f"{statement}: {exc}")
        conn.execute(f"RELEASE {SAVEPOINT}")
    return failures


# --- writes ----------------------------------------------------------------------------------


def deterministic(exc: BaseException) -> bool:
    """Whether ``exc`` follows from the statement and the data alone (so every replica
    meets it at the same point), rather than from this machine (disk, memory, locks)."""
    if isinstance(exc, sqlite3.Error):
        code = getattr(exc, "sqlite_errorcode", None)
        # No code: the driver refused the command itself (bindings, two statements in one).
        return code is None or (code & 0xFF) in _DETERMINISTIC_CODES
    # The driver's own checks of values (an int over 64 bits, a NUL in the text).
    return isinstance(exc, ValueError | OverflowError)


class _StepBudget:
    """A write's progress handler: counts VM steps, stops the write past ``max_steps``
    (or, off the log only, past the monotonic clock's ``deadline``)."""

    def __init__(self, max_steps: int, deadline: float | None = None) -> None:
        self.max_steps = max_steps
        self.steps = 0
        self.exceeded = False
        self.deadline = deadline
        self.late = False

    def __call__(self) -> int:
        self.steps += WRITE_PROGRESS_STEPS
        self.exceeded = self.steps > self.max_steps
        self.late = self.deadline is not None and time.monotonic() > self.deadline
        return 1 if self.exceeded or self.late else 0


def run_batch(
    conn: sqlite3.Connection,
    statements: Sequence[SqlStatement],
    *,
    max_steps: int = 0,
    times: TimeFunctions | None = None,
    deadline: float | None = None,
    capturing: bool = False,
) -> SqlWriteResult:
    """Run ``statements`` inside the caller's transaction: all of them, or, when one fails
    deterministically, none (the error is the result). ``max_steps`` not 0 (a batch logged
    by this version) holds the batch to the allow-list, the checked time functions (on
    ``conn``: ``times``) and the work limit; past the limit this raises
    :class:`SqlWriteTooCostlyError` and the caller's transaction is gone. ``deadline``
    (``time.monotonic``; off the log only: a transaction's visit) stops it as well.
    ``capturing``: a visit's capture triggers (``shardwise.sql.capture``) may write their
    temporary tables."""
    checked = max_steps != 0  # (a negative limit, never logged by a leader, stops at once)
    authorizer = _WriteAuthorizer(checked, capturing)
    budget = _StepBudget(max(0, max_steps), deadline)
    conn.execute(f"SAVEPOINT {SAVEPOINT}")
    changed = 0
    try:
        conn.set_authorizer(authorizer)
        if checked:
            conn.set_progress_handler(budget, WRITE_PROGRESS_STEPS)
        if times is not None:
            times.enforcing, times.refusal = checked, ""
        try:
            for statement in statements:
                if statement.rows and not insert_each_shape(statement.sql, len(statement.rows[0])):
                    raise sqlite3.ProgrammingError(  # (refused at the door as well)
                        "a statement run for each of its rows is a plain INSERT of ? marks"
                    )
                cursor = _execute(conn, statement)
                changed += max(0, cursor.rowcount)
                cursor.close()
                if checked:
                    _check_rowids(conn, authorizer.written)
        finally:
            conn.set_authorizer(None)
            conn.set_progress_handler(None, 0)
            if times is not None:
                times.enforcing = False
    except (sqlite3.Error, ValueError, OverflowError, NondeterministicSqlError) as exc:
        if budget.late:
            raise SqlWriteTooCostlyError(
                "max_write_ms",
                0,
                "the transaction's statements on this shard took too long when the leader "
                "ran them: commit it in smaller transactions",
            ) from None
        if budget.exceeded:
            raise SqlWriteTooCostlyError(
                "max_write_steps",
                max_steps,
                f"the write took more than {max_steps} SQLite steps and was stopped",
            ) from None
        refused = isinstance(exc, NondeterministicSqlError)
        if not refused and not deterministic(exc):
            raise
        conn.execute(f"ROLLBACK TO {SAVEPOINT}")
        conn.execute(f"RELEASE {SAVEPOINT}")
        why = authorizer.refused or (times.refusal if times is not None else "")
        if refused:
            why = str(exc)
        if why:
            return SqlWriteResult(error=why, code=NondeterministicSqlError.code)
        constraint = isinstance(exc, sqlite3.IntegrityError)
        return SqlWriteResult(error=str(exc) or type(exc).__name__, constraint=constraint)
    conn.execute(f"RELEASE {SAVEPOINT}")
    return SqlWriteResult(rowcount=changed)


def plain_inserts(conn: sqlite3.Connection, statements: Sequence[SqlStatement]) -> bool:
    """Whether every statement of a batch only inserts the values it carries: it calls no
    function, reads no table, updates or deletes nothing and concatenates nothing, so its
    cost is linear in its own size (which the batch limits bound), and the leader need
    not time it. Prepared only (``EXPLAIN``), under an authorizer that notes every action."""
    if any("||" in statement.sql for statement in statements):
        return False
    other = False

    def note(action: int, *_: object) -> int:
        nonlocal other
        other = other or action not in (sqlite3.SQLITE_INSERT, sqlite3.SQLITE_SELECT)
        return sqlite3.SQLITE_OK

    conn.set_authorizer(note)
    try:
        for statement in statements:
            conn.execute("EXPLAIN " + statement.sql, statement.bindings()).close()
            if other:
                return False
    except (sqlite3.Error, ValueError, OverflowError):
        return False  # (the apply reports it; a trial costs nothing more to be sure)
    finally:
        conn.set_authorizer(None)
    return True


def time_trial(
    conn: sqlite3.Connection,
    statements: Sequence[SqlStatement],
    *,
    max_seconds: float = MAX_WRITE_SECONDS,
    times: TimeFunctions | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> str:
    """Why the leader refuses a write batch before proposing it for taking too long (""
    if it does not): the batch runs on ``conn`` as the shard stands now, under the write
    checks, and is rolled back whatever happens. Any other failure is left to the apply,
    which meets it the same way on every replica. Run only between applies, never inside
    the store's transaction."""
    if conn.in_transaction:
        return ""  # (not between applies: the apply's own limits still hold)
    deadline = clock() + max_seconds
    stopped = False

    def past_deadline() -> int:
        nonlocal stopped
        stopped = clock() > deadline
        return 1 if stopped else 0

    conn.execute("BEGIN")
    try:
        conn.set_authorizer(_WriteAuthorizer(True))
        conn.set_progress_handler(past_deadline, PROGRESS_STEPS)
        if times is not None:
            times.enforcing, times.refusal = True, ""
        for statement in statements:
            _execute(conn, statement).close()
    except (sqlite3.Error, ValueError, OverflowError, NondeterministicSqlError):
        if stopped:
            return (
                f"the write took more than {max_seconds} s when the leader tried it, and "
                "was not applied: split it into smaller writes"
            )
    finally:
        conn.set_authorizer(None)
        conn.set_progress_handler(None, 0)
        if times is not None:
            times.enforcing = False
        if conn.in_transaction:
            conn.execute("ROLLBACK")
    return ""


def _check_rowids(conn: sqlite3.Connection, tables: set[str]) -> None:
    """Refuse a rowid at its largest value: SQLite then picks each new row's at random."""
    for table in sorted(tables):
        quoted = quote_identifier(table)
        top = conn.execute(f"SELECT max(rowid) FROM {quoted}").fetchone()[0]
        if top == INT64_MAX:
            raise NondeterministicSqlError(
                f"a rowid of {INT64_MAX} in {table} would make SQLite choose the next "
                "row's rowid at random"
            )


def refused_functions(conn: sqlite3.Connection, statements: Sequence[SqlStatement]) -> str:
    """Why a write batch is refused before it is proposed ("" if it is not): a function
    off the allow-list. Each statement is prepared (``EXPLAIN``: nothing runs) with the
    write authorizer; any other error is left for the apply to report."""
    authorizer = _WriteAuthorizer(checked=True)
    conn.set_authorizer(authorizer)
    try:
        for statement in statements:
            with contextlib.suppress(sqlite3.Error, ValueError, OverflowError):
                conn.execute("EXPLAIN " + statement.sql, statement.bindings()).close()
            if authorizer.refused:
                return authorizer.refused
    finally:
        conn.set_authorizer(None)
    return ""


def _execute(conn: sqlite3.Connection, statement: SqlStatement) -> sqlite3.Cursor:
    if statement.rows:
        return conn.executemany(statement.sql, statement.rows)
    return conn.execute(statement.sql, statement.params)


# --- reads -----------------------------------------------------------------------------------


def shipped_of(shipped: Sequence[ShippedRows]) -> tuple[ShippedTable, ...]:
    """A request's shipped tables as :func:`run_read` takes them (check them with
    :func:`shipped_refusal` first)."""
    return tuple(ShippedTable(t.name, t.columns, t.rows) for t in shipped)


def shipped_refusal(shipped: Sequence[ShippedRows]) -> str:
    """Why a request's shipped tables are refused at the door ("" if they are not)."""
    return refusal(shipped_of(shipped)) if shipped else ""


def run_read(
    conn: sqlite3.Connection,
    sql: str,
    params: Mapping[str, Any],
    max_rows: int,
    *,
    shard: str,
    max_bytes: int = MAX_SQL_REPLY_BYTES,
    max_seconds: float = MAX_SQL_READ_S,
    clock: Callable[[], float] = time.monotonic,
    shipped: Sequence[ShippedTable] = (),
) -> list[tuple[Any, ...]]:
    """The rows of a read fragment, read-only, within the bounds above; ``shipped``
    (checked by the caller: ``shipped.refusal``) are tables it may read for as long as
    it runs (a broadcast join's small side)."""
    max_rows = min(max_rows, MAX_SQL_READ_ROWS)
    try:
        with shipped_tables(conn, shipped):
            return _read_rows(
                conn,
                sql,
                params,
                max_rows,
                shard=shard,
                max_bytes=max_bytes,
                max_seconds=max_seconds,
                clock=clock,
            )
    except sqlite3.Error as exc:  # (making the shipped tables: the fragment's are typed)
        raise SqlExecutionError(str(exc) or type(exc).__name__, shard) from None


def _read_rows(
    conn: sqlite3.Connection,
    sql: str,
    params: Mapping[str, Any],
    max_rows: int,
    *,
    shard: str,
    max_bytes: int,
    max_seconds: float,
    clock: Callable[[], float],
) -> list[tuple[Any, ...]]:
    deadline = clock() + max_seconds
    rows: list[tuple[Any, ...]] = []
    size = 0
    conn.set_authorizer(_authorize_read)
    conn.set_progress_handler(lambda: clock() > deadline, PROGRESS_STEPS)
    cursor: sqlite3.Cursor | None = None
    try:
        cursor = conn.execute(sql, dict(params))
        while batch := cursor.fetchmany(FETCH_ROWS):
            rows.extend(batch)
            size += sum(map(_row_bytes, batch))
            if len(rows) > max_rows:
                raise SqlLimitError("max_rows", max_rows, f"shard {shard} has too many rows")
            if size > max_bytes:
                raise SqlLimitError(
                    "max_reply_bytes", max_bytes, f"shard {shard}'s rows are too large"
                )
    except (sqlite3.Error, ValueError, OverflowError) as exc:
        if getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_INTERRUPT:
            raise SqlLimitError(
                "max_read_seconds", int(max_seconds), f"a fragment ran too long on shard {shard}"
            ) from None
        raise SqlExecutionError(str(exc) or type(exc).__name__, shard) from None
    finally:
        if cursor is not None:
            cursor.close()  # an unfinished statement would keep the next COMMIT from running
        conn.set_progress_handler(None, 0)
        conn.set_authorizer(None)
    return rows


def rows_bytes(rows: Sequence[tuple[Any, ...]]) -> int:
    """The size of ``rows`` as a read's bytes bound counts them."""
    return sum(map(_row_bytes, rows))


def _row_bytes(row: tuple[Any, ...]) -> int:
    return sum(len(v) + 5 if isinstance(v, str | bytes) else 9 for v in row) + 5


def failure_of(exc: SqlError) -> SqlFailure:
    """A shard's SQL error as it travels (the client raises the same class again)."""
    if isinstance(exc, SqlLimitError):
        return SqlFailure(exc.code, exc.detail, exc.limit, exc.value)
    if isinstance(exc, SqlExecutionError):
        return SqlFailure(exc.code, exc.detail)
    return SqlFailure(exc.code, str(exc))


def result_failure(result: SqlWriteResult) -> SqlFailure | None:
    """A write's failure as it travels (``None``: it did not fail)."""
    if not result.error:
        return None
    code = result.code or ("constraint" if result.constraint else "execution")
    limit = "max_write_steps" if code == SqlWriteTooCostlyError.code else ""
    return SqlFailure(code, result.error, limit, result.limit)


# --- the authorizers -------------------------------------------------------------------------


def _user_table(name: str | None) -> bool:
    return name is not None and name.startswith(PHYSICAL_PREFIX)


def _authorize_read(
    action: int, arg1: str | None, _arg2: str | None, database: str | None, *_: object
) -> int:
    if action in _READ_ACTIONS:
        return sqlite3.SQLITE_OK
    if action == sqlite3.SQLITE_READ and (_user_table(arg1) or is_shipped(arg1, database)):
        return sqlite3.SQLITE_OK
    return sqlite3.SQLITE_DENY


class _WriteAuthorizer:
    """User tables only; with ``checked``, functions only from the allow-list. Notes the
    first function refused and the tables written."""

    def __init__(self, checked: bool, capturing: bool = False) -> None:
        self.checked = checked
        self.capturing = capturing
        self.refused = ""
        self.written: set[str] = set()

    def __call__(
        self, action: int, arg1: str | None, arg2: str | None, database: str | None, *_: object
    ) -> int:
        if self.capturing and action == sqlite3.SQLITE_INSERT and is_capture_table(arg1, database):
            return sqlite3.SQLITE_OK
        if action == sqlite3.SQLITE_FUNCTION:
            name = (arg2 or "").lower()
            why = function_refusal(name) if self.checked else ""
            if not why:
                return sqlite3.SQLITE_OK
            self.refused = self.refused or why
            return sqlite3.SQLITE_DENY
        if action == sqlite3.SQLITE_SELECT:
            return sqlite3.SQLITE_OK
        if action in _TABLE_ACTIONS and arg1 is not None and _user_table(arg1):
            if action in _WRITE_ACTIONS:
                self.written.add(arg1)
            return sqlite3.SQLITE_OK
        return sqlite3.SQLITE_DENY
