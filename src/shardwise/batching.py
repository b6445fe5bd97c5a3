"""Coalescing a client's concurrent reads and writes to one server into one call.

Many tasks share one :class:`~shardwise.client.Client`. When several of them have a read
or a write for the same server in the same pass of the event loop, they travel as one
``BATCH`` call: one frame each way, one handler on the server, one log entry for the
writes and one ReadIndex round for the reads, where separate calls would cost one of
each per operation. Everything above stays per operation: which server to ask, the
retries, the leader hints, and each operation's own timeout (a batch that fails fails
each of its operations as its own call would have failed, and each is retried alone).
Nothing is atomic across the operations of a batch.

A batch goes at the end of the pass in which its first operation arrived (``call_soon``),
so a lone operation waits for nothing; it goes at once when it is full. A batch of one
is sent as the plain call.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Final, TypeVar, cast

from shardwise.errors import InvalidMessageError, RpcTimeoutError
from shardwise.net.endpoint import Endpoint
from shardwise.net.rpc import RpcMethod
from shardwise.raft.kv import Append, Cas, Get, Put
from shardwise.shardserver.commands import MAX_BATCH_OPS
from shardwise.shardserver.protocol import (
    BATCH,
    READ,
    WRITE,
    BatchRequest,
    KVReply,
    ReadRequest,
    WriteRequest,
)
from shardwise.shardserver.store import MAX_VALUE_BYTES

MAX_BATCH_READS: Final = 12
"""Reads in one batch: their values (up to ``MAX_VALUE_BYTES`` each) must fit in one
reply frame, whatever they turn out to be."""

MAX_BATCH_WRITES: Final = MAX_BATCH_OPS
"""Writes in one batch (one log entry)."""

MAX_BATCH_BYTES: Final = 1 << 20
"""Keys and values in one batch's request, about; the batch goes when it holds more."""

MAX_BATCHED_OP_BYTES: Final = 64 << 10
"""A write carrying more than this (key and values) goes alone: a large value gains
nothing from company, and would make the log entry it shares large too."""

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


@dataclass
class _Batch:
    reads: list[ReadRequest] = field(default_factory=list)
    read_futures: list[asyncio.Future[KVReply]] = field(default_factory=list)
    writes: list[WriteRequest] = field(default_factory=list)
    write_futures: list[asyncio.Future[KVReply]] = field(default_factory=list)
    size: int = 0
    timeout_s: float = 0.0

    def full(self) -> bool:
        return (
            len(self.reads) >= MAX_BATCH_READS
            or len(self.writes) >= MAX_BATCH_WRITES
            or self.size >= MAX_BATCH_BYTES
        )

    def futures(self) -> list[asyncio.Future[KVReply]]:
        return [*self.read_futures, *self.write_futures]


class CallBatcher:
    """Sends ``READ`` and ``WRITE`` calls through ``transport``, batching those for the
    same server that arrive together. Other calls, and writes too large to batch, go
    straight through."""

    def __init__(self, transport: Endpoint) -> None:
        self._transport = transport
        self._open: dict[str, _Batch] = {}
        """The batch filling up for each server, until it is sent."""
        self._sending: set[asyncio.Task[None]] = set()
        self.batches_sent = 0
        """Calls that carried more than one operation (for tests and curious users)."""

    async def call(
        self, node: str, method: RpcMethod[Req, Rep], request: Req, timeout_s: float
    ) -> Rep:
        """``method`` at ``node`` (in a batch if it is a ``READ`` or a small ``WRITE``);
        raises what the transport's ``call`` would raise."""
        future: asyncio.Future[KVReply] | None = None
        if method is READ and isinstance(request, ReadRequest):
            future = self._add(node, request, len(request.key), timeout_s)
        elif method is WRITE and isinstance(request, WriteRequest):
            size = _write_bytes(request)
            if size is not None:
                future = self._add(node, request, size, timeout_s)
        if future is None:
            return await self._transport.call(node, method, request, timeout_s=timeout_s)
        try:
            async with asyncio.timeout(timeout_s):
                return cast(Rep, await future)  # READ and WRITE answer a KVReply
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
            asyncio.get_running_loop().call_soon(self._send_open, node, batch)
        batch.timeout_s = max(batch.timeout_s, timeout_s)
        return batch

    def _add(
        self, node: str, request: ReadRequest | WriteRequest, size: int, timeout_s: float
    ) -> asyncio.Future[KVReply]:
        batch = self._batch_for(node, timeout_s)
        future: asyncio.Future[KVReply] = asyncio.get_running_loop().create_future()
        if isinstance(request, ReadRequest):
            batch.reads.append(request)
            batch.read_futures.append(future)
        else:
            batch.writes.append(request)
            batch.write_futures.append(future)
        batch.size += size
        if batch.full():
            self._send_open(node, batch)
        return future

    # --- sending ------------------------------------------------------------------------

    def _send_open(self, node: str, batch: _Batch) -> None:
        if self._open.get(node) is not batch:
            return  # sent already (it filled up), or dropped by close()
        del self._open[node]
        task = asyncio.get_running_loop().create_task(self._send(node, batch))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

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

    async def _call(self, node: str, batch: _Batch) -> list[KVReply]:
        transport, timeout_s = self._transport, batch.timeout_s
        if len(batch.reads) + len(batch.writes) == 1:
            if batch.reads:
                return [await transport.call(node, READ, batch.reads[0], timeout_s=timeout_s)]
            return [await transport.call(node, WRITE, batch.writes[0], timeout_s=timeout_s)]
        self.batches_sent += 1
        request = BatchRequest(tuple(batch.reads), tuple(batch.writes))
        reply = await transport.call(node, BATCH, request, timeout_s=timeout_s)
        if len(reply.reads) != len(batch.reads) or len(reply.writes) != len(batch.writes):
            raise InvalidMessageError(
                f"{node} answered a batch of {len(batch.reads)} reads and "
                f"{len(batch.writes)} writes with {len(reply.reads)} and {len(reply.writes)}"
            )
        return [*reply.reads, *reply.writes]
