"""A shard server's ``shard.batch``: what one client had ready for this server at once
(``client/batching.py``), each part answered as if it had come alone.

The reads share one ReadIndex round. The writes, and the transactions' calls (commits,
prepares, resolves) that passed their door (``txn/handlers.py``), share one log entry
(``ClientBatch``), so a busy client costs the group one entry per batch rather than one
per call. A store applies one entry's changes at most once (its applied index), so a
transaction's command joins the entry only if it touches shards nothing before it in the
entry touches; the others are logged as entries of their own, at the same time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import TYPE_CHECKING, Final

from shardwise.errors import InvalidMessageError, ShardLimitError, ShardwiseError
from shardwise.model.access import Privilege
from shardwise.model.kv import MAX_BATCH_OPS, check_op
from shardwise.net.rpc import CallContext
from shardwise.service import REQUEST_TIMEOUT_S, through_host
from shardwise.shardserver.commands import (
    ClientBatch,
    ClientOp,
    GroupResult,
    TxnCommit,
    TxnPrepare,
    TxnResolve,
    decode_result,
    encode,
)
from shardwise.shardserver.protocol import (
    BatchReply,
    BatchRequest,
    KVReply,
    ReadRequest,
    TxnReply,
    WriteRequest,
)
from shardwise.shardserver.writes import shards_of

if TYPE_CHECKING:
    from shardwise.shardserver.server import ShardServer

MAX_BATCH_TXNS: Final = 64
"""Transactions' calls in one batch (the client sends at most as many)."""

TxnCommand = TxnCommit | TxnPrepare | TxnResolve


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
    run_reads = [r for r, d in zip(reads, read_denials, strict=True) if d is None]
    run_writes = [w for w, d in zip(writes, write_denials, strict=True) if d is None]
    commands = [c for c in admitted if not isinstance(c, TxnReply)]
    if run_reads and (run_writes or commands):
        read_replies, (write_replies, txn_replies) = await asyncio.gather(
            _reads(server, run_reads), _writes(server, run_writes, commands)
        )
    elif run_reads:
        read_replies, write_replies, txn_replies = await _reads(server, run_reads), [], []
    else:
        read_replies = []
        write_replies, txn_replies = await _writes(server, run_writes, commands)
    read_iter, write_iter, txn_iter = iter(read_replies), iter(write_replies), iter(txn_replies)
    return BatchReply(
        [d or next(read_iter) for d in read_denials],
        [d or next(write_iter) for d in write_denials],
        [a if isinstance(a, TxnReply) else next(txn_iter) for a in admitted],
    )


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
    server: ShardServer, requests: Sequence[WriteRequest], commands: Sequence[TxnCommand]
) -> tuple[list[KVReply], list[TxnReply]]:
    """The writes within the limits and the transactions' commands that touch shards of
    their own, as one log entry; the other commands as entries of their own."""
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
    entry = ClientBatch(tuple(ops), tuple(commands[n] for n in joined))
    own = asyncio.gather(*(server.txns.propose(commands[n]) for n in alone))
    logged, own_replies = await asyncio.gather(_propose(server, entry), own)
    for n, reply in zip(alone, own_replies, strict=True):
        txn_replies[n] = reply
    if isinstance(logged, KVReply):  # nobody could log it: each part answers the same
        for position in positions:
            replies[position] = logged
        for n in joined:
            txn_replies[n] = TxnReply(logged.status, leader=logged.leader)
        return replies, txn_replies
    if logged is None:
        return replies, txn_replies
    done = logged.batch
    for position, result in zip(positions, done, strict=False):
        replies[position] = server.write_reply(requests[position].shard, result)
    for n, result in zip(joined, done[len(positions) :], strict=False):
        txn_replies[n] = server.txns.reply_of(result)
    return replies, txn_replies


async def _propose(server: ShardServer, entry: ClientBatch) -> GroupResult | KVReply | None:
    """Log ``entry`` (``None``: it is empty); a :class:`KVReply` if nobody could."""
    if not entry.ops and not entry.txns:
        return None
    outcome = await through_host(server.host, server.host.propose(encode(entry), REQUEST_TIMEOUT_S))
    if outcome.value is None:
        return KVReply(outcome.status, leader=outcome.leader)
    return decode_result(outcome.value)
