"""The asyncio transport: one authenticated connection per pair of nodes, carrying every
Raft group's messages and every call between them.

Raft plugs in per group::

    host = RaftHost(node_id, membership, storage, sm, transport.raft_sender(group_id))
    transport.on_raft(group_id, host.deliver)

and calls are typed (``rpc.py``)::

    transport.serve(GET, handle_get)
    reply = await transport.call("n2", GET, GetRequest(...), timeout_s=1.0)

Raft sends never block or raise: a message that cannot be queued is dropped and counted
(Raft retransmits). Calls fail with typed errors: ``RpcOverloadedError`` when there is no
room, ``RpcTimeoutError`` at their deadline, ``ConnectionLostError`` when the connection
they went out on broke, ``PeerUnreachableError`` when the last dial of the peer failed
(at once: a dead peer is not waited for; nothing was sent),
``TransportClosedError`` on shutdown. Time (back-off, deadlines, handshake and close
timeouts, fault delays) is measured on the injected clock.

The connection life cycle, the ownership rule that leaves two nodes with one connection,
and every limit are explained in DESIGN.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ssl
from collections.abc import Callable, Mapping
from typing import TypeVar

from shardwise.clock import Clock
from shardwise.errors import (
    FrameTooLargeError,
    NetError,
    PeerUnreachableError,
    RpcOverloadedError,
    RpcTimeoutError,
    TransportClosedError,
    UnexpectedMessageError,
    UnknownPeerError,
)
from shardwise.net.auth import Credentials
from shardwise.net.base import LOOPBACK, logger
from shardwise.net.dispatch import (
    IncomingCalls,
    OutgoingCalls,
    RaftHandler,
    RaftRoutes,
    encode_reply,
)
from shardwise.net.endpoint import Endpoint
from shardwise.net.faults import FaultInjector
from shardwise.net.frames import encode_frame
from shardwise.net.limits import DEFAULT_RPC_TIMEOUT_S, Limits
from shardwise.net.links import Address, Link
from shardwise.net.rpc import Handler, RawHandler, RpcMethod
from shardwise.net.sessions import Sessions
from shardwise.net.timing import MIN_SILENT_DROP_S, Backoff, RandomSource, within
from shardwise.net.wire import (
    PeerRole,
    RaftFrame,
    RpcFailure,
    RpcRequest,
    RpcResponse,
    WireMessage,
)
from shardwise.raft.messages import Message

Req = TypeVar("Req")
Resp = TypeVar("Resp")


class Transport(Sessions, Endpoint):
    """One process's network endpoint.

    A node (``role=PeerRole.NODE``) listens on ``listen`` (loopback and an ephemeral port
    unless told otherwise) and dials the ``peers`` it has traffic for. A client
    (``role=PeerRole.CLIENT``) never listens and only makes calls. ``secret`` is the
    cluster's shared secret, or for a client a user's ``Login`` (see auth.py); TLS is
    used when ``server_ssl`` / ``client_ssl`` are given.
    """

    def __init__(
        self,
        node_id: str,
        secret: Credentials,
        *,
        role: PeerRole = PeerRole.NODE,
        peers: Mapping[str, Address] | None = None,
        listen: Address | None = LOOPBACK,
        server_ssl: ssl.SSLContext | None = None,
        client_ssl: ssl.SSLContext | None = None,
        clock: Clock | None = None,
        limits: Limits | None = None,
        backoff: Backoff | None = None,
        rng: RandomSource | None = None,
        faults: FaultInjector | None = None,
    ) -> None:
        super().__init__(
            node_id,
            secret,
            role=role,
            listen=listen,
            server_ssl=server_ssl,
            client_ssl=client_ssl,
            clock=clock,
            limits=limits,
            backoff=backoff,
            rng=rng,
            faults=faults,
            dispatch=self._dispatch,
        )
        self._raft = RaftRoutes(node_id, self._bump, logger)
        self._incoming = IncomingCalls(node_id, self._clock, self.limits, self._bump, logger)
        self._outgoing = OutgoingCalls(node_id, self._clock, self.limits, self._bump)
        self._unsubscribe: Callable[[], None] | None = None
        self._delay_tasks: set[asyncio.Task[None]] = set()
        for peer, address in (peers or {}).items():
            self.set_peer(peer, address)

    # --- life cycle --------------------------------------------------------------------

    async def start(self) -> None:
        """Listen (nodes only) and start working."""
        if self._running or self._closing:
            raise RuntimeError("a transport starts once")
        if self._listen is not None:
            host, port = self._listen
            self._server = await asyncio.start_server(
                self._on_accept,
                host,
                port,
                ssl=self._server_ssl,
                ssl_handshake_timeout=self.limits.handshake_timeout_s if self._server_ssl else None,
                ssl_shutdown_timeout=self.limits.close_timeout_s if self._server_ssl else None,
            )
        if self.faults is not None:
            self._unsubscribe = self.faults.subscribe(self._on_faults_changed)
        self._running = True
        for link in self._links.values():
            self._ensure_dialer(link)

    async def close(self) -> None:
        """Shut down: stop accepting, refuse new work, answer running calls with
        ``SHUTTING_DOWN``, let queued frames reach the sockets (for at most
        ``drain_timeout_s``), say goodbye on every connection, then fail whatever is
        left (``TransportClosedError``) and release every socket and task."""
        if self._closing:
            return
        self._closing = True
        if self._unsubscribe is not None:
            self._unsubscribe()
        if self._server is not None:
            self._server.close()
        await self._incoming.close()
        for link in self._links.values():
            if link.dialer is not None:
                link.dialer.cancel()
        for task in list(self._delay_tasks):
            task.cancel()
        with contextlib.suppress(TimeoutError):
            await within(self._clock, self.limits.drain_timeout_s, self.until(self._drained))
        closed = TransportClosedError(f"transport {self.id!r} closed")
        for link in self._all_links():
            for call in link.pending.values():
                if not call.future.done():
                    call.future.set_exception(closed)
            self._bump("raft_dropped_closed", link.clear_queues())
            link.connection = None  # each writer now says goodbye
            link.wakeup.set()
        for conn in list(self._connections):
            if conn.link is None:  # still in its handshake
                conn.abort()
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
        self._running = False
        self._notify()

    def _all_links(self) -> list[Link]:
        return [*self._links.values(), *self._client_links]

    def _drained(self) -> bool:
        return not any(
            link.has_frames() and link.connection is not None for link in self._all_links()
        )

    # --- peers -------------------------------------------------------------------------

    @property
    def address(self) -> Address:
        """The address this node listens on (with the real port if it asked for 0)."""
        if self._server is None or not self._server.sockets:
            raise RuntimeError("the transport is not listening")
        host, port = self._server.sockets[0].getsockname()[:2]
        return (host, port)

    def set_peer(self, node_id: str, address: Address | None) -> None:
        """Learn (or forget, with ``None``) where a node listens."""
        if node_id == self.id:
            raise ValueError("a node is not its own peer")
        link = self._node_link(node_id)
        if link is None:
            raise NetError(f"more than {self.limits.max_peers} peers")
        link.address = address
        self._ensure_dialer(link)

    @property
    def connection_count(self) -> int:
        """Open connections, authenticated or not."""
        return len(self._connections)

    @property
    def handshakes_in_progress(self) -> int:
        return self._handshaking

    def connected(self, node_id: str) -> bool:
        """Whether a connection to ``node_id`` is open now."""
        link = self._links.get(node_id)
        return link is not None and link.connection is not None

    # --- raft --------------------------------------------------------------------------

    def on_raft(self, group: int, handler: RaftHandler) -> None:
        """Deliver ``group``'s incoming Raft messages to ``handler`` (e.g. a host's
        ``deliver``); it must not block."""
        self._raft.on_raft(group, handler)

    def off_raft(self, group: int) -> None:
        self._raft.off_raft(group)

    def raft_sender(self, group: int) -> Callable[[Message], None]:
        """The ``send(message)`` callable for one group's host."""
        return functools.partial(self.send_raft, group)

    def send_raft(self, group: int, message: Message) -> None:
        """Queue a Raft message to ``message.to``; never blocks, never raises."""
        if self._closing or not self._running:
            self._bump("raft_dropped_closed")
            return
        if message.to == self.id:
            asyncio.get_running_loop().call_soon(self._raft.deliver, group, message)
            return
        self._send(message.to, RaftFrame(group=group, message=message), None)

    def _dispatch(self, link: Link, message: WireMessage) -> None:
        if isinstance(message, RaftFrame):
            if link.role is PeerRole.CLIENT:
                raise UnexpectedMessageError(f"client {link.peer_id!r} sent a Raft message")
            inner = message.message
            if inner.sender != link.peer_id or inner.to != self.id:
                # Authenticated, so a bug rather than an attack; still never misdeliver.
                self._bump("raft_dropped_misaddressed")
                return
            self._raft.deliver(message.group, inner)
        elif isinstance(message, RpcRequest):
            reply = functools.partial(self._send_reply, link)
            self._incoming.on_request(link, (link.peer_id, link.role, link.user), message, reply)
        elif isinstance(message, RpcResponse | RpcFailure):
            if self._outgoing.on_reply(link.pending, message):
                self._notify()
        else:
            raise UnexpectedMessageError(f"{type(message).__name__} after the handshake")

    # --- sending -----------------------------------------------------------------------

    def _send(self, peer: str, message: WireMessage, link: Link | None) -> None:
        """Pass a frame through the fault rules, then queue it."""
        verdict = self.faults.verdict(self.id, peer, message) if self.faults else None
        if verdict is not None and verdict.drop:
            self._bump("fault_dropped")
            return
        if verdict is not None and verdict.delay_s:
            if self._delayed >= self.limits.max_delayed_frames:
                self._bump("fault_dropped")
                return
            self._delayed += 1
            self._bump("fault_delayed")
            task = self._spawn(self._send_later(verdict.delay_s, peer, message, link), "delay")
            self._delay_tasks.add(task)
            task.add_done_callback(self._delay_tasks.discard)
            return
        self._enqueue(peer, message, link)

    async def _send_later(
        self, delay_s: float, peer: str, message: WireMessage, link: Link | None
    ) -> None:
        try:
            await self._clock.sleep(delay_s)
        finally:
            self._delayed -= 1
        if not self._closing:
            self._enqueue(peer, message, link)

    def _enqueue(self, peer: str, message: WireMessage, link: Link | None) -> None:
        link = link or self._links.get(peer)
        if isinstance(message, RaftFrame):
            if link is None:
                self._bump("raft_dropped_unroutable")
                return
            try:
                frame = encode_frame(message)
            except FrameTooLargeError:
                logger.warning("%s: dropped a Raft message too large for a frame", self.id)
                self._bump("raft_dropped_too_large")
                return
            if not link.push_raft(frame):
                self._bump("raft_dropped_queue_full")
                return
            self._bump("raft_sent")
        elif isinstance(message, RpcRequest):
            assert link is not None
            call = link.pending.get(message.call_id)
            if call is None or call.future.done():
                return  # it timed out while a fault rule held it
            if not link.push_request(message.call_id, call.frame):
                if not call.future.done():
                    self._bump("rpc_overloaded")
                    call.future.set_exception(
                        RpcOverloadedError(f"the request queue to {peer!r} is full")
                    )
                return
        elif isinstance(message, RpcResponse | RpcFailure) and (
            link is None or not link.push_reply(encode_reply(message)[1])
        ):
            self._bump("rpc_replies_dropped")
            return
        if link is not None:
            self._ensure_dialer(link)

    def _send_reply(self, link: Link, reply: RpcResponse | RpcFailure) -> None:
        self._send(link.peer_id, reply, link)

    # --- calls -------------------------------------------------------------------------

    async def call(
        self,
        peer: str,
        method: RpcMethod[Req, Resp],
        request: Req,
        *,
        timeout_s: float = DEFAULT_RPC_TIMEOUT_S,
    ) -> Resp:
        """Call ``method`` at ``peer`` and wait for its answer for at most ``timeout_s``."""
        self._outgoing.check(self._running and not self._closing, timeout_s)
        link = self._links.get(peer)
        if link is None:
            raise UnknownPeerError(peer)
        if link.connection is None and self._clock.now() < link.unreachable_until:
            if link.login_refused is not None:
                raise link.login_refused
            # The last dial failed and the next is not due: do not wait for it.
            self._bump("rpc_unreachable")
            raise PeerUnreachableError(
                f"{method.name} to {peer!r}: the last dial of {link.address} failed"
            )
        conn = link.connection
        heard = conn.frames_received if conn is not None else 0
        try:
            return await self._outgoing.call(
                peer,
                link.pending,
                method,
                request,
                timeout_s=timeout_s,
                send=lambda wire: self._send(peer, wire, link),
            )
        except RpcTimeoutError:
            # Nothing at all came back on the connection while the call waited: the peer,
            # or the path to it, is gone, and TCP would only notice after many minutes
            # (or resume after a healed partition only at its next, backed-off
            # retransmission). Drop it: calls fail fast while the peer cannot be dialled,
            # and the first dial after it can goes through at once.
            silent = (
                conn is not None
                and conn is link.connection
                and conn.frames_received == heard
                and timeout_s >= MIN_SILENT_DROP_S
            )
            if silent:
                assert conn is not None
                self._bump("connections_dropped_silent")
                conn.abort()
            raise

    # --- calls in ----------------------------------------------------------------------

    def serve(self, method: RpcMethod[Req, Resp], handler: Handler[Req, Resp]) -> None:
        """Answer calls of ``method`` with ``await handler(request, context)``."""
        self._incoming.serve(method, handler)

    def wrap_handlers(self, wrap: Callable[[str, RawHandler], RawHandler]) -> None:
        """Replace every handler registered so far with ``wrap(method name, handler)``:
        one seam for observers (metrics time every call) that costs nothing when unused."""
        self._incoming.wrap_handlers(wrap)
