"""A group server's transaction RPCs: each checked at the door, then through the Raft
host (a read through ReadIndex, everything else as one log entry).

``txn.read`` is a transaction's read (the value and its version); ``txn.sql`` its visit
to a shard's SQL (a read, or a write tried: ``TxnSqlRequest``); ``txn.commit`` a whole
transaction whose every part this group serves (one entry); ``txn.prepare``,
``txn.resolve`` and ``txn.fence`` the steps of one that spans groups. The leader also
logs a ``TxnExpire`` now and then (``recovery.py``): the records too old to matter go.
The protocol and its failure cases are in DESIGN.md, "Transactions".
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import msgspec

from shardwise.controller.client import ControllerClient
from shardwise.errors import (
    NondeterministicSqlError,
    ShardLimitError,
    SqlError,
    SqlWriteTooCostlyError,
)
from shardwise.model.access import Privilege
from shardwise.model.config import ShardId
from shardwise.model.txn import (
    MAX_TXN_BYTES,
    MAX_TXN_STATEMENTS,
    TxnPart,
    check_parts,
    check_txn_id,
    txn_tag,
    wall_ms,
)
from shardwise.net.endpoint import Endpoint
from shardwise.net.leader import CallDeadline, loop_time
from shardwise.net.rpc import CallContext, RpcMethod
from shardwise.net.wire import PeerRole
from shardwise.raft.host import RaftHost
from shardwise.service import REQUEST_TIMEOUT_S, through_host
from shardwise.shardserver.access import AccessGuard
from shardwise.shardserver.commands import (
    Command,
    GroupResult,
    TxnCommit,
    TxnFence,
    TxnPrepare,
    TxnResolve,
    decode_result,
    encode,
)
from shardwise.shardserver.protocol import (
    TXN_COMMIT,
    TXN_FENCE,
    TXN_PREPARE,
    TXN_READ,
    TXN_RESOLVE,
    TXN_SQL,
    KVReply,
    ReadRequest,
    SqlFailure,
    SqlReply,
    TxnCommitRequest,
    TxnPrepareRequest,
    TxnReply,
    TxnShardsRequest,
    TxnSqlRequest,
)
from shardwise.shardserver.sql_checks import check_batch, check_params, check_statement
from shardwise.shardserver.sqlshard import (
    MAX_WRITE_SECONDS,
    MAX_WRITE_STEPS,
    failure_of,
    result_failure,
    shipped_of,
    shipped_refusal,
)
from shardwise.shardserver.statemachine import ShardGroupStateMachine
from shardwise.shardserver.txn.recovery import ConfigParticipants, TxnRecovery
from shardwise.sql.capture import capture_refusal

Req = TypeVar("Req")

_encode = msgspec.msgpack.Encoder().encode

SqlDenied = Callable[..., SqlReply | None]
"""The server's check of SQL statements against the caller's grants: ``(context, shard,
[(sql, params)], writing=...)``, a refusal or None."""


class TxnHandlers:
    """Serves the transaction RPCs on ``transport`` for the group ``host`` replicates."""

    def __init__(
        self,
        host: RaftHost[ShardGroupStateMachine],
        transport: Endpoint,
        controller: ControllerClient,
        access: AccessGuard,
        sql_denied: SqlDenied,
        *,
        sql_write_max_steps: int = MAX_WRITE_STEPS,
        sql_write_max_seconds: float = MAX_WRITE_SECONDS,
    ) -> None:
        self.host = host
        self._access = access
        self._keyspace_denied = access.kv_denied
        self._sql_denied = sql_denied
        self._max_steps = sql_write_max_steps
        self._max_seconds = sql_write_max_seconds
        sm = host.state_machine
        participants = ConfigParticipants(
            transport, lambda: sm.config, controller, gid=sm.gid, local=self.call_locally
        )
        self.recovery = TxnRecovery(host, participants)
        """The leader's recovery of transactions left prepared (run by the server)."""
        transport.serve(TXN_READ, self._read)
        transport.serve(TXN_PREPARE, self._prepare)
        transport.serve(TXN_COMMIT, self._commit)
        transport.serve(TXN_RESOLVE, self._resolve)
        transport.serve(TXN_FENCE, self._fence)
        transport.serve(TXN_SQL, self._sql)

    async def call_locally(
        self, method: RpcMethod[Req, TxnReply], request: Req, call: CallDeadline
    ) -> TxnReply:
        """One of the shard-list RPCs, called by this server on its own group (as a node:
        no user, so no grant to check)."""
        handlers: dict[str, Callable[[Any, CallContext], Awaitable[TxnReply]]] = {
            TXN_RESOLVE.name: self._resolve,
            TXN_FENCE.name: self._fence,
        }
        context = CallContext(self.host.id, PeerRole.NODE, loop_time() + call.remaining())
        return await handlers[method.name](request, context)

    # --- the door ------------------------------------------------------------------------

    def _denied(self, context: CallContext, need: Privilege, shard: ShardId) -> str | None:
        return self._keyspace_denied(context, need, shard.keyspace)

    def _parts_denied(self, context: CallContext, parts: tuple[TxnPart, ...]) -> str | None:
        """KV reads and writes need a grant on the keyspace; SQL statements one on each
        table they touch (as a SQL write does); a part that only read SQL, a grant to
        read the keyspace (it holds a shared lock on the shard's tables)."""
        for part in parts:
            statements = part.sql.statements if part.sql is not None else ()
            if statements:
                listed = [(s.sql, s.bindings()) for s in statements]
                refused = self._sql_denied(context, part.shard, listed, writing=True)
                if refused is not None:
                    return refused.error
            if part.writes or part.reads:
                need = Privilege.WRITE if part.writes else Privilege.READ
                if denied := self._denied(context, need, part.shard):
                    return denied
            elif not statements and (denied := self._sql_read_denied(context, part.shard)):
                return denied
        return None

    def _sql_read_denied(self, context: CallContext, shard: ShardId) -> str:
        tables = self.host.state_machine.config.tables
        return self._access.sql_read_denied(context, shard.keyspace, tables)

    def _sql_refused(self, parts: tuple[TxnPart, ...]) -> SqlFailure | None:
        """Why a part's SQL is refused before it is proposed (``None``: it is not): over
        a batch's limits, unbindable values, a function off the allow-list, or (on the
        leader) too slow when tried, as for a SQL write (``server._sql_write``)."""
        sm = self.host.state_machine
        leading = self.host.node.leader == self.host.id
        for part in parts:
            statements = part.sql.statements if part.sql is not None else ()
            if not statements:
                continue
            problem = check_batch(statements)
            if problem:
                return SqlFailure("limit", problem)
            refused = sm.refused_sql(part.shard, statements)
            if refused:
                return SqlFailure(NondeterministicSqlError.code, refused)
            too_slow = leading and sm.time_trial(part.shard, statements, self._max_seconds)
            if too_slow:
                limit_ms = round(self._max_seconds * 1000)
                return SqlFailure(SqlWriteTooCostlyError.code, too_slow, "max_write_ms", limit_ms)
        return None

    def _shards_denied(
        self, context: CallContext, shards: tuple[ShardId, ...], need: Privilege = Privilege.READ
    ) -> str | None:
        """Resolving needs a grant to read the shards (a participant that only read must
        be resolved by its client too), and only the user who prepared a transaction may
        resolve it (checked as it applies: ``state.not_owner``); its id, 64 random bits
        that no reply shows (``txn_tag``), is needed too. Fencing records a state even for
        an id nobody prepared, so it needs a grant to write."""
        for shard in shards:
            if denied := self._denied(context, need, shard):
                return denied
        return None

    async def propose(self, command: Command) -> TxnReply:
        """Log ``command`` as an entry of its own; its answer."""
        return await self._propose(command)

    async def _propose(self, command: Command) -> TxnReply:
        outcome = await through_host(
            self.host, self.host.propose(encode(command), REQUEST_TIMEOUT_S)
        )
        if outcome.value is None:
            return TxnReply(outcome.status, leader=outcome.leader)
        return self.reply_of(decode_result(outcome.value))

    # --- the RPCs ------------------------------------------------------------------------

    async def _read(self, request: ReadRequest, context: CallContext) -> KVReply:
        if denied := self._denied(context, Privilege.READ, request.shard):
            return KVReply("ok", error=denied, denied=True)
        shard, key = request.shard, request.key
        read = self.host.read(lambda sm: sm.versioned_read(shard, key), REQUEST_TIMEOUT_S)
        outcome = await through_host(self.host, read)
        if outcome.value is None:
            return KVReply(outcome.status, leader=outcome.leader)
        found = outcome.value
        if not found.serving:
            return KVReply("wrong_group", config_num=found.config_num)
        if found.locked:
            tag = txn_tag(found.locked)
            return KVReply("locked", config_num=found.config_num, locked_by=tag)
        return KVReply("ok", config_num=found.config_num, value=found.value, version=found.version)

    async def _prepare(self, request: TxnPrepareRequest, context: CallContext) -> TxnReply:
        admitted = self.admit_prepare(request, context)
        return admitted if isinstance(admitted, TxnReply) else await self._propose(admitted)

    def admit_prepare(
        self, request: TxnPrepareRequest, context: CallContext
    ) -> TxnReply | TxnPrepare:
        """The door of ``txn.prepare``: the refusal, or the command to log."""
        try:
            check_txn_id(request.txn)
            if not request.participants:
                raise ShardLimitError("a prepare lists no participants")
            check_parts(request.parts, request.participants)
        except ShardLimitError as exc:
            return TxnReply("ok", error=str(exc))
        denied = self._parts_denied(context, request.parts) or self._shards_denied(
            context, request.participants
        )
        if denied:
            return TxnReply("ok", error=denied, denied=True)
        try:
            self._check_participants(request.participants)
        except ShardLimitError as exc:
            return TxnReply("ok", error=str(exc))
        if failure := self._sql_refused(request.parts):
            return TxnReply("ok", error=failure.message, sql_failure=failure)
        if self._ddl_waits(request.parts):
            return TxnReply("locked")
        now_ms = wall_ms()  # (the entry carries it: see TxnPrepare)
        r, user = request, context.user or ""
        return TxnPrepare(r.txn, r.participants, r.parts, now_ms, user)

    def _check_participants(self, participants: tuple[ShardId, ...]) -> None:
        """Every participant a shard that exists (a recoverer must be able to ask it)."""
        config = self.host.state_machine.config
        for shard in participants:
            keyspace = config.keyspaces.get(shard.keyspace)
            if keyspace is None or not 0 <= shard.index < len(config.owners[shard.keyspace]):
                raise ShardLimitError(f"participant {shard} is not a shard of this cluster")

    async def _commit(self, request: TxnCommitRequest, context: CallContext) -> TxnReply:
        admitted = self.admit_commit(request, context)
        return admitted if isinstance(admitted, TxnReply) else await self._propose(admitted)

    def admit_commit(self, request: TxnCommitRequest, context: CallContext) -> TxnReply | TxnCommit:
        """The door of ``txn.commit``: the refusal, or the command to log."""
        try:
            if not request.parts:
                raise ShardLimitError("a transaction to commit has no parts")
            check_parts(request.parts)
        except ShardLimitError as exc:
            return TxnReply("ok", error=str(exc))
        if denied := self._parts_denied(context, request.parts):
            return TxnReply("ok", error=denied, denied=True)
        if failure := self._sql_refused(request.parts):
            return TxnReply("ok", error=failure.message, sql_failure=failure)
        if self._ddl_waits(request.parts):
            return TxnReply("locked")
        return TxnCommit(request.client_id, request.seq, request.parts)

    def _ddl_waits(self, parts: tuple[TxnPart, ...]) -> bool:
        """Whether a part's SQL must wait for a DDL statement that waits for prepared
        transactions to resolve (``writes.tables_held``): answered ``locked``, retried."""
        waiting = self.host.state_machine.writes.ddl_waiting
        return bool(waiting) and any(
            p.sql is not None and p.shard.keyspace in waiting for p in parts
        )

    async def _shards_command(
        self,
        request: TxnShardsRequest,
        context: CallContext,
        make: Callable[[], Command],
        need: Privilege = Privilege.READ,
    ) -> TxnReply:
        try:
            check_txn_id(request.txn)
            check_parts((), request.shards)
        except ShardLimitError as exc:
            return TxnReply("ok", error=str(exc))
        if denied := self._shards_denied(context, request.shards, need):
            return TxnReply("ok", error=denied, denied=True)
        return await self._propose(make())

    async def _resolve(self, request: TxnShardsRequest, context: CallContext) -> TxnReply:
        admitted = self.admit_resolve(request, context)
        return admitted if isinstance(admitted, TxnReply) else await self._propose(admitted)

    def admit_resolve(
        self, request: TxnShardsRequest, context: CallContext
    ) -> TxnReply | TxnResolve:
        """The door of ``txn.resolve``: the refusal, or the command to log."""
        r = request
        try:
            check_txn_id(r.txn)
            check_parts((), r.shards)
        except ShardLimitError as exc:
            return TxnReply("ok", error=str(exc))
        if denied := self._shards_denied(context, r.shards):
            return TxnReply("ok", error=denied, denied=True)
        return TxnResolve(r.txn, r.commit, r.shards, context.user or "")

    def reply_of(self, result: GroupResult) -> TxnReply:
        """A logged transaction command's result as its caller's answer (``ignored``: it
        could not share its batch's entry: asked again, it goes in another)."""
        if result.outcome == "failed":
            return TxnReply("ok", config_num=result.config_num, error=result.error)
        if result.outcome == "wrong_group":  # (a commit whose first shard is not here)
            return TxnReply("wrong_group", config_num=result.config_num)
        if result.outcome == "ignored":
            return TxnReply("retry", leader=self.host.id)
        return TxnReply("ok", config_num=result.config_num, votes=result.votes)

    async def _fence(self, request: TxnShardsRequest, context: CallContext) -> TxnReply:
        r = request
        fence = lambda: TxnFence(r.txn, r.shards)  # noqa: E731
        return await self._shards_command(r, context, fence, Privilege.WRITE)

    async def _sql(self, request: TxnSqlRequest, context: CallContext) -> SqlReply:
        r = request
        problem = _visit_problem(r)
        if problem:
            return SqlReply("ok", error=problem)
        writes = [(s.sql, s.bindings()) for s in (*r.pending, *r.statements)]
        if writes and (refused := self._sql_denied(context, r.shard, writes, writing=True)):
            return refused
        if r.read is not None:
            read_sql = [(r.read.sql, r.read.params)]
            shipped = shipped_of(r.shipped)  # (checked by _visit_problem)
            if refused := self._sql_denied(context, r.shard, read_sql, shipped=shipped):
                return refused
        elif not writes and (denied := self._sql_read_denied(context, r.shard)):
            return SqlReply("ok", error=denied, denied=True)
        sm = self.host.state_machine
        refused_fn = sm.refused_sql(r.shard, [*r.pending, *r.statements]) if writes else ""
        if refused_fn:
            return SqlReply("ok", failure=SqlFailure(NondeterministicSqlError.code, refused_fn))
        steps, seconds = self._max_steps, self._max_seconds
        read = self.host.read(lambda m: _visit(m, r, steps, seconds), REQUEST_TIMEOUT_S)
        try:
            outcome = await through_host(self.host, read)
        except SqlError as exc:
            return SqlReply("ok", failure=failure_of(exc))
        if outcome.value is None:
            return SqlReply(outcome.status, leader=outcome.leader)
        return outcome.value


def _visit_problem(request: TxnSqlRequest) -> str:
    """Why a visit is refused at the door ("" if it is not): its bounds and values."""
    statements = (*request.pending, *request.statements)
    if len(statements) > MAX_TXN_STATEMENTS:
        return f"a transaction runs at most {MAX_TXN_STATEMENTS} SQL statements on a shard"
    size = len(_encode(statements))
    if size > MAX_TXN_BYTES:
        return f"a transaction's SQL on one shard takes {size} bytes, over {MAX_TXN_BYTES}"
    if request.max_rows < 0:
        return f"max_rows {request.max_rows} is negative"
    if problem := shipped_refusal(request.shipped):
        return problem
    if problem := capture_refusal(request.capture):
        return problem
    for statement in statements:
        if problem := check_statement(statement):
            return problem
    if request.read is not None:
        if request.read.rows:
            return "a read is one statement, not one for each of several rows"
        if problem := check_params(request.read.params):
            return problem
    return ""


def _visit(
    sm: ShardGroupStateMachine, r: TxnSqlRequest, max_steps: int, max_seconds: float
) -> SqlReply:
    """A visit on the leader, after its ReadIndex barrier (``SqlStoreMixin.sql_visit``)."""
    num = sm.config.num
    store = sm.serving_store(r.shard)
    if store is None:
        return SqlReply("wrong_group", config_num=num)
    runs = bool(r.pending or r.statements or r.read)
    verdict = sm.schema_verdict(r.shard.keyspace, r.catalog_num, r.schema) if runs else ""
    if verdict:  # (a visit that runs nothing only reads the version: any tables will do)
        return SqlReply("ok", config_num=num, schema=verdict)
    if locker := store.sql_locked(write=False):
        return SqlReply("locked", config_num=num, locked_by=txn_tag(locker))
    visit = store.sql_visit(r, max_steps=max_steps, max_seconds=max_seconds)
    failure = result_failure(visit.result)
    if failure is not None and visit.pending_failed:
        # Its earlier writes no longer run: the tables changed since (its version says so).
        failure = SqlFailure("conflict", f"an earlier statement now fails: {failure.message}")
    return SqlReply(
        "ok",
        config_num=num,
        failure=failure,
        rows=visit.rows,
        rowcount=visit.result.rowcount,
        version=visit.version,
        captured=visit.captured,
    )
