"""A shard server's ``shard.batch``: what one client had ready for this server at once
(``client/batching.py``), each part answered as if it had come alone.

The reads share one ReadIndex round (the SQL reads another: ``sql_serving.py``). The
writes, and the SQL writes and transactions' calls (commits, prepares, resolves) that
passed their doors (``sql_serving.py``, ``txn/handlers.py``), share one log entry
(``ClientBatch``), so a busy client costs the group one entry per batch rather than one
per call. A store applies one entry's changes at most once (its applied index), so a SQL
write or a transaction's command joins the entry only if it touches shards nothing before
it in the entry touches (and the entry's SQL stays within ``MAX_SQL_BATCH_BYTES``); the
others are logged as entries of their own, at the same time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Final

import msgspec

from shardwise.errors import InvalidMessageError, ShardLimitError, ShardwiseError
from shardwise.model.access import Privilege
from shardwise.model.kv import MAX_BATCH_OPS, check_op
from shardwise.net.rpc import CallContext
from shardwise.service import REQUEST_TIMEOUT_S, through_host
from shardwise.shardserver.commands import (
    ClientBatch,
    ClientOp,
    GroupResult,
    SqlWrite,
    TxnCommit,
    TxnPrepare,
    TxnResolve,
    decode_result,
    encode,
)
from shardwise.shardserver.protocol import (
    MAX_BATCH_SQL_READS,
    MAX_BATCH_SQL_WRITES,
    MAX_SQL_BATCH_BYTES,
    BatchReply,
    BatchRequest,
    KVReply,
    ReadRequest,
    SqlReply,
    SqlWriteRequest,
    TxnReply,
    WriteRequest,
)
from shardwise.shardserver.sql_serving import (
    log_sql_write,
    serve_sql_reads,
    sql_write_door,
    sql_write_reply,
)
from shardwise.shardserver.writes import shards_of

if TYPE_CHECKING:
    from shardwise.shardserver.server import ShardServer

MAX_BATCH_TXNS: Final = 64
"""Transactions' calls in one batch (the client sends at most as many)."""

TxnCommand = TxnCommit | TxnPrepare | TxnResolve
_encode = msgspec.msgpack.Encoder().encode


async def serve_batch(
    server: ShardServer, request: BatchRequest, context: CallContext
) -> BatchReply:
    reads, writes = request.reads, request.writes
    calls = len(request.commits) + len(request.prepares) + len(request.resolves)
    if len(reads) > MAX_BATCH_OPS or len(writes) > MAX_BATCH_OPS or calls > MAX_BATCH_TXNS:
        raise InvalidMessageError(
            f"a batch has at most {MAX_BATCH_OPS} reads, {MAX_BATCH_OPS} writes and "
            f"{MAX_BATCH_TXNS} transaction calls, not {len(reads)}, {len(writes)} and {calls}"
        )
    sql_reads, sql_writes = request.sql_reads, request.sql_writes
    if len(sql_reads) > MAX_BATCH_SQL_READS or len(sql_writes) > MAX_BATCH_SQL_WRITES:
        raise InvalidMessageError(
            f"a batch has at most {MAX_BATCH_SQL_READS} SQL reads and {MAX_BATCH_SQL_WRITES} "
            f"SQL writes, not {len(sql_reads)} and {len(sql_writes)}"
        )
    checked = context.user is not None  # (a node's batch needs no grant)
    read_denials = [
        server.kv_refusal(context, Privilege.READ, r.shard) if checked else None for r in reads
    ]
    write_denials = [
        server.kv_refusal(context, Privilege.WRITE, w.shard) if checked else None for w in writes
    ]
    doors = server.txns
    admitted: list[TxnReply | TxnCommand] = [
        *(doors.admit_commit(r, context) for r in request.commits),
        *(doors.admit_prepare(r, context) for r in request.prepares),
        *(doors.admit_resolve(r, context) for r in request.resolves),
    ]
    sql_doors = [sql_write_door(server, w, context) for w in sql_writes]
    run_reads = [r for r, d in zip(reads, read_denials, strict=True) if d is None]
    run_writes = [w for w, d in zip(writes, write_denials, strict=True) if d is None]
    commands = [c for c in admitted if not isinstance(c, TxnReply)]
    sql_commands = [
        (w, d) for w, d in zip(sql_writes, sql_doors, strict=True) if isinstance(d, SqlWrite)
    ]
    (
        read_replies,
        sql_read_replies,
        (write_replies, txn_replies, sql_write_replies),
    ) = await asyncio.gather(
        _reads(server, run_reads) if run_reads else _nothing(),
        serve_sql_reads(server, sql_reads, context) if sql_reads else _nothing(),
        _writes(server, run_writes, commands, sql_commands),
    )
    read_iter, write_iter, txn_iter = iter(read_replies), iter(write_replies), iter(txn_replies)
    sql_write_iter = iter(sql_write_replies)
    return BatchReply(
        [d or next(read_iter) for d in read_denials],
        [d or next(write_iter) for d in write_denials],
        [a if isinstance(a, TxnReply) else next(txn_iter) for a in admitted],
        [
            *sql_read_replies,
            *(d if isinstance(d, SqlReply) else next(sql_write_iter) for d in sql_doors),
        ],
    )


async def _nothing() -> list[Any]:
    return []  # (what a batch without reads of a kind answers them)


async def _reads(server: ShardServer, requests: Sequence[ReadRequest]) -> list[KVReply]:
    """The reads a transaction validates later from the leader's applied state; every
    other at one linearizable point: one ReadIndex round for all."""
    local = [r.versioned and r.validated for r in requests]
    if any(local):
        rounds = [r for r, skip in zip(requests, local, strict=True) if not skip]
        quick = iter(
            await leader_reads(server, [r for r in requests if r.versioned and r.validated])
        )
        linear = iter(await _linearizable(server, rounds) if rounds else [])
        return [next(quick) if skip else next(linear) for skip in local]
    return await _linearizable(server, requests)


async def leader_reads(server: ShardServer, requests: Sequence[ReadRequest]) -> list[KVReply]:
    """Transactions' reads that their commit validates (``ReadRequest.validated``): on the
    leader, from what it has applied, with no ReadIndex round; elsewhere ``not_leader``."""
    host = server.host
    try:
        status = host.status()
    except ShardwiseError:  # (stopped)
        return [KVReply("retry")] * len(requests)
    if status.halted or status.leader != host.id:
        return [KVReply("not_leader", leader=status.leader)] * len(requests)
    if status.applied < status.commit:  # (behind its own log: the round costs little more)
        return await _linearizable(server, requests)
    sm = host.state_machine
    return [server.read_reply(r.shard, sm.versioned_read(r.shard, r.key), None) for r in requests]


async def _linearizable(server: ShardServer, requests: Sequence[ReadRequest]) -> list[KVReply]:
    read = server.host.read(
        lambda sm: [
            sm.versioned_read(r.shard, r.key) if r.versioned else sm.read(r.shard, r.key)
            for r in requests
        ],
        timeout_s=REQUEST_TIMEOUT_S,
    )
    outcome = await through_host(server.host, read)
    if outcome.value is None:
        return [KVReply(outcome.status, leader=outcome.leader)] * len(requests)
    leader = server.leader_hint()
    return [
        server.read_reply(request.shard, found, leader)
        for request, found in zip(requests, outcome.value, strict=True)
    ]


async def _writes(
    server: ShardServer,
    requests: Sequence[WriteRequest],
    commands: Sequence[TxnCommand],
    sql: Sequence[tuple[SqlWriteRequest, SqlWrite]] = (),
) -> tuple[list[KVReply], list[TxnReply], list[SqlReply]]:
    """The writes within the limits, and the SQL writes and transactions' commands that
    touch shards of their own, as one log entry; the others as entries of their own."""
    if not requests and not commands and not sql:
        return [], [], []  # (a batch of reads only: nothing to build or log)
    replies: list[KVReply] = [KVReply("retry")] * len(requests)
    ops: list[ClientOp] = []
    positions: list[int] = []
    for position, request in enumerate(requests):
        try:
            check_op(request.op)
        except ShardLimitError as exc:
            replies[position] = KVReply("ok", error=str(exc))
            continue
        ops.append(ClientOp(request.shard, request.client_id, request.seq, request.op))
        positions.append(position)
    touched = {op.shard for op in ops}
    sql_joined: list[int] = []
    sql_alone: list[int] = []
    sql_bytes = 0
    for n, (_, logged_sql) in enumerate(sql):
        size = len(_encode(logged_sql.statements))
        if logged_sql.shard in touched or sql_bytes + size > MAX_SQL_BATCH_BYTES:
            sql_alone.append(n)
        else:
            touched.add(logged_sql.shard)
            sql_bytes += size
            sql_joined.append(n)
    joined: list[int] = []
    alone: list[int] = []
    for n, command in enumerate(commands):
        shards = shards_of(command)
        if touched & shards:
            alone.append(n)
        else:
            touched |= shards
            joined.append(n)
    txn_replies: list[TxnReply] = [TxnReply("retry")] * len(commands)
    sql_replies: list[SqlReply] = [SqlReply("retry")] * len(sql)
    entry = ClientBatch(
        tuple(ops), tuple(commands[n] for n in joined), tuple(sql[n][1] for n in sql_joined)
    )
    logged, own_replies, own_sql_replies = await asyncio.gather(
        _propose(server, entry),
        asyncio.gather(*(server.txns.propose(commands[n]) for n in alone)),
        asyncio.gather(*(log_sql_write(server, *sql[n]) for n in sql_alone)),
    )
    for n, reply in zip(alone, own_replies, strict=True):
        txn_replies[n] = reply
    for n, sql_reply in zip(sql_alone, own_sql_replies, strict=True):
        sql_replies[n] = sql_reply
    if isinstance(logged, KVReply):  # nobody could log it: each part answers the same
        for position in positions:
            replies[position] = logged
        for n in joined:
            txn_replies[n] = TxnReply(logged.status, leader=logged.leader)
        for n in sql_joined:
            sql_replies[n] = SqlReply(logged.status, leader=logged.leader)
        return replies, txn_replies, sql_replies
    if logged is None:
        return replies, txn_replies, sql_replies
    done = iter(logged.batch)
    for position, result in zip(positions, done, strict=False):
        replies[position] = server.write_reply(requests[position].shard, result)
    for n, result in zip(sql_joined, done, strict=False):
        sql_replies[n] = sql_write_reply(server, sql[n][0], result)
    for n, result in zip(joined, done, strict=False):
        txn_replies[n] = server.txns.reply_of(result)
    return replies, txn_replies, sql_replies


async def _propose(server: ShardServer, entry: ClientBatch) -> GroupResult | KVReply | None:
    """Log ``entry`` (``None``: it is empty); a :class:`KVReply` if nobody could."""
    if not entry.ops and not entry.txns and not entry.sql:
        return None
    outcome = await through_host(server.host, server.host.propose(encode(entry), REQUEST_TIMEOUT_S))
    if outcome.value is None:
        return KVReply(outcome.status, leader=outcome.leader)
    return decode_result(outcome.value)
