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
they went out on broke, ``PeerUnreachableError`` when dialling gave up,
``TransportClosedError`` on shutdown. Time (back-off, deadlines, handshake and close
timeouts, fault delays) is measured on the injected clock.

The connection life cycle, the ownership rule that leaves two nodes with one connection,
and every limit are explained in DESIGN.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import ssl
from collections.abc import Callable, Mapping
from typing import TypeVar

from shardwise.clock import Clock
from shardwise.errors import (
    FrameTooLargeError,
    NetError,
    RpcOverloadedError,
    RpcTimeoutError,
    TransportClosedError,
    UnexpectedMessageError,
    UnknownPeerError,
)
from shardwise.net.base import LOOPBACK, RaftHandler, logger
from shardwise.net.faults import FaultInjector
from shardwise.net.frames import encode_frame
from shardwise.net.limits import DEFAULT_RPC_TIMEOUT_S, Limits
from shardwise.net.links import Address, Link
from shardwise.net.rpc import PendingCall, RpcMethod
from shardwise.net.server import RpcServer
from shardwise.net.sessions import Sessions
from shardwise.net.timing import Backoff, RandomSource, within
from shardwise.net.wire import (
    MAX_RPC_TIMEOUT_MS,
    RaftFrame,
    Role,
    RpcFailure,
    RpcRequest,
    RpcResponse,
    WireMessage,
)
from shardwise.raft.messages import Message

Req = TypeVar("Req")
Resp = TypeVar("Resp")


class Transport(Sessions, RpcServer):
    """One process's network endpoint.

    A node (``role=Role.NODE``) listens on ``listen`` (loopback and an ephemeral port
    unless told otherwise) and dials the ``peers`` it has traffic for. A client
    (``role=Role.CLIENT``) never listens and only makes calls. ``secret`` is the
    cluster's shared secret; TLS is used when ``server_ssl`` / ``client_ssl`` are given.
    """

    def __init__(
        self,
        node_id: str,
        secret: bytes,
        *,
        role: Role = Role.NODE,
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
        )
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

    async def __aenter__(self) -> Transport:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

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
        for task in list(self._handler_tasks):
            task.cancel()
        await asyncio.gather(*self._handler_tasks, return_exceptions=True)
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
        self._raft_handlers[group] = handler

    def off_raft(self, group: int) -> None:
        self._raft_handlers.pop(group, None)

    def raft_sender(self, group: int) -> Callable[[Message], None]:
        """The ``send(message)`` callable for one group's host."""
        return functools.partial(self.send_raft, group)

    def send_raft(self, group: int, message: Message) -> None:
        """Queue a Raft message to ``message.to``; never blocks, never raises."""
        if self._closing or not self._running:
            self._bump("raft_dropped_closed")
            return
        if message.to == self.id:
            asyncio.get_running_loop().call_soon(self._deliver_raft, group, message)
            return
        self._send(message.to, RaftFrame(group=group, message=message), None)

    def _deliver_raft(self, group: int, message: Message) -> None:
        handler = self._raft_handlers.get(group)
        if handler is None:
            self._bump("raft_dropped_unknown_group")
            return
        try:
            handler(message)
        except Exception:
            logger.exception("%s: the Raft handler of group %d failed", self.id, group)
            self._bump("raft_handler_errors")
            return
        self._bump("raft_delivered")

    def _dispatch(self, link: Link, message: WireMessage) -> None:
        if isinstance(message, RaftFrame):
            if link.role is Role.CLIENT:
                raise UnexpectedMessageError(f"client {link.peer_id!r} sent a Raft message")
            inner = message.message
            if inner.sender != link.peer_id or inner.to != self.id:
                # Authenticated, so a bug rather than an attack; still never misdeliver.
                self._bump("raft_dropped_misaddressed")
                return
            self._deliver_raft(message.group, inner)
        elif isinstance(message, RpcRequest):
            self._on_request(link, message)
        elif isinstance(message, RpcResponse | RpcFailure):
            self._on_reply(link, message)
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
            link is None or not link.push_reply(self._encode_reply(message))
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
        if self._closing or not self._running:
            raise TransportClosedError(f"transport {self.id!r} is not running")
        if not 0 < timeout_s * 1000 <= MAX_RPC_TIMEOUT_MS:
            raise ValueError(f"timeout_s must be in (0, {MAX_RPC_TIMEOUT_MS // 1000}]")
        link = self._links.get(peer)
        if link is None:
            raise UnknownPeerError(peer)
        if len(link.pending) >= self.limits.max_pending_calls:
            self._bump("rpc_overloaded")
            raise RpcOverloadedError(f"{len(link.pending)} calls to {peer!r} are pending")
        call_id = next(self._call_ids)
        request_frame = RpcRequest(
            call_id=call_id,
            method=method.name,
            timeout_ms=max(1, math.ceil(timeout_s * 1000)),
            body=method.encode_request(request),
        )
        frame = encode_frame(request_frame)  # too large: FrameTooLargeError, nothing queued
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        link.pending[call_id] = PendingCall(future, method.name, frame)
        self._bump("rpc_calls")
        try:
            self._send(peer, request_frame, link)
            body = await within(self._clock, timeout_s, future)
        except TimeoutError:
            self._bump("rpc_timeouts")
            raise RpcTimeoutError(
                f"{method.name} to {peer!r}: no answer in {timeout_s} s"
            ) from None
        finally:
            link.pending.pop(call_id, None)
        return method.decode_response(body)

    def _on_reply(self, link: Link, reply: RpcResponse | RpcFailure) -> None:
        call = link.pending.get(reply.call_id)
        if call is None or call.future.done():
            self._bump("rpc_late_replies")
            return
        if isinstance(reply, RpcResponse):
            call.future.set_result(reply.body)
        else:
            call.future.set_exception(self._failure_error(reply, call.method))
        self._notify()
