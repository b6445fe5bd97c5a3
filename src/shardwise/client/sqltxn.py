"""SQL in transactions, on the client: a session's ``BEGIN`` ... ``COMMIT``, and the
statements that are made atomic on their own.

A statement inside a transaction is planned as any other, but its fragments *visit*
their shards (``txn.sql``: a read on the group's leader, nothing logged) instead of
reading or writing them: each visit runs the transaction's own writes on that shard so
far, then the fragment, and rolls it all back, so the transaction reads its own writes
and learns each write's row count and errors at once. Every visit also returns the
shard's SQL version; the commit (``client/txn.py``) validates each at prepare, where
the writes are tried again and locked, and applies them at commit. Serializable: see
``docs/sql.md``, "Transactions".

A write to several shards outside a transaction is a transaction of its own with
*blind* parts (nothing read, nothing to validate): prepared everywhere (each shard
tries its statements, so a broken constraint anywhere refuses it everywhere), then
committed.
"""

from __future__ import annotations

import asyncio
import random
import re
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Final, TypeVar

import msgspec

from shardwise.errors import (
    SqlConstraintError,
    SqlError,
    SqlLimitError,
    SqlSchemaChangedError,
    UnsupportedSqlError,
)
from shardwise.model.config import ShardId
from shardwise.model.sql import RowCapture, SqlStatement
from shardwise.model.txn import (
    MAX_TXN_BYTES,
    MAX_TXN_PARTICIPANTS,
    TransactionConflictError,
    TransactionError,
)
from shardwise.net.loop import gather_or_cancel
from shardwise.shardserver.protocol import TXN_SQL, ShippedRows, SqlReply, TxnSqlRequest
from shardwise.sql.plans import CatalogOp, Fragment, ShardBatch

if TYPE_CHECKING:
    from shardwise.client.sql import ClusterShards
    from shardwise.client.sql_catalog import ClusterCatalog
    from shardwise.client.txn import Transaction
    from shardwise.sql.catalog import Catalog
    from shardwise.sql.executor import Row
    from shardwise.sql.index_tables import IndexMaintenance

_T = TypeVar("_T")

CONTROL: Final = re.compile(
    r"^\s*(BEGIN|START\s+TRANSACTION|COMMIT|END|ROLLBACK|ABORT)"
    r"(\s+(WORK|TRANSACTION))?\s*;?\s*$",
    re.IGNORECASE,
)
"""Transaction control, recognised before planning: ``BEGIN`` (or ``START
TRANSACTION``), ``COMMIT`` (or ``END``), ``ROLLBACK`` (or ``ABORT``)."""

_encode = msgspec.msgpack.Encoder().encode

BLIND_RETRY_PAUSE_S: Final = 0.005
MAX_BLIND_RETRY_PAUSE_S: Final = 0.2
"""Back-off of a statement made atomic on its own when a transaction holds its shards:
doubling from the first, up to the larger of this and twice the attempt's own time (a
write to every shard of a keyspace, a reference table's, takes long enough that writers
pausing less than it would meet each other again at every retry)."""


def control_word(query: str) -> str | None:
    """``begin``, ``commit`` or ``rollback`` for a transaction-control statement."""
    found = CONTROL.match(query)
    if found is None:
        return None
    word = found.group(1).split()[0].upper()
    return {"BEGIN": "begin", "START": "begin", "COMMIT": "commit", "END": "commit"}.get(
        word, "rollback"
    )


def to_statements(batch: Sequence[Fragment]) -> tuple[SqlStatement, ...]:
    return tuple(SqlStatement(f.sql, dict(f.params), f.rows) for f in batch)


class TxnShards:
    """A :class:`~shardwise.sql.executor.ShardExecutor` whose fragments visit their
    shards inside transaction ``tx`` (see the module docstring); ``cluster`` sends them."""

    def __init__(self, tx: Transaction, cluster: ClusterShards) -> None:
        self._tx = tx
        self._cluster = cluster

    async def read(self, shard: ShardId, fragment: Fragment, max_rows: int) -> list[Row]:
        statement = SqlStatement(fragment.sql, dict(fragment.params))
        reply = await self._visit(shard, (), statement, max_rows, shipped_rows(fragment))
        return [tuple(row) for row in reply.rows]

    async def read_shards(
        self, keyspace: str, shards: Sequence[int], fragment: Fragment, max_rows: int
    ) -> list[list[Row]]:
        """Each shard visited on its own (a visit runs the transaction's writes there)."""
        return await gather_or_cancel(
            [self.read(ShardId(keyspace, i), fragment, max_rows) for i in shards]
        )

    async def read_snapshot(
        self, keyspace: str, shards: Sequence[int], fragment: Fragment, max_rows: int
    ) -> list[list[Row]]:
        """The transaction's visits are validated together at its commit already."""
        return await self.read_shards(keyspace, shards, fragment, max_rows)

    async def write(
        self,
        keyspace: str,
        batches: Sequence[ShardBatch],
        maintenance: IndexMaintenance | None = None,
        *,
        try_entries: bool = True,
    ) -> int:
        """Every batch tried on its shard after the transaction's earlier writes there;
        kept only if all ran (a failed statement leaves the transaction as it was). With
        ``maintenance``, the global index entries the changes call for are kept too
        (``try_entries``: tried on their shards now, so a duplicate in a UNIQUE index
        fails this statement rather than the commit)."""
        tried = [(ShardId(keyspace, b.shard), to_statements(b.statements)) for b in batches]
        capture = (maintenance.capture,) if maintenance is not None else ()
        replies = await gather_or_cancel(
            [self._visit(shard, st, None, 0, capture=capture) for shard, st in tried]
        )
        entries: list[tuple[ShardId, tuple[SqlStatement, ...]]] = []
        if maintenance is not None:
            for batch in maintenance.batches([reply.captured[0] for reply in replies]):
                entries.append((ShardId(keyspace, batch.shard), to_statements(batch.statements)))
            if try_entries and entries:
                await gather_or_cancel(
                    [self._visit(shard, st, None, 0, index=maintenance) for shard, st in entries]
                )
        planned = self._cluster.planned(keyspace)
        for shard, statements in tried:
            self._tx.add_sql(shard, statements, planned)
        for shard, statements in entries:
            self._tx.add_sql(shard, statements, planned, blind=True)
        return sum(reply.rowcount for reply in replies)

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
        """A build's step is never part of the session's transaction."""
        return await self._cluster.fill(
            keyspace, shard, read, max_rows, entries, in_flight=in_flight
        )

    async def _visit(
        self,
        shard: ShardId,
        statements: tuple[SqlStatement, ...],
        read: SqlStatement | None,
        max_rows: int,
        shipped: tuple[ShippedRows, ...] = (),
        *,
        capture: tuple[RowCapture, ...] = (),
        index: IndexMaintenance | None = None,
    ) -> SqlReply:
        state = self._tx.sql_state(shard)
        pending = tuple(state.statements) if state is not None else ()
        num, digest = self._cluster.planned(shard.keyspace)
        request = TxnSqlRequest(
            shard, pending, statements, read, max_rows, num, digest, shipped, capture
        )
        try:
            reply = await self._cluster.send(shard, TXN_SQL, request, num)
        except SqlConstraintError as exc:
            if index is None:
                raise
            raise index.violation(exc) from None
        self._tx.saw_sql(shard, reply.version)
        return reply


class TxnCatalog:
    """The catalog as a transaction sees it. DDL is atomic on its own (one
    configuration), not part of a transaction. In a transaction that has written
    nothing yet it commits what was read (``before_ddl``: the reads validated, a new
    transaction begun, as MySQL commits before DDL), then runs, so drivers that open a
    transaction for everything work; in one that has written it is refused."""

    def __init__(
        self,
        tx: Transaction,
        catalog: ClusterCatalog,
        before_ddl: Callable[[], Awaitable[None]],
    ) -> None:
        self._tx = tx
        self._catalog = catalog
        self._before_ddl = before_ddl

    async def catalog(self) -> Catalog:
        return await self._catalog.catalog()

    async def change(self, op: CatalogOp) -> Catalog:
        if self._tx.has_writes:
            raise UnsupportedSqlError(
                "DDL in a transaction that has written",
                "COMMIT first: a DDL statement takes effect at once, on its own",
            )
        await self._before_ddl()
        return await self._catalog.change(op)


async def write_maintained(
    cluster: ClusterShards,
    begin: Callable[[], Transaction],
    keyspace: str,
    batches: Sequence[ShardBatch],
    maintenance: IndexMaintenance,
) -> int:
    """A write to a table with global indexes, outside a transaction: a transaction of
    its own that visits the written shards (recording the rows the write changes), adds
    the index entries they call for, and commits; run again after a conflict (the
    written shards changed since the visit) until the statement's deadline."""
    _check_atomic_bounds(keyspace, batches)

    async def attempt(tx: Transaction) -> int:
        shards = TxnShards(tx, cluster)
        return await shards.write(keyspace, batches, maintenance, try_entries=False)

    shards = [ShardId(keyspace, batch.shard) for batch in batches]
    return await _retried(cluster, begin, shards, attempt, maintenance)


async def read_snapshot(
    cluster: ClusterShards,
    begin: Callable[[], Transaction],
    *,
    keyspace: str,
    shards: Sequence[int],
    fragment: Fragment,
    max_rows: int,
) -> list[list[Row]]:
    """``ShardExecutor.read_snapshot``: the shards visited in a transaction that only
    reads, committed (its commit checks every shard's SQL version again, so the rows are
    those of one moment); again after a conflict, until the statement's deadline."""

    async def attempt(tx: Transaction) -> list[list[Row]]:
        return await TxnShards(tx, cluster).read_shards(keyspace, shards, fragment, max_rows)

    return await _retried(cluster, begin, [], attempt, None)


async def _retried(
    cluster: ClusterShards,
    begin: Callable[[], Transaction],
    shards: list[ShardId],
    attempt: Callable[[Transaction], Awaitable[_T]],
    maintenance: IndexMaintenance | None,
) -> _T:
    """``attempt`` in a new transaction, committed; again after a conflict (a shard it
    visited changed, or another transaction held one) until the statement's deadline.
    A statement that failed on a shard raises its error (a duplicate in a global
    index's UNIQUE index in the index's terms)."""
    pause = BLIND_RETRY_PAUSE_S
    clock = asyncio.get_running_loop().time
    try:
        async with cluster.turns.holding(shards, cluster.remaining()):
            while True:
                started = clock()
                tx = begin()
                try:
                    result = await attempt(tx)
                    await tx.commit()
                    return result
                except TransactionConflictError:
                    if tx.sql_failure is not None:
                        shard, failure = tx.sql_failure
                        error = cluster.error(failure, shard)
                        if isinstance(error, SqlSchemaChangedError):
                            await cluster.refresh()
                        if isinstance(error, SqlConstraintError) and maintenance is not None:
                            error = maintenance.violation(error)
                        raise error from None
                finally:
                    tx.abort()
                took = clock() - started
                if cluster.remaining() <= pause:
                    raise cluster.timed_out()
                await asyncio.sleep(random.uniform(0, pause))
                pause = min(max(MAX_BLIND_RETRY_PAUSE_S, 2 * took), 2 * pause)
    except TimeoutError:
        raise cluster.timed_out() from None


async def write_atomically(
    cluster: ClusterShards,
    begin: Callable[[], Transaction],
    keyspace: str,
    batches: Sequence[ShardBatch],
) -> int:
    """A write to several shards as a transaction of its own (blind parts), committed; run
    again while another transaction holds a shard (a lock conflict: nothing was read, so
    nothing else can conflict) until the statement's deadline. The rows changed."""
    _check_atomic_bounds(keyspace, batches)
    shards = [ShardId(keyspace, batch.shard) for batch in batches]
    try:
        async with cluster.turns.holding(shards, cluster.remaining()):
            return await _write_in_turn(cluster, begin, keyspace, batches)
    except TimeoutError:
        raise cluster.timed_out() from None


async def _write_in_turn(
    cluster: ClusterShards,
    begin: Callable[[], Transaction],
    keyspace: str,
    batches: Sequence[ShardBatch],
) -> int:
    pause = BLIND_RETRY_PAUSE_S
    clock = asyncio.get_running_loop().time
    while True:
        started = clock()
        tx = begin()
        planned = cluster.planned(keyspace)
        for batch in batches:
            shard, statements = ShardId(keyspace, batch.shard), to_statements(batch.statements)
            tx.add_sql(shard, statements, planned, blind=True)
        try:
            await tx.commit()
            return tx.rowcount
        except TransactionConflictError:
            if tx.sql_failure is not None:
                shard, failure = tx.sql_failure
                error = cluster.error(failure, shard)
                if isinstance(error, SqlSchemaChangedError):
                    await cluster.refresh()  # (planned again by the caller, on the new tables)
                raise error from None
        took = clock() - started
        if cluster.remaining() <= pause:
            raise cluster.timed_out()
        await asyncio.sleep(random.uniform(0, pause))
        pause = min(max(MAX_BLIND_RETRY_PAUSE_S, 2 * took), 2 * pause)


def _check_atomic_bounds(keyspace: str, batches: Sequence[ShardBatch]) -> None:
    """A write to several shards is one transaction: refused, before anything is sent,
    past a transaction's bounds (shards, bytes), with what to do instead."""
    if len(batches) > MAX_TXN_PARTICIPANTS:
        raise SqlLimitError(
            "max_txn_participants",
            MAX_TXN_PARTICIPANTS,
            f"the write touches {len(batches)} shards of keyspace {keyspace!r}, and a write "
            f"is atomic across at most {MAX_TXN_PARTICIPANTS}: narrow it with a WHERE on the "
            "distribution column, or split it",
        )
    size = sum(len(_encode(to_statements(b.statements))) for b in batches)
    if size > MAX_TXN_BYTES:
        raise SqlLimitError(
            "max_txn_bytes",
            MAX_TXN_BYTES,
            f"the write takes {size} bytes over {len(batches)} shards, and a write to "
            f"several shards is atomic up to {MAX_TXN_BYTES} bytes: split it",
        )


def sql_error_of(tx: Transaction, exc: TransactionError, cluster: ClusterShards) -> Exception:
    """What a refused commit raises to a SQL caller: a participant's SQL error if its
    statements failed at prepare, else the transaction error itself."""
    if isinstance(exc, TransactionConflictError) and tx.sql_failure is not None:
        shard, failure = tx.sql_failure
        error: SqlError = cluster.error(failure, shard)
        return error
    return exc


def shipped_rows(fragment: Fragment) -> tuple[ShippedRows, ...]:
    """A read fragment's shipped tables as a request carries them."""
    return tuple(
        ShippedRows(t.name, t.columns, tuple(tuple(row) for row in t.rows))
        for t in fragment.shipped
    )
