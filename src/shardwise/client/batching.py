"""Coalescing a client's concurrent reads and writes to one server into one call.

Many tasks share one :class:`~shardwise.client.Client`. When several of them have a read
or a write for the same server in the same pass of the event loop, they travel as one
``BATCH`` call: one frame each way, one handler on the server, one log entry for the
writes and one ReadIndex round for the reads, where separate calls would cost one of
each per operation. A transaction's commits, prepares and resolves ride along too (in
the writes' log entry, as far as they touch other shards than the rest of it: see the
server's ``batches.py``), and so do SQL read fragments and write batches on one shard
(``shard.sql_read``, ``shard.sql_write``; not larger than ``MAX_BATCHED_SQL_BYTES``): the
reads at one linearizable point, the writes in the same entry. A SQL read whose rows did
not fit beside its batch's is asked again alone. Everything above stays per operation:
which server to ask, the retries, the leader hints, and each operation's own timeout (a
batch that fails fails each of its operations as its own call would have failed, and
each is retried alone). Nothing is atomic across the operations of a batch.

A batch goes at the end of the pass in which its first operation arrived (``call_soon``),
so a lone operation on an idle connection waits for nothing; it goes at once when it is
full. While a batched call to a server is in flight (:data:`MAX_CALLS_IN_FLIGHT`), what
arrives for that server waits and goes when the call returns: the server's answers set
the pace, so under load batches grow with the load instead of becoming more calls, each
of which costs every replica of the group a log entry, an fsync and messages. (A batch of
nothing but resolves is not paced and paces nothing: no caller waits for it.) A batch of
one is sent as the plain call; an operation whose caller gave up before its batch went
is left out.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar, cast

import msgspec

from shardwise.errors import InvalidMessageError, RpcTimeoutError
from shardwise.model.kv import MAX_BATCH_OPS, MAX_VALUE_BYTES, Append, Cas, Get, Put
from shardwise.net.endpoint import Endpoint
from shardwise.net.rpc import RpcMethod
from shardwise.shardserver.protocol import (
    BATCH,
    MAX_BATCH_SQL_READS,
    MAX_BATCH_SQL_WRITES,
    MAX_BATCHED_SQL_BYTES,
    READ,
    SQL_READ,
    SQL_WRITE,
    TXN_COMMIT,
    TXN_PREPARE,
    TXN_RESOLVE,
    WRITE,
    BatchRequest,
    ReadRequest,
    SqlReply,
    WriteRequest,
)

MAX_BATCH_READS: Final = 12
"""Reads in one batch: their values (up to ``MAX_VALUE_BYTES`` each) must fit in one
reply frame, whatever they turn out to be."""

MAX_BATCH_WRITES: Final = MAX_BATCH_OPS
"""Writes in one batch (one log entry)."""

MAX_BATCH_BYTES: Final = 1 << 20
"""Keys and values in one batch's request, about; the batch goes when it holds more."""

MAX_CALLS_IN_FLIGHT: Final = 1
"""Batched calls a client has in flight to one server at once (a full batch goes
anyway). One measured best on a saturated 2-core machine: about 5% more YCSB A than two
and than no limit, at 8% less server CPU per operation. (Letting reads go without
waiting was measured too, on 2026-12-07: YCSB C fell from about 21,000 to 12,700
operations a second, for many more, smaller calls.)"""

MAX_BATCH_TXNS: Final = 64
"""A transaction's commands (commit, prepare, resolve) in one batch: they share its log
entry with the writes."""

MAX_BATCHED_TXN_BYTES: Final = 64 << 10
"""A transaction's command carrying more than this goes alone (as a large write)."""

MAX_BATCHED_OP_BYTES: Final = 64 << 10
"""A write carrying more than this (key and values) goes alone: a large value gains
nothing from company, and would make the log entry it shares large too."""

_TXN_KINDS: Final = {
    TXN_COMMIT.name: "commits",
    TXN_PREPARE.name: "prepares",
    TXN_RESOLVE.name: "resolves",
}
_SQL_KINDS: Final = {SQL_READ.name: "sql_reads", SQL_WRITE.name: "sql_writes"}
_METHODS: Final[dict[str, RpcMethod[Any, Any]]] = {
    "reads": READ,
    "writes": WRITE,
    "commits": TXN_COMMIT,
    "prepares": TXN_PREPARE,
    "resolves": TXN_RESOLVE,
    "sql_reads": SQL_READ,
    "sql_writes": SQL_WRITE,
}
_encode = msgspec.msgpack.Encoder().encode

Req = TypeVar("Req")
Rep = TypeVar("Rep")

assert MAX_BATCH_READS * MAX_VALUE_BYTES < 15 << 20, "a full batch's reply must fit a frame"


def _write_bytes(request: WriteRequest) -> int | None:
    """About how many bytes ``request`` carries, or None if it must go alone."""
    op = request.op
    if isinstance(op, Get):
        return None  # a read through the log answers with a value of any size
    size = len(op.key)
    if isinstance(op, Put | Append):
        size += len(op.value)
    elif isinstance(op, Cas):
        size += len(op.new) + len(op.expected or "")
    return size if size <= MAX_BATCHED_OP_BYTES else None


_KINDS: Final = ("reads", "writes", "commits", "prepares", "resolves", "sql_reads", "sql_writes")
"""What a batch carries, in :class:`BatchRequest`'s order (its reply's too)."""
_TXN_KIND_NAMES: Final = _KINDS[2:5]
_SQL_KIND_NAMES: Final = _KINDS[5:]


@dataclass
class _Batch:
    items: dict[str, list[tuple[Any, asyncio.Future[Any]]]] = field(
        default_factory=lambda: {kind: [] for kind in _KINDS}
    )
    """Each kind's requests with their callers' futures, in arrival order."""
    size: int = 0
    timeout_s: float = 0.0

    def full(self) -> bool:
        return (
            len(self.items["reads"]) >= MAX_BATCH_READS
            or len(self.items["writes"]) >= MAX_BATCH_WRITES
            or sum(len(self.items[k]) for k in _TXN_KIND_NAMES) >= MAX_BATCH_TXNS
            or len(self.items["sql_reads"]) >= MAX_BATCH_SQL_READS
            or len(self.items["sql_writes"]) >= MAX_BATCH_SQL_WRITES
            or self.size >= MAX_BATCH_BYTES
        )

    def drop_abandoned(self) -> None:
        """Leave out the operations whose callers gave up (timed out) while it waited."""
        for kind in _KINDS:
            self.items[kind] = [(r, f) for r, f in self.items[kind] if not f.done()]

    def only_resolves(self) -> bool:
        return len(self.items["resolves"]) == self.count()

    def count(self) -> int:
        return sum(len(self.items[kind]) for kind in _KINDS)

    def futures(self) -> list[asyncio.Future[Any]]:
        return [f for kind in _KINDS for _, f in self.items[kind]]


class CallBatcher:
    """Sends ``READ``, ``WRITE`` and a transaction's ``txn.commit``, ``txn.prepare`` and
    ``txn.resolve`` calls through ``transport``, batching those for the same server that
    arrive together. Other calls, and those too large to batch, go straight through."""

    def __init__(self, transport: Endpoint) -> None:
        self._transport = transport
        self._open: dict[str, _Batch] = {}
        """The batch filling up for each server, until it is sent."""
        self._sending: set[asyncio.Task[None]] = set()
        self._in_flight: dict[str, int] = {}
        """Batched calls in flight, by server."""
        self._plain_txns: set[str] = set()
        """Servers that answered a batch without its transaction calls (an older version):
        their transaction calls go alone."""
        self._plain_sql: set[str] = set()
        """Likewise for SQL calls."""
        self.batches_sent = 0
        """Calls that carried more than one operation (for tests and curious users)."""

    async def call(
        self, node: str, method: RpcMethod[Req, Rep], request: Req, timeout_s: float
    ) -> Rep:
        """``method`` at ``node`` (in a batch if it is a ``READ`` or a small ``WRITE``);
        raises what the transport's ``call`` would raise."""
        future: asyncio.Future[Any] | None = None
        if method is READ and isinstance(request, ReadRequest):
            future = self._add(node, "reads", request, len(request.key), timeout_s)
        elif method is WRITE and isinstance(request, WriteRequest):
            size = _write_bytes(request)
            if size is not None:
                future = self._add(node, "writes", request, size, timeout_s)
        elif (kind := _TXN_KINDS.get(method.name)) is not None and node not in self._plain_txns:
            size = len(_encode(request))
            if size <= MAX_BATCHED_TXN_BYTES:
                future = self._add(node, kind, request, size, timeout_s)
        elif (kind := _SQL_KINDS.get(method.name)) is not None and node not in self._plain_sql:
            size = len(_encode(request))
            if size <= MAX_BATCHED_SQL_BYTES:
                future = self._add(node, kind, request, size, timeout_s)
        if future is None:
            return await self._transport.call(node, method, request, timeout_s=timeout_s)
        try:
            async with asyncio.timeout(timeout_s):
                reply = await future
                if method is SQL_READ and isinstance(reply, SqlReply) and reply.status == "retry":
                    # Its rows did not fit beside its batch's (or its time ran out there):
                    # alone it has a whole frame and a whole read's time.
                    reply = await self._transport.call(node, method, request, timeout_s=timeout_s)
                return cast(Rep, reply)  # (each kind answers its method's reply)
        except TimeoutError:
            raise RpcTimeoutError(
                f"{method.name} to {node!r}: no answer in {timeout_s} s"
            ) from None

    async def close(self) -> None:
        """Stop what is being sent; its operations fail as cancelled."""
        for batch in self._open.values():
            for future in batch.futures():
                future.cancel()
        self._open.clear()
        for task in list(self._sending):
            task.cancel()
        await asyncio.gather(*self._sending, return_exceptions=True)

    # --- filling ------------------------------------------------------------------------

    def _batch_for(self, node: str, timeout_s: float) -> _Batch:
        batch = self._open.get(node)
        if batch is None:
            batch = self._open[node] = _Batch()
            if self._in_flight.get(node, 0) < MAX_CALLS_IN_FLIGHT:
                asyncio.get_running_loop().call_soon(self._send_open, node, batch)
            # else it goes when a call to ``node`` returns (see _returned)
        batch.timeout_s = max(batch.timeout_s, timeout_s)
        return batch

    def _add(
        self, node: str, kind: str, request: object, size: int, timeout_s: float
    ) -> asyncio.Future[Any]:
        batch = self._batch_for(node, timeout_s)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        batch.items[kind].append((request, future))
        batch.size += size
        if batch.full():
            self._send_open(node, batch)
        return future

    # --- sending ------------------------------------------------------------------------

    def _send_open(self, node: str, batch: _Batch) -> None:
        if self._open.get(node) is not batch:
            return  # sent already (it filled up), or dropped by close()
        del self._open[node]
        batch.drop_abandoned()
        if not batch.count():
            return
        task = asyncio.get_running_loop().create_task(self._send(node, batch))
        self._sending.add(task)
        if batch.only_resolves():
            # Nobody waits for a resolve (it runs after its transaction's commit was
            # answered): it does not hold back the next caller's read or commit.
            task.add_done_callback(self._sending.discard)
            return
        self._in_flight[node] = self._in_flight.get(node, 0) + 1
        task.add_done_callback(lambda done: self._returned(node, done))

    def _returned(self, node: str, task: asyncio.Task[None]) -> None:
        self._sending.discard(task)
        left = self._in_flight.pop(node) - 1
        if left:
            self._in_flight[node] = left
        waiting = self._open.get(node)
        if waiting is not None and left < MAX_CALLS_IN_FLIGHT:
            self._send_open(node, waiting)

    async def _send(self, node: str, batch: _Batch) -> None:
        futures = batch.futures()
        try:
            replies = await self._call(node, batch)
        except asyncio.CancelledError:
            for future in futures:
                future.cancel()
            raise
        except Exception as exc:  # the call failed: so does each of its operations
            for future in futures:
                if not future.done():
                    future.set_exception(exc)
            return
        for future, reply in zip(futures, replies, strict=True):
            if not future.done():  # (its caller may have timed out)
                future.set_result(reply)

    async def _call(self, node: str, batch: _Batch) -> list[Any]:
        transport, timeout_s = self._transport, batch.timeout_s
        if batch.count() == 1:  # alone: the plain call
            kind = next(k for k in _KINDS if batch.items[k])
            request = batch.items[kind][0][0]
            return [await transport.call(node, _METHODS[kind], request, timeout_s=timeout_s)]
        self.batches_sent += 1
        lists = {kind: tuple(r for r, _ in batch.items[kind]) for kind in _KINDS}
        request = BatchRequest(**lists)
        reply = await transport.call(node, BATCH, request, timeout_s=timeout_s)
        txns = sum(len(lists[k]) for k in _TXN_KIND_NAMES)
        sql = sum(len(lists[k]) for k in _SQL_KIND_NAMES)
        kv_answered = len(reply.writes) == len(lists["writes"])
        if txns and not reply.txns and kv_answered:
            # A server older than batched transaction calls dropped them unread: send
            # them alone, now and from now on (a rolling upgrade).
            self._plain_txns.add(node)
            alone = self._alone(node, lists, _TXN_KIND_NAMES, timeout_s)
            reply = msgspec.structs.replace(reply, txns=list(await asyncio.gather(*alone)))
        if sql and not reply.sql and kv_answered:
            self._plain_sql.add(node)  # (likewise, older than batched SQL)
            alone = self._alone(node, lists, _SQL_KIND_NAMES, timeout_s)
            reply = msgspec.structs.replace(reply, sql=list(await asyncio.gather(*alone)))
        if (
            len(reply.reads) != len(lists["reads"])
            or len(reply.writes) != len(lists["writes"])
            or len(reply.txns) != txns
            or len(reply.sql) != sql
        ):
            raise InvalidMessageError(
                f"{node} answered a batch of {len(lists['reads'])} reads, "
                f"{len(lists['writes'])} writes, {txns} transaction calls and {sql} SQL "
                f"calls with {len(reply.reads)}, {len(reply.writes)}, {len(reply.txns)} "
                f"and {len(reply.sql)}"
            )
        return [*reply.reads, *reply.writes, *reply.txns, *reply.sql]

    def _alone(
        self,
        node: str,
        lists: dict[str, tuple[Any, ...]],
        kinds: tuple[str, ...],
        timeout_s: float,
    ) -> list[Awaitable[Any]]:
        """The calls of ``kinds`` in ``lists``, each sent alone."""
        transport = self._transport
        return [
            transport.call(node, _METHODS[kind], r, timeout_s=timeout_s)
            for kind in kinds
            for r in lists[kind]
        ]
