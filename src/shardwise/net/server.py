"""The callee's side of calls: run the registered handler for each request, bounded in
number and in time, and queue its answer (or a typed failure) back to the caller."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TypeVar

from shardwise.clock import Clock
from shardwise.errors import FrameTooLargeError, InvalidMessageError, NetError
from shardwise.net.base import TransportBase
from shardwise.net.frames import encode_frame
from shardwise.net.links import Link
from shardwise.net.rpc import CallContext, Handler, RawHandler, RpcMethod, erase, failure_error
from shardwise.net.timing import within
from shardwise.net.wire import (
    MAX_FAILURE_MESSAGE_CHARS,
    FailureCode,
    RpcFailure,
    RpcRequest,
    RpcResponse,
)

logger = logging.getLogger("shardwise.net.transport")

Req = TypeVar("Req")
Resp = TypeVar("Resp")


def rpc_failure(call_id: int, code: FailureCode, message: str) -> RpcFailure:
    """A typed failure reply, its message cut to the wire's limit."""
    return RpcFailure(call_id=call_id, code=code, message=message[:MAX_FAILURE_MESSAGE_CHARS])


async def handle_request(
    clock: Clock,
    request: RpcRequest,
    raw: RawHandler,
    context: CallContext,
    timeout_s: float,
    *,
    node_id: str,
    on_error: Callable[[], None],
) -> RpcResponse | RpcFailure:
    """Run ``raw`` for ``request`` within ``timeout_s`` and turn what happened into the
    reply: the response, or the typed failure the caller's transport maps to an error.
    Shared by the TCP transport and the simulator's, so both answer alike."""
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


class RpcServer(TransportBase):
    def serve(self, method: RpcMethod[Req, Resp], handler: Handler[Req, Resp]) -> None:
        """Answer calls of ``method`` with ``await handler(request, context)``."""
        self._methods[method.name] = erase(method, handler)

    def wrap_handlers(self, wrap: Callable[[str, RawHandler], RawHandler]) -> None:
        """Replace every handler registered so far with ``wrap(method name, handler)``:
        one seam for observers (metrics time every call) that costs nothing when unused."""
        for name, raw in list(self._methods.items()):
            self._methods[name] = wrap(name, raw)

    def _on_request(self, link: Link, request: RpcRequest) -> None:
        call_id = request.call_id
        if self._closing:
            self._bump("rpc_refused")
            self._send_reply(link, rpc_failure(call_id, FailureCode.SHUTTING_DOWN, "shutting down"))
            return
        raw = self._methods.get(request.method)
        if raw is None:
            failure = rpc_failure(
                call_id, FailureCode.UNKNOWN_METHOD, f"no method {request.method!r}"
            )
            self._send_reply(link, failure)
            return
        if (
            link.handlers_running >= self.limits.max_handlers_per_link
            or len(self._handler_tasks) >= self.limits.max_handlers
        ):
            self._bump("rpc_refused")
            running = len(self._handler_tasks)
            failure = rpc_failure(call_id, FailureCode.OVERLOADED, f"{running} calls running")
            self._send_reply(link, failure)
            return
        timeout_s = request.timeout_ms / 1000
        context = CallContext(link.peer_id, link.role, self._clock.now() + timeout_s)
        link.handlers_running += 1
        task = asyncio.create_task(
            self._run_handler(link, request, raw, context, timeout_s),
            name=f"{self.id}:call-{request.method}",
        )
        self._handler_tasks.add(task)
        task.add_done_callback(self._handler_tasks.discard)

    async def _run_handler(
        self,
        link: Link,
        request: RpcRequest,
        raw: RawHandler,
        context: CallContext,
        timeout_s: float,
    ) -> None:
        try:
            reply = await handle_request(
                self._clock,
                request,
                raw,
                context,
                timeout_s,
                node_id=self.id,
                on_error=lambda: self._bump("rpc_handler_errors"),
            )
        finally:
            link.handlers_running -= 1
        self._send_reply(link, reply)

    def _encode_reply(self, reply: RpcResponse | RpcFailure) -> bytes:
        try:
            return encode_frame(reply)
        except FrameTooLargeError as exc:
            return encode_frame(rpc_failure(reply.call_id, FailureCode.INTERNAL, str(exc)))

    def _failure_error(self, failure: RpcFailure, method: str) -> NetError:
        return failure_error(failure.code, method, failure.message)
