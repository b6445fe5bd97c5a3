"""The callee's side of calls: run the registered handler for each request, bounded in
number and in time, and queue its answer (or a typed failure) back to the caller."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TypeVar

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


def _failure(call_id: int, code: FailureCode, message: str) -> RpcFailure:
    return RpcFailure(call_id=call_id, code=code, message=message[:MAX_FAILURE_MESSAGE_CHARS])


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
            self._send_reply(link, _failure(call_id, FailureCode.SHUTTING_DOWN, "shutting down"))
            return
        raw = self._methods.get(request.method)
        if raw is None:
            failure = _failure(call_id, FailureCode.UNKNOWN_METHOD, f"no method {request.method!r}")
            self._send_reply(link, failure)
            return
        if (
            link.handlers_running >= self.limits.max_handlers_per_link
            or len(self._handler_tasks) >= self.limits.max_handlers
        ):
            self._bump("rpc_refused")
            running = len(self._handler_tasks)
            failure = _failure(call_id, FailureCode.OVERLOADED, f"{running} calls running")
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
        call_id = request.call_id
        reply: RpcResponse | RpcFailure
        try:
            body = await within(self._clock, timeout_s, raw(request.body, context))
            reply = RpcResponse(call_id=call_id, body=body)
        except InvalidMessageError as exc:
            reply = _failure(call_id, FailureCode.BAD_REQUEST, str(exc))
        except TimeoutError:
            reply = _failure(call_id, FailureCode.DEADLINE_EXCEEDED, f"not done in {timeout_s} s")
        except asyncio.CancelledError:
            # Only shutdown cancels handlers: tell the caller rather than leave it waiting.
            reply = _failure(call_id, FailureCode.SHUTTING_DOWN, "cancelled by shutdown")
        except Exception as exc:
            logger.exception("%s: handler of %s failed", self.id, request.method)
            self._bump("rpc_handler_errors")
            reply = _failure(call_id, FailureCode.INTERNAL, f"{type(exc).__name__}: {exc}")
        finally:
            link.handlers_running -= 1
        self._send_reply(link, reply)

    def _encode_reply(self, reply: RpcResponse | RpcFailure) -> bytes:
        try:
            return encode_frame(reply)
        except FrameTooLargeError as exc:
            return encode_frame(_failure(reply.call_id, FailureCode.INTERNAL, str(exc)))

    def _failure_error(self, failure: RpcFailure, method: str) -> NetError:
        return failure_error(failure.code, method, failure.message)
