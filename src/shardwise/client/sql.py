"""SQL over the cluster for :meth:`shardwise.client.Client.sql`: the coordinator's two
seams on the client's router.

* :class:`ClusterShards` (a :class:`~shardwise.sql.executor.ShardExecutor`) sends each
  fragment to the group that owns its shard, exactly as a key's request goes (leader
  hints, the next server on a failure, a newer configuration on ``wrong_group``, one
  deadline): reads as ``shard.sql_read`` (ReadIndex on the leader, then the shard's
  SQLite), writes as ``shard.sql_write`` (one log entry per shard, with a pooled writer
  id and sequence number, so a retried write applies once).
* :class:`~shardwise.client.sql_catalog.ClusterCatalog` (a
  :class:`~shardwise.sql.executor.CatalogStore`, in ``client/sql_catalog.py``) reads the
  catalog from the router's cached configuration and changes it through the controller.

:class:`ClusterSql` plans and runs a statement with both, on the client's own router and
writer pool (through their public methods), so SQL and KV calls share connections,
leaders, configurations and limits.

**Which tables a shard runs a statement against.** A statement is planned against the
catalog of the configuration the client holds. Every request carries that configuration's
number and a digest of the keyspace's tables in it, and a shard runs it only if its
group's configuration has the same tables. A group that has not reached the client's
configuration yet answers ``behind`` and the client asks again until the statement's
deadline; a group whose configuration is newer than the client's (the tables changed
since) answers ``changed``, and the client fetches the configuration and plans the
statement again, if nothing was applied anywhere (otherwise the write's error says how
many shards applied it). A DDL statement returns once every group owning a shard of its
keyspace has applied the configuration that holds it, so a statement that starts after
a DDL statement returned sees its effect on every shard; one that overlaps it may see
the old tables on some shards and the new ones on others, never a mixture in one shard.
"""

from __future__ import annotations

import asyncio
import random
import re
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Final

import msgspec

from shardwise.client.fanout import bind, fan_out
from shardwise.client.router import ShardRouter
from shardwise.client.sql_catalog import ClusterCatalog
from shardwise.client.sqltxn import (
    TxnCatalog,
    TxnShards,
    control_word,
    read_snapshot,
    shipped_rows,
    sql_error_of,
    to_statements,
    write_atomically,
    write_maintained,
)
from shardwise.client.turns import ShardTurns
from shardwise.client.writers import WriterPool
from shardwise.errors import (
    ClientTimeoutError,
    NondeterministicSqlError,
    PermissionDeniedError,
    RequestRefusedError,
    SqlCatalogError,
    SqlError,
    SqlExecutionError,
    SqlLimitError,
    SqlSchemaChangedError,
    StaleWriteError,
    error_for,
)
from shardwise.model.config import (
    NO_GROUP,
    ShardId,
)
from shardwise.model.sql import SqlStatement
from shardwise.model.txn import TransactionConflictError, TransactionError
from shardwise.net.leader import CallDeadline
from shardwise.net.loop import gather_or_cancel
from shardwise.net.rpc import RpcMethod
from shardwise.shardserver.protocol import (
    MAX_SQL_BATCH_BYTES,
    MAX_SQL_STATEMENTS,
    SQL_GROUP_READ,
    SQL_READ,
    SQL_WRITE,
    SqlFailure,
    SqlGroupReadRequest,
    SqlReadRequest,
    SqlReply,
    SqlWriteRequest,
)
from shardwise.sql import Coordinator, Result
from shardwise.sql.catalog import logical_names
from shardwise.sql.executor import Row
from shardwise.sql.index_tables import IndexMaintenance
from shardwise.sql.params import Params
from shardwise.sql.plans import Fragment, ShardBatch

if TYPE_CHECKING:
    from shardwise.client.txn import Transaction

SQL_ATTEMPT_TIMEOUT_S: Final = 6.0
"""One attempt of a SQL fragment at one server (when the client's own is shorter): a
read fragment may run up to the server's ``MAX_SQL_READ_S`` (5 s)."""

SCHEMA_WAIT_S: Final = 0.05
"""Pause before asking a group that has yet to reach the client's configuration again."""

MAX_IMPLICIT_ATTEMPTS: Final = 8
"""Attempts of a statement run in a transaction of its own (``INSERT ... SELECT``)
before its last conflict is raised."""

IMPLICIT_RETRY_PAUSE_S: Final = 0.01

INSERT_SELECT: Final = re.compile(r"^\s*INSERT\b[\s\S]*\bSELECT\b", re.IGNORECASE)
"""A statement that may read before it writes (a string literal that says SELECT only
costs it a transaction of its own)."""

MAX_REPLANS: Final = 8
"""Times one statement is planned again because the tables changed under it."""

_encode = msgspec.msgpack.Encoder().encode


class ClusterSql:
    """One session's SQL statements over the cluster, on a client's router and writer
    pool: each statement on its own (autocommit), or inside the transaction the session
    holds between ``BEGIN`` and ``COMMIT`` / ``ROLLBACK`` (``client/sqltxn.py``)."""

    def __init__(
        self,
        router: ShardRouter,
        writers: WriterPool,
        begin: Callable[[float, bool], Transaction],
    ) -> None:
        self._router = router
        self._writers = writers
        self._begin = begin
        self.tx: Transaction | None = None
        """The open transaction (``None``: each statement commits on its own)."""
        self.last_rows_shipped: dict[int, int] = {}
        """Rows each shard sent for the last read run here, by shard index."""
        self.last_rows_sent = 0
        """Rows the last read run here sent to the shards (a broadcast join's)."""

    @property
    def in_transaction(self) -> bool:
        return self.tx is not None

    async def execute(self, query: str, params: Params | None, deadline: float) -> Result:
        """``Client.sql``: transaction control, or a statement planned and run by its
        deadline, planned again when a shard holds newer tables than the catalog it was
        planned with (see the module's docstring)."""
        word = control_word(query)
        if word is not None:
            if params:
                raise SqlError(f"{word.upper()} takes no parameters")
            return await self._control(word, deadline)
        if self.tx is None:
            if INSERT_SELECT.match(query):
                return await self._implicit(query, params, deadline)
            return await self._statement(query, params, deadline, None)
        tx = self.tx
        if tx.state != "open":
            raise TransactionConflictError(
                f"the transaction can no longer commit ({tx.state}): ROLLBACK, then run it again"
            )
        tx.set_deadline(deadline)
        return await self._statement(query, params, deadline, tx)

    async def read_every_shard(
        self, keyspace: str, sql: str, deadline: float, max_rows: int = 1_000_000
    ) -> list[list[Row]]:
        """``sql`` (planned SQLite text, not a user's statement: it may read the hidden
        tables of global indexes) on every shard of ``keyspace``, each shard's rows in
        shard order: what a consistency check reads (``testing/index_check.py``)."""
        call = CallDeadline.starting_now(f"raw read of {keyspace!r}", deadline)
        catalog = ClusterCatalog(self._router, call)
        found = await catalog.catalog()
        shards = ClusterShards(self._router, self._writers, call, catalog)
        count = found.keyspaces[keyspace].scheme.shards
        return await shards.read_shards(keyspace, range(count), Fragment(sql), max_rows)

    async def _control(self, word: str, deadline: float) -> Result:
        if word == "begin":
            if self.tx is not None:
                raise SqlError("a transaction is already open: COMMIT or ROLLBACK it first")
            self.tx = self._begin(deadline, False)
            return Result(())
        tx, self.tx = self.tx, None
        if tx is None:
            return Result(())  # (as PostgreSQL: a warning there, nothing to do)
        if word == "rollback" or tx.state != "open":
            tx.abort()
            if word == "commit":  # a failed transaction cannot commit: say so
                raise TransactionConflictError(
                    "the transaction could not commit (a statement met a conflict); it was "
                    "rolled back: run it again"
                )
            return Result(())
        tx.set_deadline(deadline)
        call = CallDeadline.starting_now("COMMIT", deadline)
        try:
            await tx.commit()
        except TransactionError as exc:
            if tx.sql_failure is None:
                raise
            catalog = ClusterCatalog(self._router, call)
            await catalog.catalog()  # (the error names the user's tables)
            raise sql_error_of(
                tx, exc, ClusterShards(self._router, self._writers, call, catalog)
            ) from exc
        return Result(())

    async def _implicit(self, query: str, params: Params | None, deadline: float) -> Result:
        """A statement that reads before it writes (``INSERT ... SELECT``) outside a
        transaction: run in one of its own, so its rows are written only if what it read
        is unchanged; again after a conflict, up to :data:`MAX_IMPLICIT_ATTEMPTS`."""
        for attempt in range(1, MAX_IMPLICIT_ATTEMPTS + 1):
            tx = self._begin(deadline, attempt > 1)
            try:
                result = await self._statement(query, params, deadline, tx)
                await tx.commit()
                return result
            except TransactionConflictError:
                if tx.sql_failure is not None or attempt == MAX_IMPLICIT_ATTEMPTS:
                    raise
            finally:
                tx.abort()
            await asyncio.sleep(random.uniform(0, IMPLICIT_RETRY_PAUSE_S * attempt))
        raise AssertionError("unreachable")

    async def _restart(self, deadline: float) -> None:
        """Commit the open transaction (it has only read) and begin another: what a DDL
        statement inside a transaction does first (``sqltxn.TxnCatalog``)."""
        tx = self.tx
        if tx is not None and tx.state == "open":
            await tx.commit()
        self.tx = self._begin(deadline, False)

    async def insert_rows(
        self, table: str, columns: Sequence[str] | None, values: Sequence[object], deadline: float
    ) -> int:
        """``values`` (row after row) inserted into ``table``, as one INSERT of them as
        parameters (``Client.copy_rows``' chunks), in the open transaction if any."""
        what = f"INSERT INTO {table} of {len(values)} values"
        result = await self._statement(what, None, deadline, self.tx, rows=(table, columns, values))
        return result.rowcount

    async def _statement(
        self,
        query: str,
        params: Params | None,
        deadline: float,
        tx: Transaction | None,
        *,
        rows: tuple[str, Sequence[str] | None, Sequence[object]] | None = None,
    ) -> Result:
        """``query`` planned and run; or, given ``rows`` (a table, its columns, the values),
        their INSERT, planned without SQL text (``query`` then only says what it is)."""
        router = self._router
        call = CallDeadline.starting_now(f"SQL statement {_abbreviate(query)!r}", deadline)
        for _ in range(MAX_REPLANS):
            catalog = ClusterCatalog(router, call)
            shards = ClusterShards(
                router, self._writers, call, catalog, lambda: self._begin(deadline, False)
            )
            coordinator = (
                Coordinator(shards, catalog)
                if tx is None
                else Coordinator(
                    TxnShards(tx, shards),
                    TxnCatalog(tx, catalog, lambda: self._restart(deadline)),
                )
            )
            try:
                if rows is None:
                    result = await coordinator.execute(query, params)
                else:
                    result = await coordinator.insert_rows(*rows)
            except SqlSchemaChangedError:
                # The coordinator raises it bare only when nothing was applied (a write to
                # several shards is one transaction), and a batch whose outcome is unknown
                # means the deadline has passed: planning again cannot apply anything twice.
                if call.remaining() <= 0:
                    raise call.timed_out() from None
                continue
            except SqlCatalogError:
                # Planned against our cached catalog, which may predate another client's
                # DDL (a table or column it does not know yet, or a table it thinks is
                # free): ask the controller, and plan again if the catalog was older.
                planned = catalog.planned_num
                latest = await router.refresh(-1, call, wait=False)
                if planned is None or latest is None or latest.num <= planned:
                    raise
                continue
            if coordinator.last_rows_shipped:
                self.last_rows_shipped = coordinator.last_rows_shipped
                self.last_rows_sent = coordinator.last_rows_sent
            return result
        raise SqlSchemaChangedError(
            f"the tables changed {MAX_REPLANS} times while {call.what} was planned; try again"
        )


class ClusterShards:
    """Fragments to the shards' groups (see the module's docstring)."""

    def __init__(
        self,
        router: ShardRouter,
        writers: WriterPool,
        call: CallDeadline,
        catalog: ClusterCatalog,
        begin: Callable[[], Transaction] | None = None,
    ) -> None:
        self._router = router
        self._writers = writers
        self._call = call
        self._catalog = catalog
        self._begin = begin
        """A new transaction, for a write to several shards (``None``: only reads)."""
        self._attempt_s = max(router.attempt_timeout_s, SQL_ATTEMPT_TIMEOUT_S)

    async def read(self, shard: ShardId, fragment: Fragment, max_rows: int) -> list[Row]:
        num, digest = self._catalog.planned(shard.keyspace)
        params = dict(fragment.params)
        shipped = shipped_rows(fragment)
        request = SqlReadRequest(shard, fragment.sql, params, max_rows, num, digest, shipped)
        reply = await self.send(shard, SQL_READ, request, num)
        return [tuple(row) for row in reply.rows]

    async def read_shards(
        self, keyspace: str, shards: Sequence[int], fragment: Fragment, max_rows: int
    ) -> list[list[Row]]:
        """:meth:`read` on each of ``shards``: one request per group that serves several
        of them (``shard.sql_group_read``: one ReadIndex round, and shipped rows sent
        once); a shard that request does not settle plainly is read on its own."""
        config = self._router.configuration
        by_group: dict[int, list[int]] = {}
        for index in shards:
            gid = config.owner(ShardId(keyspace, index)) if config is not None else NO_GROUP
            by_group.setdefault(gid, []).append(index)
        found: dict[int, list[Row]] = {}

        async def group(gid: int, indexes: list[int]) -> None:
            if gid != NO_GROUP and len(indexes) > 1:
                found.update(await self._group_read(gid, keyspace, indexes, fragment, max_rows))
            alone = [i for i in indexes if i not in found]
            rows = await gather_or_cancel(
                [self.read(ShardId(keyspace, i), fragment, max_rows) for i in alone]
            )
            found.update(zip(alone, rows, strict=True))

        await gather_or_cancel([group(gid, indexes) for gid, indexes in by_group.items()])
        return [found[index] for index in shards]

    async def _group_read(
        self, gid: int, keyspace: str, indexes: list[int], fragment: Fragment, max_rows: int
    ) -> dict[int, list[Row]]:
        """The rows of the shards one group's request settled (the rest: not there)."""
        num, digest = self._catalog.planned(keyspace)
        request = SqlGroupReadRequest(
            keyspace,
            tuple(indexes),
            fragment.sql,
            dict(fragment.params),
            max_rows,
            num,
            digest,
            shipped_rows(fragment),
        )
        router, call = self._router, self._call
        reply = await router.call_group(
            gid, SQL_GROUP_READ, request, call, attempt_s=self._attempt_s
        )
        if reply is not None and reply.error:  # (refused at the door: alone, it would be too)
            refused = PermissionDeniedError if reply.denied else RequestRefusedError
            raise refused(f"{call.what} was refused: {reply.error}")
        if reply is None or reply.status != "ok" or len(reply.replies) != len(indexes):
            return {}  # (each shard on its own: its router follows the group's changes)
        rows: dict[int, list[Row]] = {}
        for index, one in zip(indexes, reply.replies, strict=True):
            if one.status != "ok" or one.schema or one.error:
                continue  # (moved, locked, behind, too big to share a frame: alone)
            if one.failure is not None:
                raise self.failure(ShardId(keyspace, index), one.failure)
            rows[index] = [tuple(row) for row in one.rows]
        return rows

    async def write(
        self,
        keyspace: str,
        batches: Sequence[ShardBatch],
        maintenance: IndexMaintenance | None = None,
    ) -> int:
        """One shard's batch as one write (one log entry); several as one transaction
        (``sqltxn.write_atomically``); a write that keeps global indexes as a transaction
        that learns the changes first (``sqltxn.write_maintained``)."""
        for batch in batches:
            _check_batch(ShardId(keyspace, batch.shard), to_statements(batch.statements))
        if maintenance is not None and batches:
            assert self._begin is not None, "a write is sent with a way to begin a transaction"
            return await write_maintained(self, self._begin, keyspace, batches, maintenance)
        if len(batches) == 1:
            return await self._write_one(ShardId(keyspace, batches[0].shard), batches[0].statements)
        if not batches:
            return 0
        assert self._begin is not None, "a write is sent with a way to begin a transaction"
        return await write_atomically(self, self._begin, keyspace, batches)

    async def read_snapshot(
        self, keyspace: str, shards: Sequence[int], fragment: Fragment, max_rows: int
    ) -> list[list[Row]]:
        assert self._begin is not None, "a statement is sent with a way to begin a transaction"
        return await read_snapshot(
            self,
            self._begin,
            keyspace=keyspace,
            shards=shards,
            fragment=fragment,
            max_rows=max_rows,
        )

    async def fill(
        self,
        keyspace: str,
        shard: int,
        read: Fragment,
        max_rows: int,
        entries: Callable[[list[Row]], list[ShardBatch]],
        *,
        in_flight: int,
    ) -> list[Row]:
        rows = await self.read(ShardId(keyspace, shard), read, max_rows)
        await fan_out([bind(self.write, keyspace, [b]) for b in entries(rows)], in_flight)
        return rows

    def planned(self, keyspace: str) -> tuple[int, int]:
        return self._catalog.planned(keyspace)

    @property
    def turns(self) -> ShardTurns:
        """This client's turns on shards for its writes over several shards."""
        return self._router.turns

    def remaining(self) -> float:
        return self._call.remaining()

    def timed_out(self) -> ClientTimeoutError:
        return self._call.timed_out()

    async def refresh(self) -> None:
        """Fetch the latest configuration (the tables changed since the plan)."""
        await self._router.refresh(-1, self._call, wait=False)

    def error(self, failure: SqlFailure, shard: ShardId) -> SqlError:
        return _error(failure, shard, self._catalog.table_names())

    async def _write_one(self, shard: ShardId, batch: Sequence[Fragment]) -> int:
        statements = to_statements(batch)
        num, digest = self._catalog.planned(shard.keyspace)
        writer = await self._writers.acquire(self._call)
        try:
            # One sequence number for all the retries of this batch: applied once.
            seq = writer.next_seq()
            request = SqlWriteRequest(shard, writer.client_id, seq, statements, num, digest)
            reply = await self.send(shard, SQL_WRITE, request, num)
        finally:
            self._writers.release(writer)
        if reply.stale:
            raise StaleWriteError(
                f"the write to shard {shard} was not applied: client id "
                f"{request.client_id!r} already had a write numbered above {seq} applied "
                f"(is another live client using client id {self._router.client_id!r}?)"
            )
        return reply.rowcount

    def failure(self, shard: ShardId, failure: SqlFailure) -> Exception:
        """The error a shard's failed statement raises here."""
        if failure.code == "conflict":
            return TransactionConflictError(failure.message)
        return _error(failure, shard, self._catalog.table_names())

    async def send(
        self, shard: ShardId, method: RpcMethod[Any, SqlReply], request: object, num: int
    ) -> SqlReply:
        """``request`` to ``shard``'s group, waited on while the group is behind the
        client's configuration; a shard's failure raised as its SQL error."""
        router, call = self._router, self._call
        while True:
            reply = await router.call(shard, method, request, call, attempt_s=self._attempt_s)
            if reply.error:
                raise RequestRefusedError(f"{call.what} was refused: {reply.error}")
            if reply.failure is not None:
                raise self.failure(shard, reply.failure)
            if reply.schema == "behind":
                call.why = (
                    f"the group of shard {shard} has yet to reach configuration {num} "
                    f"(it is at {reply.config_num})"
                )
                remaining = call.remaining()
                if remaining <= 0:
                    raise call.timed_out()
                await asyncio.sleep(min(SCHEMA_WAIT_S, remaining))
                continue
            if reply.schema == "changed":
                await router.refresh(reply.config_num - 1, call, wait=False)
                raise SqlSchemaChangedError(
                    f"the tables of shard {shard} changed (its group is at configuration "
                    f"{reply.config_num}) after the statement was planned (at {num})"
                )
            return reply


def _check_batch(shard: ShardId, statements: tuple[SqlStatement, ...]) -> None:
    """The server's limits on a batch, checked before anything is sent, so an INSERT
    too large for one shard's log entry fails whole rather than on some shards."""
    if len(statements) > MAX_SQL_STATEMENTS:
        raise SqlLimitError(
            "max_statements", MAX_SQL_STATEMENTS, f"too many statements for shard {shard}"
        )
    size = len(_encode(statements))
    if size > MAX_SQL_BATCH_BYTES:
        raise SqlLimitError(
            "max_batch_bytes",
            MAX_SQL_BATCH_BYTES,
            f"the rows for shard {shard} take {size} bytes; split the statement",
        )


def _error(failure: SqlFailure, shard: ShardId, tables: Sequence[str]) -> SqlError:
    """A shard's failure as the error the coordinator and callers expect: a limit, or an
    execution error of the kind its code names (unknown codes stay in the message), its
    message naming the user's tables (SQLite on the shard names ``sql_users``: see
    ``shardwise.sql.catalog.physical_name``) and the shard kept aside as a detail."""
    message = logical_names(failure.message, tables)
    limit_kind = error_for(failure.code, SqlLimitError)  # (statement_too_costly is one)
    if limit_kind is not None:
        return limit_kind(failure.limit, failure.value, message)
    if failure.code == NondeterministicSqlError.code:
        return NondeterministicSqlError(f"shard {shard}: {message}")
    if failure.code == SqlSchemaChangedError.code:  # (a transaction's part: replanned)
        return SqlSchemaChangedError(message)
    kind = error_for(failure.code, SqlExecutionError)
    if kind is None:
        return SqlExecutionError(f"{failure.code}: {message}", str(shard))
    return kind(message, str(shard))


def _abbreviate(query: str, limit: int = 60) -> str:
    text = " ".join(query.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
