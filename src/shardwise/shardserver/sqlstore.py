"""SQL on a shard's store: the part of :class:`~shardwise.shardserver.store.ShardStore`
that runs SQL writes, reads and schema changes (``sqlshard.py`` holds the SQL itself).

Kept apart from the store's KV half, and importing ``sqlshard`` and ``shardwise.sql``
only where it is used: a KV-only shard never loads them.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

import msgspec

from shardwise.model.config import ShardId, Table
from shardwise.model.sql import SqlStatement
from shardwise.model.txn import TxnId
from shardwise.shardserver.commands import SqlWriteResult
from shardwise.shardserver.dedup import ClientSessions
from shardwise.shardserver.protocol import SchemaVerdict, TxnSqlRequest, keyspace_tables
from shardwise.shardserver.shardfile import ShardMeta, put_meta
from shardwise.shardserver.tracking import ChangeTracker

if TYPE_CHECKING:
    from shardwise.shardserver.txn.state import SqlRunner
    from shardwise.sql.shipped import ShippedTable
    from shardwise.sql.write_functions import TimeFunctions

_SQL_STALE: Final = SqlWriteResult(stale=True)
_UNBOUNDED: Final = 1 << 62
"""The work limit of a committed transaction's SQL: checked, never met."""


@dataclass(frozen=True, slots=True)
class SqlVisit:
    """What a transaction's visit to a shard's SQL came to (``sql_visit``)."""

    version: int
    result: SqlWriteResult
    rows: list[tuple[Any, ...]] = field(default_factory=list)
    pending_failed: bool = False
    """The transaction's earlier writes failed (the tables changed under it)."""
    captured: list[list[tuple[Any, ...]]] = field(default_factory=list)
    """The rows ``statements`` changed in the visit's captured tables."""


_decode_sql = msgspec.msgpack.Decoder(SqlWriteResult).decode


class SqlStoreMixin:
    """SQL on one shard's file; mixed into ``ShardStore``, whose state it uses."""

    _conn: sqlite3.Connection | None
    _meta: ShardMeta
    _sessions: ClientSessions
    _changes: ChangeTracker
    _sql_ready: bool
    _sql_tables: dict[str, Table] | None
    _times: TimeFunctions | None
    _batching: bool

    # (implemented by ShardStore)
    @property
    def shard(self) -> ShardId:
        raise NotImplementedError

    def flush(self) -> None:
        raise NotImplementedError

    def last_seq(self, client_id: str) -> int:
        raise NotImplementedError

    def _connection(self) -> sqlite3.Connection:
        raise NotImplementedError

    def _query(self, sql: str, *params: object) -> list[Any]:
        raise NotImplementedError

    def _transaction(self) -> AbstractContextManager[sqlite3.Connection]:
        raise NotImplementedError

    def _error(self, exc: sqlite3.Error) -> Exception:
        raise NotImplementedError

    if TYPE_CHECKING:  # (ShardStore's other half: a stub here would hide it)

        def sql_locked(self, *, write: bool) -> TxnId | None: ...

        def sql_version(self) -> int: ...

    def apply_sql(
        self,
        index: int,
        client_id: str,
        seq: int,
        statements: Sequence[SqlStatement],
        refusal: SchemaVerdict = "",
        *,
        max_steps: int = 0,
    ) -> SqlWriteResult | None:
        """Apply a committed SQL write batch at log ``index``, de-duplicated like
        :meth:`apply`, in the same transaction as the applied index: every statement or,
        if one fails deterministically, none (the result carries the error; the failure
        is remembered too, so a retry gets the same answer). ``refusal``: the tables are
        not those the batch was planned with, so a new batch is refused (and not
        remembered); a retry of one already applied still gets its first result.
        ``max_steps``: the batch's work limit and checks (``sqlshard.run_batch``).

        The batch runs in a transaction of its own (the batch's earlier entries are
        committed first): stopping a write past its work limit rolls back the whole
        transaction it is in. The error is then recorded, with the index and the
        de-duplication, in a new one."""
        if index <= self._meta.applied_index:
            return None
        if refusal and (not client_id or seq > self.last_seq(client_id)):
            return SqlWriteResult(schema=refusal)
        locker = self.sql_locked(write=True)
        if locker is not None and (not client_id or seq > self.last_seq(client_id)):
            # A prepared transaction holds the tables: not run, not remembered (a retry
            # runs once it resolves), but the entry's index is applied.
            self._at_index(index)
            return SqlWriteResult(locked=locker)
        from shardwise.errors import SqlWriteTooCostlyError  # noqa: PLC0415 - SQL only
        from shardwise.shardserver import sqlshard  # noqa: PLC0415 - see above

        self._sql_connection()  # the functions, before the transaction begins
        if max_steps:
            self.flush()
        version = self._changes.version
        try:
            result = self._sql_once(
                index,
                client_id,
                seq,
                lambda conn: sqlshard.run_batch(
                    conn, statements, max_steps=max_steps, times=self._times
                ),
            )
        except SqlWriteTooCostlyError as exc:
            conn = self._connection()
            if conn.in_transaction:  # (SQLite rolls back a stopped INSERT/UPDATE/DELETE)
                conn.execute("ROLLBACK")
            self._changes.version = version  # as the file has it again
            failed = SqlWriteResult(
                error=exc.detail, code=exc.code, limit=max_steps if max_steps > 0 else 0
            )
            result = self._sql_once(index, client_id, seq, lambda _: failed)
        return result

    def _at_index(self, index: int) -> None:
        with self._transaction() as conn:
            put_meta(conn, "applied_index", index)
        self._meta.applied_index = index

    # --- transactions' SQL (``txn/state.py``) ---------------------------------------------

    def try_sql(self, statements: Sequence[SqlStatement]) -> SqlWriteResult:
        """What ``statements`` come to on the shard as it stands, under the write checks
        and the work limit (``sqlshard.MAX_WRITE_STEPS``: a constant, the same on every
        replica), rolled back whatever happens: a transaction's prepare. Deterministic."""
        from shardwise.errors import SqlWriteTooCostlyError  # noqa: PLC0415 - SQL only
        from shardwise.shardserver import sqlshard  # noqa: PLC0415 - see above

        conn = self._sql_connection()
        self.flush()  # (a stopped write rolls back the whole transaction it is in)
        try:
            conn.execute("BEGIN")
            try:
                return sqlshard.run_batch(
                    conn, statements, max_steps=sqlshard.MAX_WRITE_STEPS, times=self._times
                )
            except SqlWriteTooCostlyError as exc:
                return SqlWriteResult(error=exc.detail, code=exc.code, limit=exc.value)
            finally:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
        except sqlite3.Error as exc:
            raise self._error(exc) from exc

    def _sql_runner(self) -> SqlRunner:
        """Runs a committed part's statements (tried at its prepare, on the same tables:
        the checks stay on, the work limit cannot be met again). Loads SQL on first use."""

        def run(conn: sqlite3.Connection, statements: Sequence[SqlStatement]) -> SqlWriteResult:
            from shardwise.shardserver import sqlshard  # noqa: PLC0415 - see above

            self._register_sql(conn)
            return sqlshard.run_batch(conn, statements, max_steps=_UNBOUNDED, times=self._times)

        return run

    def sql_visit(self, visit: TxnSqlRequest, *, max_steps: int, max_seconds: float) -> SqlVisit:
        """A transaction's visit (``txn.sql``): its ``pending`` run, then its ``statements``
        tried or its ``read`` read, on the shard as it stands, all rolled back; with the shard's SQL
        version. Only on the leader, between applies (like a read); its writes within
        ``max_steps`` and ``max_seconds`` together (as a SQL write's trial)."""
        from shardwise.errors import SqlWriteTooCostlyError  # noqa: PLC0415 - SQL only
        from shardwise.shardserver import sqlshard  # noqa: PLC0415 - see above
        from shardwise.sql.capture import capturing  # noqa: PLC0415 - see above

        pending, statements, read = visit.pending, visit.statements, visit.read
        conn = self._sql_connection()
        self.flush()
        version = self.sql_version()
        deadline = time.monotonic() + max_seconds  # (its writes, as a write's time trial)
        try:
            conn.execute("BEGIN")
            try:
                if pending:
                    done = sqlshard.run_batch(
                        conn, pending, max_steps=max_steps, times=self._times, deadline=deadline
                    )
                    if done.error:
                        return SqlVisit(version, done, pending_failed=True)
                if statements:
                    with capturing(conn, visit.capture) as captured:
                        done = sqlshard.run_batch(
                            conn,
                            statements,
                            max_steps=max_steps,
                            times=self._times,
                            deadline=deadline,
                            capturing=bool(visit.capture),
                        )
                        if done.error:
                            return SqlVisit(version, done)
                    return SqlVisit(version, done, captured=captured)
                rows = []
                if read is not None:
                    rows = sqlshard.run_read(
                        conn,
                        read.sql,
                        read.params,
                        visit.max_rows,
                        shard=str(self.shard),
                        shipped=sqlshard.shipped_of(visit.shipped),
                    )
                return SqlVisit(version, SqlWriteResult(), rows)
            except SqlWriteTooCostlyError as exc:
                return SqlVisit(
                    version, SqlWriteResult(error=exc.detail, code=exc.code, limit=exc.value)
                )
            finally:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
        except sqlite3.Error as exc:
            raise self._error(exc) from exc

    def _sql_once(
        self,
        index: int,
        client_id: str,
        seq: int,
        run: Callable[[sqlite3.Connection], SqlWriteResult],
    ) -> SqlWriteResult:
        with self._transaction() as conn:

            def once() -> SqlWriteResult:
                self._changes.sql_changed(conn)  # SQL rows are not tracked: no delta spans it
                return run(conn)

            result = self._sessions.once(
                conn, client_id, seq, run=once, decode=_decode_sql, stale=_SQL_STALE
            )
            put_meta(conn, "applied_index", index)
        self._meta.applied_index = index
        return result

    def refused_sql(self, statements: Sequence[SqlStatement]) -> str:
        """Why a SQL write batch would be refused here for a function off the allow-list
        ("" if it would not): checked before it is proposed (see ``sqlshard``)."""
        from shardwise.shardserver import sqlshard  # noqa: PLC0415 - see above

        if self._conn is None:
            return ""
        # Only prepared, on the connection as it stands: the batch's held puts stay held.
        self._register_sql(self._conn)
        return sqlshard.refused_functions(self._conn, statements)

    def time_trial(self, statements: Sequence[SqlStatement], max_seconds: float) -> str:
        """Why the leader refuses the batch for taking too long ("" if it does not): tried
        on the shard as it stands, and rolled back (``sqlshard.time_trial``)."""
        from shardwise.shardserver import sqlshard  # noqa: PLC0415 - see above

        if self._conn is None or self._batching:
            return ""
        conn = self._sql_connection()
        if sqlshard.plain_inserts(conn, statements):
            return ""  # its cost is bounded by its size: nothing to time
        # A stopped INSERT/UPDATE/DELETE rolls back the whole transaction it is in, and a
        # store on a cache disk keeps one open across batches: commit it first.
        self.flush()
        return sqlshard.time_trial(conn, statements, max_seconds=max_seconds, times=self._times)

    def read_sql(
        self,
        sql: str,
        params: Mapping[str, Any],
        max_rows: int,
        shipped: Sequence[ShippedTable] = (),
        bounds: tuple[int, float] | None = None,
    ) -> list[tuple[Any, ...]]:
        """The rows of a read fragment (read-only, bounded: see ``sqlshard.run_read``;
        ``bounds``: bytes and seconds, if less than a lone read's)."""
        from shardwise.shardserver import sqlshard  # noqa: PLC0415 - see above

        conn = self._sql_connection()
        if shipped:
            # Shipped rows are written (to temp tables): a full disk or memory then rolls
            # back the whole open transaction, which on a cache disk may hold applied
            # batches. Commit them first, so a failed read can lose nothing.
            self.flush()
        max_bytes, max_seconds = bounds or (sqlshard.MAX_SQL_REPLY_BYTES, sqlshard.MAX_SQL_READ_S)
        return sqlshard.run_read(
            conn,
            sql,
            params,
            max_rows,
            shard=str(self.shard),
            shipped=shipped,
            max_bytes=max_bytes,
            max_seconds=max_seconds,
        )

    def sql_tables(self) -> dict[str, Table]:
        """The catalog tables this shard's SQL schema reflects."""
        from shardwise.shardserver import sqlshard  # noqa: PLC0415 - see above

        if self._sql_tables is None:
            rows = self._query("SELECT v FROM meta WHERE k = ?", sqlshard.SQL_TABLES_KEY)
            self._sql_tables = sqlshard.decode_tables(rows[0][0] if rows else None)
        return self._sql_tables

    def sync_schema(self, index: int, tables: Mapping[str, Table]) -> list[str]:
        """Bring the SQL tables to the catalog ``tables`` (of every keyspace; this shard
        takes its own keyspace's), at log ``index``; the DDL statements that failed
        deterministically (skipped on every replica alike). Idempotent: a shard that
        already reflects ``tables`` is not touched, so no check of the index is needed
        (a shard created or installed at ``index`` is synced at the same index)."""
        from shardwise.shardserver import sqlshard  # noqa: PLC0415 - see above

        recorded = self.sql_tables()
        target = keyspace_tables(tables, self.shard.keyspace)
        if recorded == target:
            return []
        with self._transaction() as conn:
            failures = sqlshard.sync_schema(conn, recorded, target, self.shard.keyspace)
            self._changes.sql_changed(conn)
            put_meta(conn, sqlshard.SQL_TABLES_KEY, sqlshard.encode_tables(target))
            if index > self._meta.applied_index:
                put_meta(conn, "applied_index", index)
        self._meta.applied_index = max(index, self._meta.applied_index)
        self._sql_tables = target
        return failures

    def _sql_connection(self) -> sqlite3.Connection:
        """The connection, with shardwise's SQL functions (added on first SQL use, so a
        KV-only shard never pays for them)."""
        conn = self._connection()
        self._register_sql(conn)
        return conn

    def _register_sql(self, conn: sqlite3.Connection) -> None:
        if not self._sql_ready:
            from shardwise.sql.functions import register  # noqa: PLC0415 - see above
            from shardwise.sql.write_functions import TimeFunctions  # noqa: PLC0415

            register(conn)
            self._times = TimeFunctions(conn)
            self._sql_ready = True
