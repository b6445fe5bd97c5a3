"""Typed request/response calls over the transport.

A method is declared once, shared by caller and callee::

    GET = RpcMethod("kv.get", GetRequest, GetResponse)
    transport.serve(GET, handle_get)              # callee: async (request, context) -> response
    response = await transport.call("n2", GET, GetRequest(key=b"k"), timeout_s=1.0)

Request and response are msgspec types; the body of each travels MessagePack-encoded and
is decoded with validation against the method's types on arrival, so a handler never sees
a request that does not match its declared type. Application outcomes (not the leader,
wrong group, ...) belong in the response type; exceptions are for the transport's own
failures, which the caller receives as typed errors (``errors.py``, "net").
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

import msgspec

from shardwise.errors import (
    InvalidMessageError,
    NetError,
    RemoteCallError,
    RpcOverloadedError,
    RpcTimeoutError,
)
from shardwise.net.frames import DECODE_ERRORS
from shardwise.net.wire import MAX_METHOD_CHARS, FailureCode, PeerRole

Req = TypeVar("Req")
Resp = TypeVar("Resp")

_encode = msgspec.msgpack.Encoder().encode


class RpcMethod(Generic[Req, Resp]):
    """A named call with its request and response types."""

    def __init__(self, name: str, request_type: type[Req], response_type: type[Resp]) -> None:
        if not 0 < len(name) <= MAX_METHOD_CHARS:
            raise ValueError(f"a method name must be 1 to {MAX_METHOD_CHARS} characters")
        self.name = name
        self.request_type = request_type
        self.response_type = response_type
        self._decode_request = msgspec.msgpack.Decoder(request_type).decode
        self._decode_response = msgspec.msgpack.Decoder(response_type).decode

    def __repr__(self) -> str:
        return f"RpcMethod({self.name!r})"

    def encode_request(self, request: Req) -> bytes:
        return _encode(request)

    def decode_request(self, body: bytes) -> Req:
        try:
            return self._decode_request(body)
        except DECODE_ERRORS as exc:
            raise InvalidMessageError(f"invalid {self.name} request: {exc}") from None

    def encode_response(self, response: Resp) -> bytes:
        return _encode(response)

    def decode_response(self, body: bytes) -> Resp:
        try:
            return self._decode_response(body)
        except DECODE_ERRORS as exc:
            raise InvalidMessageError(f"invalid {self.name} response: {exc}") from None


@dataclass(frozen=True, slots=True)
class CallContext:
    """What a handler knows about the call besides its request."""

    peer_id: str
    """The caller's authenticated id."""
    peer_role: PeerRole
    deadline: float
    """When the caller gives up, on the callee's clock; the handler is cancelled then."""
    user: str | None = None
    """The user a client logged in as; ``None`` for a caller that proved it holds the
    cluster's peer secret (a node, or an operator's client), which may do anything."""


Handler = Callable[[Req, CallContext], Awaitable[Resp]]

RawHandler = Callable[[bytes, CallContext], Awaitable[bytes]]
"""A handler with its types erased: request body in, response body out."""


def erase(method: RpcMethod[Req, Resp], handler: Handler[Req, Resp]) -> RawHandler:
    async def raw(body: bytes, context: CallContext) -> bytes:
        request = method.decode_request(body)
        return method.encode_response(await handler(request, context))

    return raw


@dataclass(slots=True)
class PendingCall:
    """A call sent (or queued) and not yet answered."""

    future: asyncio.Future[bytes]
    method: str
    frame: bytes
    """The encoded request, queued until a connection takes it."""
    written_on: int = 0
    """Serial of the connection the request was written to (0: still queued)."""


def failure_error(code: FailureCode, method: str, message: str) -> NetError:
    """The exception a caller sees for a failure the callee reported."""
    if code is FailureCode.OVERLOADED:
        return RpcOverloadedError(f"{method}: the peer is overloaded: {message}")
    if code is FailureCode.DEADLINE_EXCEEDED:
        return RpcTimeoutError(f"{method}: the peer ran out of time: {message}")
    return RemoteCallError(code.name.lower(), f"{method}: {message}")
