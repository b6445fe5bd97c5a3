"""Transactions on the client: reads remembered with their versions, writes buffered,
and the commit (``src/shardwise/shardserver/DESIGN.md``, "Transactions").

::

    async with client.transaction() as tx:
        balance = int(await tx.get("alice") or 0)
        tx.put("alice", str(balance - 10))
        tx.put("bob", str(int(await tx.get("bob") or 0) + 10))

A commit is, by where the transaction's shards are:

* **none written** (read only): every key read is read again, linearizably; if none
  changed, the transaction committed at the moment of the first of these second reads
  (no log entry at all);
* **one group** holds them all: one ``txn.commit``, one log entry, validated and
  applied together (de-duplicated like a write, so a retry applies once);
* **several groups**: a ``txn.prepare`` to each group at once (one log entry each). The
  transaction is committed as soon as every participant is prepared; the client says so
  and resolves the participants in the background (``txn.resolve``).

An unknown vote (a prepare that timed out, a shard that moved) is never guessed at: the
client *fences* that participant (``txn.fence``), which records an outcome there if there
was none, and decides from the recorded states, as a participant's recovery would.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final, TypeVar

from shardwise.errors import ClientError, ClientTimeoutError, RequestRefusedError, ShardLimitError
from shardwise.model.config import ShardId
from shardwise.model.kv import Delete, Key, Put, Value, key_bytes
from shardwise.model.schemes import shard_map
from shardwise.model.sql import SqlStatement
from shardwise.model.txn import (
    BLIND,
    MAX_TXN_KEYS,
    TransactionConflictError,
    TransactionOutcomeUnknownError,
    TxnPart,
    TxnRead,
    TxnSql,
    TxnState,
    TxnVote,
    TxnWrite,
    check_parts,
    new_txn_id,
)
from shardwise.net.leader import CallDeadline
from shardwise.net.rpc import RpcMethod
from shardwise.shardserver.protocol import (
    READ,
    TXN_COMMIT,
    TXN_PREPARE,
    TXN_SQL,
    ReadRequest,
    SqlFailure,
    TxnCommitRequest,
    TxnPrepareRequest,
    TxnReply,
    TxnSqlRequest,
)
from shardwise.shardserver.txn.client import TxnResolver, split_by_group

if TYPE_CHECKING:
    from shardwise.client.router import ShardRouter
    from shardwise.client.writers import WriterPool

logger = logging.getLogger(__name__)

MAX_FINISHING: Final = 256
"""Transactions a client resolves in the background at once; past it, a commit waits
for its own resolution (back-pressure, rather than an unbounded set of tasks)."""

DEFAULT_MAX_ATTEMPTS: Final = 10
"""Attempts of ``run_transaction`` before the last conflict is raised."""

RETRY_PAUSE_S: Final = 0.005
MAX_RETRY_PAUSE_S: Final = 0.5
"""Back-off between attempts of ``run_transaction``: random, doubling up to this."""

T = TypeVar("T")
Req = TypeVar("Req")


@dataclass(slots=True)
class _Seen:
    key: Key
    value: Value | None
    version: int


@dataclass(slots=True)
class SqlShardState:
    """What a transaction did with one shard's SQL: the SQL version its first visit saw
    (every later visit must see the same) and its write statements there, in order."""

    version: int
    statements: list[SqlStatement] = field(default_factory=list)
    planned: tuple[int, int] = (0, 0)
    """The configuration and schema digest its statements were planned with (the
    latest statement's: a transaction's statements on one shard meet one SQL version,
    hence one set of tables)."""


class Finisher:
    """The background resolution of committed (or aborted) transactions: each resolves
    every participant. ``close`` waits for them a while."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[None]] = set()
        self._room = asyncio.Semaphore(MAX_FINISHING)

    async def start(self, work: Awaitable[None]) -> None:
        await self._room.acquire()
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._room.release()
        if not task.cancelled() and (exc := task.exception()) is not None:
            logger.info("resolving a transaction in the background failed: %r", exc)

    async def close(self, timeout_s: float) -> None:
        if not self._tasks:
            return
        _, pending = await asyncio.wait(set(self._tasks), timeout=timeout_s)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)


class RouterParticipants:
    """A client reaches participants through its router (``txn/client.Participants``)."""

    def __init__(self, router: ShardRouter) -> None:
        self.router = router

    async def call_shard(
        self, shard: ShardId, method: RpcMethod[Req, TxnReply], request: Req, call: CallDeadline
    ) -> TxnReply:
        return await self.router.call(shard, method, request, call)

    async def by_group(
        self, shards: Iterable[ShardId], call: CallDeadline
    ) -> tuple[list[list[ShardId]], list[ShardId]]:
        return split_by_group(await self.router.configuration_at_least(-1, call), shards)

    async def newer_configuration(self, call: CallDeadline) -> None:
        config = self.router.configuration
        await self.router.refresh(config.num if config else -1, call, wait=True)


class TxnProtocol:
    """What a client's transactions share: the router, the writer ids, the resolver and
    the background resolution."""

    def __init__(
        self, router: ShardRouter, writers: WriterPool, keyspace: str, finisher: Finisher
    ) -> None:
        self.router = router
        self.writers = writers
        self.keyspace = keyspace
        self.finisher = finisher
        self.participants = RouterParticipants(router)
        self.resolver = TxnResolver(self.participants)

    async def shard_of(self, key: Key, call: CallDeadline) -> ShardId:
        return shard_map(await self.router.keyspace(self.keyspace, call)).shard(key)

    async def read(self, key: Key, call: CallDeadline, *, validated: bool = True) -> _Seen:
        """A transaction's read of ``key``: its value and version. ``validated``: the
        commit checks the version again (as every first read's is), so the leader may
        answer from its applied state without a ReadIndex round; the re-reads of a
        read-only commit are that check, so they are linearizable."""
        shard = await self.shard_of(key, call)
        # (A plain read marked ``versioned``: it rides in the client's batches.)
        request = ReadRequest(shard, key, versioned=True, validated=validated)
        reply = await self.router.call(shard, READ, request, call)
        return _Seen(key, reply.value, reply.version)

    async def sql_version(self, shard: ShardId, call: CallDeadline) -> int:
        """The shard's SQL version now (a visit that runs nothing)."""
        reply = await self.router.call(shard, TXN_SQL, TxnSqlRequest(shard), call)
        if reply.error:
            raise RequestRefusedError(f"{call.what} was refused: {reply.error}")
        if reply.status != "ok" or reply.version < 0:
            raise TransactionConflictError(f"shard {shard} could not say its SQL version")
        return reply.version


def _refused(reply: TxnReply, call: CallDeadline) -> None:
    if reply.error:
        raise RequestRefusedError(f"{call.what} was refused: {reply.error}")


class Transaction:
    """One transaction (see the module docstring). Use it as an async context manager
    (commits on exit, aborts on an exception) or call :meth:`commit` yourself."""

    def __init__(self, protocol: TxnProtocol, deadline: float, *, ordered: bool = False) -> None:
        """``ordered``: prepare the participants one shard at a time, in shard order,
        stopping at the first refusal (a retry after a conflict: see DESIGN.md on
        livelock), rather than every group at once."""
        self._p = protocol
        self._deadline = deadline
        self._ordered = ordered
        self._seen: dict[bytes, _Seen] = {}
        self._writes: dict[bytes, TxnWrite] = {}
        self._sql: dict[ShardId, SqlShardState] = {}
        self._state = "open"
        self.rowcount = 0
        """After a commit: the rows its SQL statements changed, as the shards counted
        them when they prepared (a statement made atomic: see ``client/sql.py``)."""
        self.sql_failure: tuple[ShardId, SqlFailure] | None = None
        """After a refused commit: the SQL error a participant's statements met (the
        commit raised :class:`TransactionConflictError`; SQL callers raise this)."""

    def set_deadline(self, deadline: float) -> None:
        """Move the transaction's deadline (a SQL session gives each statement its own)."""
        self._deadline = deadline

    # --- reads and writes ----------------------------------------------------------------

    async def get(self, key: Key) -> Value | None:
        """The key's value as this transaction sees it: its own write if it made one,
        else what it read before, else a read now (remembered with its version)."""
        self._check_open()
        raw = key_bytes(key)
        if raw in self._writes:
            write = self._writes[raw]
            return write.value if isinstance(write, Put) else None
        if raw not in self._seen:
            call = self._call(f"transaction read of {key!r}")
            self._seen[raw] = await self._p.read(key, call)
        return self._seen[raw].value

    async def get_many(self, keys: Iterable[Key]) -> dict[Key, Value | None]:
        """Each key's value as :meth:`get` would give it, the reads sent at once."""
        self._check_open()
        wanted = list(dict.fromkeys(keys))
        missing = [
            k for k in wanted if key_bytes(k) not in self._writes and key_bytes(k) not in self._seen
        ]
        if missing:
            call = self._call(f"transaction read of {len(missing)} keys")
            found = await asyncio.gather(*(self._p.read(k, call) for k in missing))
            for seen in found:
                self._seen.setdefault(key_bytes(seen.key), seen)
        return {k: await self.get(k) for k in wanted}

    def put(self, key: Key, value: Value) -> None:
        self._check_open()
        self._buffer(Put(key, value))

    def delete(self, key: Key) -> None:
        self._check_open()
        self._buffer(Delete(key))

    # --- SQL (``client/sqltxn.py`` visits the shards) -------------------------------------

    @property
    def has_writes(self) -> bool:
        """Whether the transaction has written anything (keys or SQL)."""
        return bool(self._writes) or any(s.statements for s in self._sql.values())

    def sql_state(self, shard: ShardId) -> SqlShardState | None:
        return self._sql.get(shard)

    def saw_sql(self, shard: ShardId, version: int) -> SqlShardState:
        """Note a visit to ``shard``'s SQL that saw ``version``: a conflict (the
        transaction cannot commit) if an earlier visit saw another."""
        self._check_open()
        state = self._sql.get(shard)
        if state is None:  # (bounded by the shards there are; a commit that writes checks)
            state = self._sql[shard] = SqlShardState(version)
        elif state.version != version:
            self._state = "failed"
            raise TransactionConflictError(
                f"the SQL tables of shard {shard} changed while the transaction ran"
            )
        return state

    def add_sql(
        self,
        shard: ShardId,
        statements: Iterable[SqlStatement],
        planned: tuple[int, int],
        *,
        blind: bool = False,
    ) -> None:
        """Keep write statements for ``shard``, planned with configuration and schema
        digest ``planned`` (``blind``: never visited; a statement made atomic on its own,
        with nothing to validate)."""
        self._check_open()
        if blind:
            self._sql.setdefault(shard, SqlShardState(BLIND))
        state = self._sql[shard]
        state.statements.extend(statements)
        state.planned = planned

    def _buffer(self, write: TxnWrite) -> None:
        raw = key_bytes(write.key)
        if raw not in self._writes and len(self._writes) + len(self._seen) >= MAX_TXN_KEYS:
            raise RequestRefusedError(f"a transaction reads and writes at most {MAX_TXN_KEYS} keys")
        self._writes.pop(raw, None)  # (re-inserted last: the write order is kept)
        self._writes[raw] = write

    # --- the end -------------------------------------------------------------------------

    async def commit(self) -> None:
        """Commit, or raise :class:`TransactionConflictError` (nothing changed) or
        :class:`TransactionOutcomeUnknownError` (the deadline passed first)."""
        self._check_open()
        self._state = "committing"
        try:
            await self._commit()
            self._state = "committed"
        except BaseException:
            self._state = "failed"
            raise

    def abort(self) -> None:
        """Drop the transaction: nothing was sent that changes anything."""
        if self._state == "open":
            self._state = "aborted"

    async def __aenter__(self) -> Transaction:
        return self

    async def __aexit__(self, exc_type: object, *_: object) -> None:
        if exc_type is None and self._state == "open":
            await self.commit()
        else:
            self.abort()

    def _check_open(self) -> None:
        if self._state != "open":
            raise ClientError(f"the transaction is {self._state}")

    def _call(self, what: str) -> CallDeadline:
        return CallDeadline.starting_now(what, self._deadline)

    async def _commit(self) -> None:
        call = self._call("transaction commit")
        parts = await self.parts(call)
        if not parts:
            return
        if not self.has_writes:  # (no participant: not bound by their limits)
            await self._validate_reads(call)
            return
        try:
            check_parts(tuple(parts.values()))
        except ShardLimitError as exc:
            raise RequestRefusedError(f"the transaction was refused: {exc}") from None
        try:
            config = await self._p.router.configuration_at_least(-1, call)
            groups = {config.owner(shard) for shard in parts}
            if len(groups) == 1:
                await self._commit_in_one_group(parts, call)
            else:
                await self._two_phase(parts, call)
        except ClientTimeoutError as exc:
            raise TransactionOutcomeUnknownError(str(exc)) from exc

    @property
    def protocol(self) -> TxnProtocol:
        return self._p

    @property
    def state(self) -> str:
        """``open``, ``committing``, ``committed``, ``aborted`` or ``failed``."""
        return self._state

    async def parts(self, call: CallDeadline) -> dict[ShardId, TxnPart]:
        """Each participant's part, as a commit now would send them."""
        reads: dict[ShardId, list[TxnRead]] = {}
        writes: dict[ShardId, list[TxnWrite]] = {}
        for seen in self._seen.values():
            shard = await self._p.shard_of(seen.key, call)
            reads.setdefault(shard, []).append(TxnRead(seen.key, seen.version))
        for write in self._writes.values():
            shard = await self._p.shard_of(write.key, call)
            writes.setdefault(shard, []).append(write)
        sql = {s: TxnSql(v.version, tuple(v.statements), *v.planned) for s, v in self._sql.items()}
        return {
            shard: TxnPart(
                shard, tuple(reads.get(shard, ())), tuple(writes.get(shard, ())), sql.get(shard)
            )
            for shard in sorted({*reads, *writes, *sql})
        }

    async def _validate_reads(self, call: CallDeadline) -> None:
        """A read-only transaction: every key read again, linearizably; any changed, a
        conflict. (Each key kept the value its first answer showed until its second
        reading, and every second reading comes after every first: so all were current
        together at the first second reading. DESIGN.md, "Transactions".)"""
        again = await asyncio.gather(
            *(self._p.read(s.key, call, validated=False) for s in self._seen.values())
        )
        for before, now in zip(self._seen.values(), again, strict=True):
            if now.version != before.version:
                raise TransactionConflictError(
                    f"the transaction read {before.key!r}, which changed before it committed"
                )
        shards = list(self._sql)
        versions = await asyncio.gather(*(self._p.sql_version(s, call) for s in shards))
        for shard, version in zip(shards, versions, strict=True):
            if version != self._sql[shard].version:
                raise TransactionConflictError(
                    f"the transaction read the SQL tables of shard {shard}, which changed "
                    "before it committed"
                )

    async def _commit_in_one_group(self, parts: dict[ShardId, TxnPart], call: CallDeadline) -> None:
        writer = await self._p.writers.acquire(call)
        try:
            ordered = tuple(parts.values())
            request = TxnCommitRequest(writer.client_id, writer.next_seq(), ordered)
            reply = await self._p.router.call(ordered[0].shard, TXN_COMMIT, request, call)
        finally:
            self._p.writers.release(writer)
        self._sql_refused(reply, ordered[0].shard)
        _refused(reply, call)
        vote = reply.votes[0] if reply.votes else TxnVote(ordered[0].shard, "")
        if vote.state == TxnState.COMMITTED:
            self.rowcount = vote.rowcount
            return
        if vote.state == TxnState.ABORTED:
            self._note_sql_failure(vote)
            raise TransactionConflictError(f"the transaction did not commit: {vote.reason}")
        if vote.state == "wrong_group":  # not applied: the shards moved; plan again
            await self._p.router.refresh(reply.config_num, call, wait=True)
            await self._commit()  # (state "committing": allowed)
            return
        raise ClientError(f"the transaction's commit answered {vote.state!r}")

    async def _two_phase(self, parts: dict[ShardId, TxnPart], call: CallDeadline) -> None:
        txn = new_txn_id()
        participants = tuple(parts)
        votes: dict[ShardId, str] = {}
        rows: dict[ShardId, int] = {}
        reasons: list[str] = []
        if self._ordered:  # one shard at a time, in shard order (see __init__)
            by_group = [[shard] for shard in sorted(participants)]
        else:
            by_group, _ = await self._p.participants.by_group(participants, call)

        async def prepare(group: list[ShardId]) -> None:
            request = TxnPrepareRequest(txn, participants, tuple(parts[s] for s in group))
            try:
                reply = await self._p.router.call(group[0], TXN_PREPARE, request, call)
            except ClientTimeoutError:
                return  # unknown: settled by a fence
            if reply.sql_failure is not None:  # refused at the door: nothing recorded
                self.sql_failure = self.sql_failure or (group[0], reply.sql_failure)
                votes.update((shard, TxnState.ABORTED) for shard in group)
                reasons.append(reply.error)
                return
            _refused(reply, call)
            for vote in reply.votes:
                votes[vote.shard] = vote.state
                rows[vote.shard] = vote.rowcount
                self._note_sql_failure(vote)
                if vote.reason:
                    reasons.append(vote.reason)

        if self._ordered:
            for group in by_group:
                await prepare(group)
                if any(votes.get(s) == TxnState.ABORTED for s in group):
                    break  # the rest would be refused alike: settle knows it aborted
        else:
            await asyncio.gather(*(prepare(group) for group in by_group))
        try:
            committed = await self._p.resolver.settle(txn, participants, votes, call)
        except ClientTimeoutError as exc:
            raise TransactionOutcomeUnknownError(
                f"transaction {txn}: the deadline passed before every participant answered"
            ) from exc
        await self._p.finisher.start(self._p.resolver.finish(txn, participants, committed))
        self.rowcount = sum(rows.values())
        if not committed:
            why = reasons[0] if reasons else "a participant could not prepare in time"
            raise TransactionConflictError(f"the transaction did not commit: {why}")

    def _note_sql_failure(self, vote: TxnVote) -> None:
        if vote.code and self.sql_failure is None:
            self.sql_failure = (vote.shard, SqlFailure(vote.code, vote.reason))

    def _sql_refused(self, reply: TxnReply, shard: ShardId) -> None:
        """A part's SQL refused at the door: the statement's own error, not a conflict."""
        if reply.sql_failure is not None:
            self.sql_failure = (shard, reply.sql_failure)
            raise TransactionConflictError(f"the transaction was refused: {reply.error}")


async def run_transaction(
    begin: Callable[[bool], Transaction],
    body: Callable[[Transaction], Awaitable[T]],
    *,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    pause: Callable[[int], float],
) -> T:
    """``body`` in a transaction, committed; again from the start after each conflict
    (up to ``max_attempts``, with ``pause(attempt)`` seconds between; retries prepare in
    order: ``begin(ordered)``)."""
    for attempt in range(1, max_attempts + 1):
        tx = begin(attempt > 1)
        try:
            result = await body(tx)
            await tx.commit()
            return result
        except TransactionConflictError:
            if attempt == max_attempts:
                raise
        await asyncio.sleep(pause(attempt))
    raise AssertionError("unreachable")
