"""One node's endpoint on a :class:`~shardwise.testing.simnet.SimNetwork`.

:class:`SimTransport` has the surface of :class:`shardwise.net.transport.Transport` that
servers use (:class:`~shardwise.net.endpoint.Endpoint`) and answers, refuses and matches
calls and routes Raft messages with the real transport's own parts
(``net/dispatch.py``); only how frames travel differs. How it mirrors the real
transport, and where it simplifies, is in :mod:`shardwise.testing.simnet`.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections import Counter
from collections.abc import Callable
from typing import Final, TypeVar

from shardwise.clock import AsyncioClock
from shardwise.errors import (
    ConnectionLostError,
    FrameTooLargeError,
    NetError,
    TransportClosedError,
    UnknownPeerError,
)
from shardwise.net.dispatch import (
    IncomingCalls,
    OutgoingCalls,
    RaftHandler,
    RaftRoutes,
    Reply,
    encode_reply,
)
from shardwise.net.endpoint import Endpoint
from shardwise.net.frames import encode_frame
from shardwise.net.limits import DEFAULT_RPC_TIMEOUT_S, Limits
from shardwise.net.links import Address
from shardwise.net.rpc import Handler, PendingCall, RpcMethod
from shardwise.net.wire import (
    PeerRole,
    RaftFrame,
    RpcRequest,
    WireMessage,
    check_node_id,
)
from shardwise.raft.messages import Message
from shardwise.testing.simnet import SimNetwork

logger = logging.getLogger("shardwise.testing.simnet")

Req = TypeVar("Req")
Resp = TypeVar("Resp")

SIM_HOST: Final = "sim"
"""The host of a node's address when its id is not ``host:port``."""


def _address_of(node_id: str) -> Address:
    host, sep, port = node_id.rpartition(":")
    if sep and host and port.isdigit() and int(port) < 1 << 16:
        return (host, int(port))
    return (SIM_HOST, 0)


class SimTransport(Endpoint):
    """One node's endpoint on a :class:`SimNetwork` (see :mod:`shardwise.testing.simnet`).

    Constructing it attaches it under ``node_id`` (replacing a transport of that id that
    is not running, as a restarted process does). ``limits`` bounds pending calls and
    running handlers as for the real transport. Time is the running loop's.
    """

    def __init__(
        self,
        node_id: str,
        network: SimNetwork,
        *,
        role: PeerRole = PeerRole.NODE,
        limits: Limits | None = None,
    ) -> None:
        self.id = check_node_id(node_id)
        self.role = role
        self.network = network
        self.limits = limits or Limits()
        self.stats: Counter[str] = Counter()
        clock = AsyncioClock()
        self._raft = RaftRoutes(node_id, self._count, logger)
        self._incoming = IncomingCalls(node_id, clock, self.limits, self._count, logger)
        self._outgoing = OutgoingCalls(node_id, clock, self.limits, self._count)
        self._peers: dict[str, Address | None] = {}
        self._pending: dict[str, dict[int, PendingCall]] = {}
        self._started = False
        self._closing = False
        network.attach(self)

    def _count(self, counter: str) -> None:
        self.stats[counter] += 1

    # --- life cycle ----------------------------------------------------------------------

    @property
    def running(self) -> bool:
        """Started and not closing."""
        return self._started and not self._closing

    async def start(self) -> None:
        if self._started or self._closing:
            raise RuntimeError("a transport starts once")
        self._started = True

    async def close(self) -> None:
        """Shut down as the real transport does: refuse new work, answer running calls
        with ``SHUTTING_DOWN``, fail this node's own calls with ``TransportClosedError``,
        then close the connections (peers' calls still in flight here fail with
        ``ConnectionLostError``)."""
        if self._closing:
            return
        self._closing = True
        await self._incoming.close()
        closed = TransportClosedError(f"transport {self.id!r} closed")
        for calls in self._pending.values():
            for call in calls.values():
                if not call.future.done():
                    call.future.set_exception(closed)
        self.network.reset_connections(self.id)

    # --- peers ---------------------------------------------------------------------------

    @property
    def address(self) -> Address:
        """``host:port`` parsed from the node id, else ``("sim", 0)``."""
        if not self.running or self.role is not PeerRole.NODE:
            raise RuntimeError("the transport is not listening")
        return _address_of(self.id)

    def set_peer(self, node_id: str, address: Address | None) -> None:
        """Learn (or forget, with ``None``) a peer's address: bookkeeping only, every
        node on the network can be reached by id."""
        if node_id == self.id:
            raise ValueError("a node is not its own peer")
        if address is None:
            self._peers.pop(node_id, None)
            return
        if node_id not in self._peers and len(self._peers) >= self.limits.max_peers:
            raise NetError(f"more than {self.limits.max_peers} peers")
        self._peers[node_id] = address

    # --- raft ----------------------------------------------------------------------------

    def send_raft(self, group: int, message: Message) -> None:
        """Send a Raft message to ``message.to``; never blocks, never raises."""
        if not self.running:
            self._count("raft_dropped_closed")
            return
        if message.to == self.id:
            asyncio.get_running_loop().call_soon(self._deliver_raft, group, message)
            return
        wire = RaftFrame(group=group, message=message)
        try:
            frame = encode_frame(wire)
        except FrameTooLargeError:
            logger.warning("%s: dropped a Raft message too large for a frame", self.id)
            self._count("raft_dropped_too_large")
            return
        self._count("raft_sent")
        self.network.transmit(self.id, message.to, frame, wire, duplicable=True)

    def _deliver_raft(self, group: int, message: Message) -> None:
        if not self.running:
            self._count("raft_dropped_closed")
            return
        self._raft.deliver(group, message)

    def raft_sender(self, group: int) -> Callable[[Message], None]:
        """``send_raft`` bound to ``group``: what a group's host is given to send with."""
        return functools.partial(self.send_raft, group)

    def on_raft(self, group: int, handler: RaftHandler) -> None:
        """Hand ``group``'s arriving Raft messages to ``handler``; it must not block."""
        self._raft.on_raft(group, handler)

    def off_raft(self, group: int) -> None:
        self._raft.off_raft(group)

    # --- calls ---------------------------------------------------------------------------

    def serve(self, method: RpcMethod[Req, Resp], handler: Handler[Req, Resp]) -> None:
        """Answer calls of ``method`` with ``await handler(request, context)``."""
        self._incoming.serve(method, handler)

    async def call(
        self,
        peer: str,
        method: RpcMethod[Req, Resp],
        request: Req,
        *,
        timeout_s: float = DEFAULT_RPC_TIMEOUT_S,
    ) -> Resp:
        """Call ``method`` at ``peer`` and wait for its answer for at most ``timeout_s``
        (loop time); errors as the real transport's (see :mod:`shardwise.testing.simnet`)."""
        self._outgoing.check(self.running, timeout_s)
        if peer == self.id or (peer not in self._peers and not self.network.knows(peer)):
            raise UnknownPeerError(peer)
        calls = self._pending.setdefault(peer, {})

        def send(wire: RpcRequest) -> None:
            frame = calls[wire.call_id].frame
            self.network.transmit(self.id, peer, frame, wire)

        try:
            return await self._outgoing.call(
                peer, calls, method, request, timeout_s=timeout_s, send=send
            )
        finally:
            if not calls and self._pending.get(peer) is calls:
                del self._pending[peer]

    def calls_to(self, peer: str) -> tuple[int, ...]:
        """The calls to ``peer`` still waiting for an answer."""
        calls = self._pending.get(peer, {})
        return tuple(call_id for call_id, call in calls.items() if not call.future.done())

    def connection_reset(self, peer: str, call_ids: tuple[int, ...]) -> None:
        """The connection to ``peer`` broke: ``call_ids`` fail (their outcome unknown)."""
        calls = self._pending.get(peer, {})
        for call_id in call_ids:
            call = calls.get(call_id)
            if call is not None and not call.future.done():
                call.future.set_exception(ConnectionLostError(f"the connection to {peer!r} closed"))

    # --- arrivals ------------------------------------------------------------------------

    def receive(self, sender: str, sender_role: PeerRole, message: WireMessage) -> None:
        """Handle a message the network delivers."""
        if isinstance(message, RaftFrame):
            inner = message.message
            if sender_role is not PeerRole.NODE or inner.sender != sender or inner.to != self.id:
                self._count("raft_dropped_misaddressed")
                return
            self._deliver_raft(message.group, inner)
        elif isinstance(message, RpcRequest):
            reply = functools.partial(self._send_reply, sender)
            self._incoming.on_request(sender, (sender, sender_role, None), message, reply)
        elif isinstance(message, Reply):
            self._outgoing.on_reply(self._pending.get(sender, {}), message)
        else:  # pragma: no cover - SimTransport sends nothing else
            raise TypeError(f"unexpected {type(message).__name__}")

    def _send_reply(self, caller: str, reply: Reply) -> None:
        sent, frame = encode_reply(reply)
        self.network.transmit(self.id, caller, frame, sent)
