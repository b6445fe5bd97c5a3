"""What a network endpoint does with the messages it carries, whatever carries them.

The TCP :class:`~shardwise.net.transport.Transport` and the simulator's in-memory
endpoint (``shardwise.testing.simtransport``) differ in how frames travel, and in
nothing else that a server can see: both route Raft messages with one
:class:`RaftRoutes`, answer calls with one :class:`IncomingCalls` and place their own
calls with one :class:`OutgoingCalls`, so a call fails, is refused or times out alike on
both. Each part owns its state and reports every event through a ``count(counter)``
callback, which the endpoint maps onto its own statistics.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import Counter
from collections.abc import Callable, Hashable
from typing import TypeVar

from shardwise.clock import Clock
from shardwise.errors import (
    FrameTooLargeError,
    InvalidMessageError,
    RpcOverloadedError,
    RpcTimeoutError,
    TransportClosedError,
)
from shardwise.net.frames import encode_frame
from shardwise.net.limits import Limits
from shardwise.net.rpc import (
    CallContext,
    Handler,
    PendingCall,
    RawHandler,
    RpcMethod,
    erase,
    failure_error,
)
from shardwise.net.timing import within
from shardwise.net.wire import (
    MAX_FAILURE_MESSAGE_CHARS,
    MAX_RPC_TIMEOUT_MS,
    FailureCode,
    PeerRole,
    RpcFailure,
    RpcRequest,
    RpcResponse,
)
from shardwise.raft.messages import Message

Req = TypeVar("Req")
Resp = TypeVar("Resp")

RaftHandler = Callable[[Message], None]
Count = Callable[[str], None]
"""Told the name of each counter to increment (``rpc_refused``, ``raft_delivered`` ...)."""
Reply = RpcResponse | RpcFailure


def rpc_failure(call_id: int, code: FailureCode, message: str) -> RpcFailure:
    """A typed failure reply, its message cut to the wire's limit."""
    return RpcFailure(call_id=call_id, code=code, message=message[:MAX_FAILURE_MESSAGE_CHARS])


def encode_reply(reply: Reply) -> tuple[Reply, bytes]:
    """The reply that is sent and its frame: a reply too large for a frame becomes an
    ``internal`` failure."""
    try:
        return reply, encode_frame(reply)
    except FrameTooLargeError as exc:
        failure = rpc_failure(reply.call_id, FailureCode.INTERNAL, str(exc))
        return failure, encode_frame(failure)


# --- raft --------------------------------------------------------------------------------


class RaftRoutes:
    """Which handler takes each Raft group's incoming messages."""

    def __init__(self, node_id: str, count: Count, logger: logging.Logger) -> None:
        self._node_id = node_id
        self._count = count
        self._logger = logger
        self._handlers: dict[int, RaftHandler] = {}

    def on_raft(self, group: int, handler: RaftHandler) -> None:
        self._handlers[group] = handler

    def off_raft(self, group: int) -> None:
        self._handlers.pop(group, None)

    def deliver(self, group: int, message: Message) -> None:
        """Hand ``message`` to its group's handler; a failing handler is logged and
        counted, never raised into the network."""
        handler = self._handlers.get(group)
        if handler is None:
            self._count("raft_dropped_unknown_group")
            return
        try:
            handler(message)
        except Exception:
            self._logger.exception("%s: the Raft handler of group %d failed", self._node_id, group)
            self._count("raft_handler_errors")
            return
        self._count("raft_delivered")


# --- calls in ----------------------------------------------------------------------------


async def handle_request(
    clock: Clock,
    request: RpcRequest,
    raw: RawHandler,
    context: CallContext,
    timeout_s: float,
    *,
    node_id: str,
    on_error: Callable[[], None],
    logger: logging.Logger,
) -> Reply:
    """Run ``raw`` for ``request`` within ``timeout_s`` and turn what happened into the
    reply: the response, or the typed failure the caller's transport maps to an error."""
    call_id = request.call_id
    try:
        body = await within(clock, timeout_s, raw(request.body, context))
        return RpcResponse(call_id=call_id, body=body)
    except InvalidMessageError as exc:
        return rpc_failure(call_id, FailureCode.BAD_REQUEST, str(exc))
    except TimeoutError:
        return rpc_failure(call_id, FailureCode.DEADLINE_EXCEEDED, f"not done in {timeout_s} s")
    except asyncio.CancelledError:
        # Only shutdown cancels handlers: tell the caller rather than leave it waiting.
        return rpc_failure(call_id, FailureCode.SHUTTING_DOWN, "cancelled by shutdown")
    except Exception as exc:
        logger.exception("%s: handler of %s failed", node_id, request.method)
        on_error()
        return rpc_failure(call_id, FailureCode.INTERNAL, f"{type(exc).__name__}: {exc}")


class IncomingCalls:
    """The callee's side of calls: the registered handlers, and the handlers running,
    bounded per link and in all and each cancelled at its call's deadline."""

    def __init__(
        self,
        node_id: str,
        clock: Clock,
        limits: Limits,
        count: Count,
        logger: logging.Logger,
    ) -> None:
        self._node_id = node_id
        self._clock = clock
        self._limits = limits
        self._count = count
        self._logger = logger
        self._methods: dict[str, RawHandler] = {}
        # A dict, not a set: cancelling at close in start order keeps a simulated run
        # deterministic.
        self._tasks: dict[asyncio.Task[None], None] = {}
        self._per_link: Counter[Hashable] = Counter()
        self.closing = False

    def serve(self, method: RpcMethod[Req, Resp], handler: Handler[Req, Resp]) -> None:
        """Answer calls of ``method`` with ``await handler(request, context)``."""
        self._methods[method.name] = erase(method, handler)

    def wrap_handlers(self, wrap: Callable[[str, RawHandler], RawHandler]) -> None:
        """Replace every handler registered so far with ``wrap(method name, handler)``:
        one seam for observers (metrics time every call) that costs nothing when unused."""
        for name, raw in list(self._methods.items()):
            self._methods[name] = wrap(name, raw)

    def on_request(
        self,
        link: Hashable,
        peer: tuple[str, PeerRole, str | None],
        request: RpcRequest,
        reply: Callable[[Reply], None],
    ) -> None:
        """Start the handler of ``request`` from ``peer`` (its id, role and user), which came
        over ``link`` (what the per-link bound counts), or refuse it; either way the
        answer goes to ``reply``."""
        call_id = request.call_id
        if self.closing:
            self._count("rpc_refused")
            reply(rpc_failure(call_id, FailureCode.SHUTTING_DOWN, "shutting down"))
            return
        raw = self._methods.get(request.method)
        if raw is None:
            reply(rpc_failure(call_id, FailureCode.UNKNOWN_METHOD, f"no method {request.method!r}"))
            return
        limits = self._limits
        if (
            self._per_link[link] >= limits.max_handlers_per_link
            or len(self._tasks) >= limits.max_handlers
        ):
            self._count("rpc_refused")
            running = len(self._tasks)
            reply(rpc_failure(call_id, FailureCode.OVERLOADED, f"{running} calls running"))
            return
        timeout_s = request.timeout_ms / 1000
        peer_id, role, user = peer
        context = CallContext(peer_id, role, self._clock.now() + timeout_s, user)
        self._per_link[link] += 1
        task = asyncio.create_task(
            self._run(link, request, raw, context, timeout_s=timeout_s, reply=reply),
            name=f"{self._node_id}:call-{request.method}",
        )
        self._tasks[task] = None
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.pop(task, None)

    async def _run(
        self,
        link: Hashable,
        request: RpcRequest,
        raw: RawHandler,
        context: CallContext,
        *,
        timeout_s: float,
        reply: Callable[[Reply], None],
    ) -> None:
        try:
            answer = await handle_request(
                self._clock,
                request,
                raw,
                context,
                timeout_s,
                node_id=self._node_id,
                on_error=lambda: self._count("rpc_handler_errors"),
                logger=self._logger,
            )
        finally:
            self._per_link[link] -= 1
            if not self._per_link[link]:
                del self._per_link[link]
        reply(answer)

    async def close(self) -> None:
        """Refuse new calls (``SHUTTING_DOWN``) and cancel the running handlers, which
        answer ``SHUTTING_DOWN``; returns once they have."""
        self.closing = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


# --- calls out ---------------------------------------------------------------------------


class OutgoingCalls:
    """The caller's side of calls: ids, deadlines, and matching replies to calls.

    The calls in flight are kept by the endpoint, per peer or per link (a TCP link
    also needs them to settle calls when a connection breaks); this class is handed the
    table of the peer being called."""

    def __init__(self, node_id: str, clock: Clock, limits: Limits, count: Count) -> None:
        self._node_id = node_id
        self._clock = clock
        self._limits = limits
        self._count = count
        self._next_id = 0

    def check(self, running: bool, timeout_s: float) -> None:
        """Refuse a call before anything is looked up: the endpoint is not running, or
        the deadline is out of range."""
        if not running:
            raise TransportClosedError(f"transport {self._node_id!r} is not running")
        if not 0 < timeout_s * 1000 <= MAX_RPC_TIMEOUT_MS:
            raise ValueError(f"timeout_s must be in (0, {MAX_RPC_TIMEOUT_MS // 1000}]")

    async def call(
        self,
        peer: str,
        pending: dict[int, PendingCall],
        method: RpcMethod[Req, Resp],
        request: Req,
        *,
        timeout_s: float,
        send: Callable[[RpcRequest], None],
    ) -> Resp:
        """Register the call in ``pending``, ``send`` its request and wait for the reply
        for at most ``timeout_s`` on the clock."""
        if len(pending) >= self._limits.max_pending_calls:
            self._count("rpc_overloaded")
            raise RpcOverloadedError(f"{len(pending)} calls to {peer!r} are pending")
        self._next_id += 1
        call_id = self._next_id
        wire = RpcRequest(
            call_id=call_id,
            method=method.name,
            timeout_ms=max(1, math.ceil(timeout_s * 1000)),
            body=method.encode_request(request),
        )
        frame = encode_frame(wire)  # too large: FrameTooLargeError, nothing sent
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        pending[call_id] = PendingCall(future, method.name, frame)
        self._count("rpc_calls")
        try:
            send(wire)
            body = await within(self._clock, timeout_s, future)
        except TimeoutError:
            self._count("rpc_timeouts")
            raise RpcTimeoutError(
                f"{method.name} to {peer!r}: no answer in {timeout_s} s"
            ) from None
        finally:
            pending.pop(call_id, None)
        return method.decode_response(body)

    def on_reply(self, pending: dict[int, PendingCall], reply: Reply) -> bool:
        """Settle the call ``reply`` answers; whether one was waiting (a late reply to a
        call that timed out is counted and dropped)."""
        call = pending.get(reply.call_id)
        if call is None or call.future.done():
            self._count("rpc_late_replies")
            return False
        if isinstance(reply, RpcResponse):
            call.future.set_result(reply.body)
        else:
            call.future.set_exception(failure_error(reply.code, call.method, reply.message))
        return True
