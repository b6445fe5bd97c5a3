"""The part of a network endpoint that servers and clients use.

:class:`~shardwise.net.transport.Transport` (TCP) is the one users run; the simulator's
in-memory endpoint has the same surface, so the same server code runs on both. Both
subclass :class:`Endpoint`, which gives them ``async with`` (start, then close).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, Self, TypeVar

from shardwise.net.links import Address
from shardwise.net.rpc import Handler, RpcMethod
from shardwise.raft.messages import Message

Req = TypeVar("Req")
Resp = TypeVar("Resp")


class Endpoint(Protocol):
    id: str
    """This node's id (a plain attribute: a read-only property here would be inherited by
    the subclasses and refuse their assignment)."""

    @property
    def address(self) -> Address: ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def set_peer(self, node_id: str, address: Address | None) -> None: ...

    def serve(self, method: RpcMethod[Req, Resp], handler: Handler[Req, Resp]) -> None: ...

    async def call(
        self, peer: str, method: RpcMethod[Req, Resp], request: Req, *, timeout_s: float = ...
    ) -> Resp: ...

    def on_raft(self, group: int, handler: Callable[[Message], None]) -> None: ...

    def off_raft(self, group: int) -> None: ...

    def raft_sender(self, group: int) -> Callable[[Message], None]: ...

    def send_raft(self, group: int, message: Message) -> None: ...
