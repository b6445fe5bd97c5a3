"""A shard server's SQL reads and writes (``shard.sql_read``, ``shard.sql_write``), alone
or in a client's batch (``batches.py``): the door each passes before it runs or enters
the log, and the reply each gets.

A batch's reads run at one linearizable point (one ReadIndex round, or the lease), one
after another between two applies, as that many lone reads would at that point; their
rows share one reply frame and one read's time (``sqlshard.MAX_SQL_REPLY_BYTES``,
``MAX_SQL_READ_S``), and a read that the sharing stops is answered ``retry`` (the
client then asks alone, with a frame and a time of its own: ``client/batching.py``).
A batch's writes each pass the door a lone write passes (checks, grants, the allow-list,
the leader's time trial) and join the batch's log entry (``ClientBatch.sql``) when they
are on shards nothing before them in it touches; the others are logged alone.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from shardwise.errors import (
    NondeterministicSqlError,
    SqlError,
    SqlLimitError,
    SqlWriteTooCostlyError,
)
from shardwise.model.config import ShardId
from shardwise.model.txn import txn_tag
from shardwise.net.rpc import CallContext
from shardwise.service import REQUEST_TIMEOUT_S, through_host
from shardwise.shardserver.commands import GroupResult, SqlWrite, decode_result, encode
from shardwise.shardserver.protocol import (
    SqlFailure,
    SqlGroupReadRequest,
    SqlReadRequest,
    SqlReply,
    SqlWriteRequest,
)
from shardwise.shardserver.sql_checks import check_batch, check_params
from shardwise.shardserver.sqlshard import (
    MAX_SQL_READ_S,
    MAX_SQL_REPLY_BYTES,
    failure_of,
    result_failure,
    rows_bytes,
    shipped_of,
    shipped_refusal,
)
from shardwise.sql.shipped import ShippedTable

if TYPE_CHECKING:
    from shardwise.shardserver.server import ShardServer
    from shardwise.shardserver.statemachine import ShardGroupStateMachine

_SHARED_LIMITS = ("max_reply_bytes", "max_read_seconds")
"""A read's limit errors that may come of sharing the frame and the time."""


@dataclass(frozen=True, slots=True)
class _AdmittedRead:
    request: SqlReadRequest
    shipped: tuple[ShippedTable, ...]


# --- reads ---------------------------------------------------------------------------


async def serve_sql_read(
    server: ShardServer, request: SqlReadRequest, context: CallContext
) -> SqlReply:
    return (await serve_sql_reads(server, [request], context))[0]


async def serve_sql_reads(
    server: ShardServer, requests: Sequence[SqlReadRequest], context: CallContext
) -> list[SqlReply]:
    """Each read through its door, then those admitted at one linearizable point."""
    doors = [_read_door(server, r, context) for r in requests]
    admitted = [d for d in doors if isinstance(d, _AdmittedRead)]
    if not admitted:
        return [d for d in doors if isinstance(d, SqlReply)]
    shared = len(admitted) > 1

    def run(sm: ShardGroupStateMachine) -> list[SqlReply]:
        deadline = time.monotonic() + MAX_SQL_READ_S
        room = MAX_SQL_REPLY_BYTES
        replies: list[SqlReply] = []
        for read in admitted:
            left = deadline - time.monotonic()
            if shared and (left <= 0 or room <= 0):
                replies.append(SqlReply("retry"))
                continue
            r = read.request
            reply, size = bounded_read(
                server,
                sm,
                r.shard,
                r,
                shipped=read.shipped,
                bounds=(room, left) if shared else None,
            )
            room -= size
            replies.append(reply)
        return replies

    outcome = await through_host(server.host, server.host.read(run, timeout_s=REQUEST_TIMEOUT_S))
    answers = iter(
        outcome.value
        if outcome.value is not None
        else [SqlReply(outcome.status, leader=outcome.leader)] * len(admitted)
    )
    return [d if isinstance(d, SqlReply) else next(answers) for d in doors]


def bounded_read(
    server: ShardServer,
    sm: ShardGroupStateMachine,
    shard: ShardId,
    r: SqlReadRequest | SqlGroupReadRequest,
    *,
    shipped: Sequence[ShippedTable],
    bounds: tuple[int, float] | None,
) -> tuple[SqlReply, int]:
    """``r``'s fragment on ``shard`` as its reply, and the bytes its rows took.
    ``bounds``: the reply bytes and seconds left to it when it shares them with other
    reads (then a read that passes either is answered ``retry``: alone it has a whole
    frame and a whole read's time); None: a lone read's."""
    try:
        answer = sm.sql_read(
            shard,
            catalog_num=r.catalog_num,
            schema=r.schema,
            sql=r.sql,
            params=r.params,
            max_rows=r.max_rows,
            shipped=shipped,
            bounds=bounds,
        )
    except SqlLimitError as exc:
        if bounds is not None and exc.limit in _SHARED_LIMITS:
            return SqlReply("retry"), 0
        return SqlReply("ok", failure=failure_of(exc)), 0
    except SqlError as exc:
        return SqlReply("ok", failure=failure_of(exc)), 0
    return server.sql_read_reply(shard, answer), rows_bytes(answer.rows)


def _read_door(
    server: ShardServer, r: SqlReadRequest, context: CallContext
) -> SqlReply | _AdmittedRead:
    problem = check_params(r.params) or shipped_refusal(r.shipped)
    if problem or r.max_rows < 0:
        return SqlReply("ok", error=problem or f"max_rows {r.max_rows} is negative")
    shipped = shipped_of(r.shipped)  # (checked: the access check makes them too)
    denied = server.sql_denied(context, r.shard, [(r.sql, r.params)], shipped=shipped)
    return denied or _AdmittedRead(r, shipped)


# --- writes --------------------------------------------------------------------------


async def serve_sql_write(
    server: ShardServer, request: SqlWriteRequest, context: CallContext
) -> SqlReply:
    door = sql_write_door(server, request, context)
    if isinstance(door, SqlReply):
        return door
    return await log_sql_write(server, request, door)


async def log_sql_write(
    server: ShardServer, request: SqlWriteRequest, command: SqlWrite
) -> SqlReply:
    """``command`` (``request`` through its door) logged as an entry of its own."""
    outcome = await through_host(
        server.host, server.host.propose(encode(command), REQUEST_TIMEOUT_S)
    )
    if outcome.value is None:
        return SqlReply(outcome.status, leader=outcome.leader)
    return sql_write_reply(server, request, decode_result(outcome.value))


def sql_write_door(
    server: ShardServer, r: SqlWriteRequest, context: CallContext
) -> SqlReply | SqlWrite:
    """The command to log for ``r``, or the reply that refuses it at the door."""
    problem = check_batch(r.statements)
    if problem:
        return SqlReply("ok", error=problem)
    statements = [(s.sql, s.bindings()) for s in r.statements]
    if denied := server.sql_denied(context, r.shard, statements, writing=True):
        return denied
    sm = server.state_machine
    # Refused here, on the leader, before the log; checked again as it applies.
    refused = sm.refused_sql(r.shard, r.statements)
    if refused:
        return SqlReply("ok", failure=SqlFailure(NondeterministicSqlError.code, refused))
    if server.host.node.leader == server.host.id:  # (a follower only answers not_leader)
        too_slow = sm.time_trial(r.shard, r.statements, server.sql_write_max_seconds)
        if too_slow:
            limit_ms = round(server.sql_write_max_seconds * 1000)
            slow = SqlFailure(SqlWriteTooCostlyError.code, too_slow, "max_write_ms", limit_ms)
            return SqlReply("ok", failure=slow)
    steps = server.sql_write_max_steps
    return SqlWrite(r.shard, r.client_id, r.seq, r.catalog_num, r.schema, r.statements, steps)


def sql_write_reply(server: ShardServer, r: SqlWriteRequest, result: GroupResult) -> SqlReply:
    """What a logged SQL write came to, as its reply."""
    if result.outcome == "failed":
        return SqlReply("ok", config_num=result.config_num, error=result.error)
    if result.outcome == "ignored":  # (it shared an entry with a write of its shard)
        return SqlReply("retry", leader=server.leader_hint())
    if result.outcome != "ok":
        return SqlReply("wrong_group", config_num=result.config_num)
    sql = result.sql
    if sql is None:  # the shard had applied this index before: cannot happen live
        return SqlReply("retry", leader=server.host.status().leader)
    if sql.locked:
        return SqlReply("locked", config_num=result.config_num, locked_by=txn_tag(sql.locked))
    failure = result_failure(sql)
    if failure is None and not sql.schema and not sql.stale:
        server.writes_served[r.shard] += 1
    return SqlReply(
        "ok",
        config_num=result.config_num,
        schema=sql.schema,
        failure=failure,
        rowcount=sql.rowcount,
        stale=sql.stale,
    )
