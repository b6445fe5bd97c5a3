"""Connections of a transport: accepting and dialling them, authenticating them, keeping
one per pair of nodes, and moving frames between them and the links' queues.

Every connection is served by one task that reads (and dispatches what it reads) and one
writer task that drains its link's queues while the connection is the link's current
one. A connection that stops being current (a better one won, or we are shutting down)
sends a goodbye as its last frame and closes once the peer's goodbye arrives, so frames
already written on it are still read and answered (see DESIGN.md, ownership).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket

from shardwise.errors import (
    AuthenticationError,
    ConnectionLostError,
    NetError,
    PeerUnreachableError,
    ProtocolError,
)
from shardwise.net.auth import AcceptorHandshake, DialerHandshake
from shardwise.net.base import TransportBase
from shardwise.net.connection import PeerConnection, refuse
from shardwise.net.links import Address, Link
from shardwise.net.timing import within
from shardwise.net.tls import require_node_certificate
from shardwise.net.wire import Goodbye, GoodbyeReason, PeerRole, RefusalReason

logger = logging.getLogger("shardwise.net.transport")


class RefusedError(Exception):
    """An authenticated peer is turned away (shutting down, cut, too many peers)."""


def _keepalive(writer: asyncio.StreamWriter) -> None:
    """TCP keepalive: a peer that vanished without a FIN is noticed eventually even on a
    link with no traffic."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)


def _source_of(writer: asyncio.StreamWriter) -> str:
    """The dialer's address (without its port): what the per-source budget counts by."""
    peer = writer.get_extra_info("peername")
    if isinstance(peer, tuple) and peer:
        return str(peer[0])
    return str(peer or "")


def _is_loopback(source: str) -> bool:
    try:
        return ipaddress.ip_address(source).is_loopback
    except ValueError:
        return False


class Sessions(TransportBase):
    # --- accepting ---------------------------------------------------------------------

    async def _on_accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            await self._accepted(reader, writer)
        finally:
            if task is not None:
                self._tasks.discard(task)

    async def _accepted(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        limits = self.limits
        if self._closing:
            self._refuse_at_once(writer, RefusalReason.SHUTTING_DOWN, "the server is shutting down")
            return
        if len(self._connections) >= limits.max_connections:
            self._refuse_at_once(
                writer,
                RefusalReason.TOO_MANY_CONNECTIONS,
                f"the server has {len(self._connections)} connections, its limit",
            )
            return
        conn = PeerConnection(
            reader,
            writer,
            local_id=self.id,
            outbound=False,
            read_chunk_bytes=limits.read_chunk_bytes,
        )
        conn.use_budget(self._frame_budget)
        self._connections.add(conn)
        _keepalive(writer)
        try:
            self._take_handshake_slot(conn, _source_of(writer))
            try:
                handshake = AcceptorHandshake(self._secret, self.id, users=self._users)
                await within(
                    self._clock, limits.handshake_timeout_s, self._accept_steps(conn, handshake)
                )
            except (OSError, TimeoutError, NetError, RefusedError) as exc:
                self._handshake_failed(conn, exc)
                return
            finally:
                self._slots.release(conn)
                self._handshaking = len(self._slots)
                self._notify()
            self._bump("connections_accepted")
            await self._serve(conn)
        finally:
            self._forget(conn)
            await conn.close()

    def _take_handshake_slot(self, conn: PeerConnection, source: str) -> None:
        """Give ``conn`` a handshake slot, evicting older unauthenticated connections if
        the slots (or its source address's share) are full: refusing the newcomer instead
        would hand the slots to whoever reopens sockets fastest (DESIGN.md, admission)."""
        known = any(
            link.address is not None and link.address[0] == source for link in self._links.values()
        )
        spoke = PeerConnection.has_unread_input
        # Every local process dials from a loopback address: a share per address would
        # only shrink the slots local clients have against a local flood.
        shared = _is_loopback(source)
        for victim in self._slots.admit(conn, source, known=known, spoke=spoke, shared=shared):
            victim.evicted = True
            self._bump("handshakes_evicted")
            victim.refuse(
                RefusalReason.TOO_MANY_CONNECTIONS,
                "too many connections in their handshake: this one made room for a newer one",
            )
        self._handshaking = len(self._slots)
        self._notify()

    async def _accept_steps(self, conn: PeerConnection, handshake: AcceptorHandshake) -> None:
        """The acceptor's handshake; the first frame has a deadline of its own, shorter,
        so a connection that says nothing is cut soonest."""
        limits = self.limits
        first_s = min(limits.first_frame_timeout_s, limits.handshake_timeout_s)
        try:
            hello = await within(self._clock, first_s, conn.receive_hello())
        except TimeoutError:
            self._bump("first_frame_timeouts")
            raise
        self._slots.heard(conn)
        await conn.finish_accept(handshake, hello, self._admit)

    def _refuse_at_once(
        self, writer: asyncio.StreamWriter, reason: RefusalReason, message: str
    ) -> None:
        """Turn a new connection away before anything is read, telling the dialer why."""
        self._bump("connections_refused")
        logger.info("%s: refused a connection from %s: %s", self.id, _source_of(writer), message)
        refuse(writer, reason, message)

    def _handshake_failed(self, conn: PeerConnection, exc: Exception) -> None:
        """Count and log why; tell the dialer unless it is not speaking our protocol (or
        was told already, when it was evicted); close."""
        if conn.evicted:  # counted and told when it was evicted
            conn.abort()
            self._detach(conn)
            logger.debug("%s: evicted %r in its handshake", self.id, conn)
            return
        refusal: tuple[RefusalReason, str] | None = None
        if isinstance(exc, TimeoutError):
            self._bump("handshake_timeouts")
            refusal = RefusalReason.TIMED_OUT, "the handshake did not finish in time"
        elif isinstance(exc, RefusedError):
            self._bump("connections_refused")
            closing = self._closing
            reason = RefusalReason.SHUTTING_DOWN if closing else RefusalReason.NOT_ADMITTED
            refusal = reason, str(exc)
        elif isinstance(exc, AuthenticationError):
            self._bump("auth_failures")
            refusal = RefusalReason.AUTHENTICATION_FAILED, str(exc)
        elif isinstance(exc, ProtocolError):
            self._bump("protocol_errors")
        if refusal is None:
            conn.abort()
        else:
            conn.refuse(*refusal)
        self._detach(conn)
        logger.info("%s: handshake with %s failed: %r", self.id, conn.peer_id or "?", exc)

    def _admit(self, conn: PeerConnection) -> None:
        """An authenticated dialer: adopt it, or turn it away before it is welcomed."""
        if self._closing:
            raise RefusedError("shutting down")
        if self.faults is not None and self.faults.is_cut(self.id, conn.peer_id):
            raise RefusedError(f"the link to {conn.peer_id!r} is cut")
        if self._server_ssl is not None and conn.peer_role is PeerRole.NODE:
            # The secret proves membership of the cluster, not which node: a node must
            # also hold the node certificate for the id it claims (see tls.py).
            require_node_certificate(conn.writer, conn.peer_id)
        if conn.peer_role is PeerRole.CLIENT:
            link = Link(conn.peer_id, PeerRole.CLIENT, None, self.limits)
            link.user = conn.peer_user
            self._client_links.add(link)
        else:
            node_link = self._node_link(conn.peer_id)
            if node_link is None:
                raise RefusedError("too many peers")
            link = node_link
        conn.link = link
        self._adopt(link, conn)

    # --- dialling ----------------------------------------------------------------------

    def _ensure_dialer(self, link: Link, *, after_loss: bool = False) -> None:
        if (
            self._running
            and not self._closing
            and link.role is PeerRole.NODE
            and link.connection is None
            and link.dialer is None
            and link.address is not None
            and link.wants_connection()
        ):
            link.dialer = self._spawn(self._dial_loop(link, after_loss), f"dial-{link.peer_id}")

    async def _dial_loop(self, link: Link, after_loss: bool) -> None:
        """Dial until connected, backing off between failures; give up after
        ``Backoff.max_attempts`` failures in a row and fail what waits."""
        attempt = 0
        try:
            if after_loss:  # a connection just broke: do not hammer a peer that is going down
                await self._clock.sleep(self._backoff.delay_s(0, self._rng))
            while not self._closing and link.connection is None and link.wants_connection():
                conn = await self._dial(link)
                if conn is not None:
                    self._spawn(self._serve_dialed(conn), f"conn-{link.peer_id}")
                    return
                attempt += 1
                link.dial_failures += 1
                if attempt >= self._backoff.max_attempts:
                    self._give_up(link)
                    return
                delay_s = self._backoff.delay_s(link.dial_failures - 1, self._rng)
                self._bump("dial_failures")
                self._unreachable(link, delay_s)
                await self._clock.sleep(delay_s)
        finally:
            link.dialer = None

    async def _dial(self, link: Link) -> PeerConnection | None:
        address = link.address
        if address is None or (self.faults and self.faults.is_cut(self.id, link.peer_id)):
            return None
        self._bump("dial_attempts")
        try:
            conn = await within(
                self._clock, self.limits.connect_timeout_s, self._open(link.peer_id, address)
            )
        except (OSError, TimeoutError, NetError) as exc:
            logger.debug("%s: dialling %s at %s failed: %r", self.id, link.peer_id, address, exc)
            if self._login is not None:
                link.login_refused = exc if isinstance(exc, AuthenticationError) else None
            return None
        if self._closing:
            conn.abort()
            self._forget(conn)
            await conn.close()
            return None
        conn.link = link
        self._adopt(link, conn)
        self._bump("connections_dialed")
        return conn

    async def _open(self, peer: str, address: Address) -> PeerConnection:
        host, port = address
        reader, writer = await asyncio.open_connection(
            host,
            port,
            ssl=self._client_ssl,
            ssl_handshake_timeout=self.limits.connect_timeout_s if self._client_ssl else None,
            ssl_shutdown_timeout=self.limits.close_timeout_s if self._client_ssl else None,
        )
        conn = PeerConnection(
            reader,
            writer,
            local_id=self.id,
            outbound=True,
            read_chunk_bytes=self.limits.read_chunk_bytes,
        )
        self._connections.add(conn)
        _keepalive(writer)
        try:
            if self._client_ssl is not None:  # the CA vouches for a node: the one we dialled?
                require_node_certificate(writer, peer)
            handshake = DialerHandshake(
                self._secret or None, self.id, self.role, expected_peer=peer, login=self._login
            )
            await conn.dial_handshake(handshake)
        except BaseException:
            conn.abort()
            self._forget(conn)
            await conn.close()
            raise
        return conn

    def _unreachable(self, link: Link, retry_in_s: float) -> None:
        """A dial failed (refused, timed out, cut): calls waiting for a connection fail
        now rather than at their deadline, and so do new ones until the next dial is
        due. Nothing of theirs was sent, so a caller may try another server at once (a
        client finds the next leader without waiting out its attempt's timeout)."""
        link.unreachable_until = self._clock.now() + retry_in_s
        error: NetError = link.login_refused or PeerUnreachableError(
            f"cannot connect to {link.peer_id!r} at {link.address}"
        )
        self._bump("rpc_unreachable", link.fail_queued_calls(error))

    def _give_up(self, link: Link) -> None:
        self._bump("dial_give_ups")
        self._bump("raft_dropped_queue_full", link.clear_queues())
        error = PeerUnreachableError(f"cannot reach {link.peer_id!r} at {link.address}")
        for call in link.pending.values():
            if not call.future.done():
                call.future.set_exception(error)

    async def _serve_dialed(self, conn: PeerConnection) -> None:
        try:
            await self._serve(conn)
        finally:
            self._forget(conn)
            await conn.close()

    # --- ownership ---------------------------------------------------------------------

    def _keeps(self, link: Link, current: PeerConnection, new: PeerConnection) -> bool:
        """Whether ``current`` stays over ``new``: the connection dialled by the node
        with the smaller id wins; of two dialled by the same node, the newer."""
        lower = min(self.id, link.peer_id)
        current_ok = current.dialer_id == lower
        new_ok = new.dialer_id == lower
        if current_ok != new_ok:
            return current_ok
        return current.serial > new.serial

    def _adopt(self, link: Link, conn: PeerConnection) -> None:
        current = link.connection
        if current is not None and current is not conn:
            self._bump("connections_superseded")
            if self._keeps(link, current, conn):
                conn.superseded = True
                return
            current.superseded = True
        link.connection = conn
        link.dial_failures = 0
        link.unreachable_until = 0.0
        link.wakeup.set()
        self._notify()

    def _detach(self, conn: PeerConnection) -> None:
        """``conn`` is ending: stop routing through it and settle its calls."""
        link = conn.link
        if link is None:
            return
        if link.connection is conn:
            link.connection = None
            link.wakeup.set()
        if not conn.superseded:
            # The peer may not have read these requests: their outcome is unknown.
            error = ConnectionLostError(f"the connection to {link.peer_id!r} closed")
            for call in link.pending.values():
                if call.written_on == conn.serial and not call.future.done():
                    call.future.set_exception(error)
        if link.role is PeerRole.CLIENT:
            self._client_links.discard(link)
            link.clear_queues()
        else:
            self._ensure_dialer(link, after_loss=conn.lost)
        self._notify()

    def _forget(self, conn: PeerConnection) -> None:
        self._connections.discard(conn)
        self._notify()

    # --- serving -----------------------------------------------------------------------

    async def _serve(self, conn: PeerConnection) -> None:
        """Read and dispatch until the peer's goodbye, EOF or an error; then settle."""
        link = conn.link
        assert link is not None
        writer = self._spawn(self._write_loop(conn, link), f"write-{link.peer_id}")
        try:
            while True:
                message = await conn.receive()
                if message is None:
                    conn.lost = True
                    break
                self._bump("frames_received")
                if isinstance(message, Goodbye):
                    conn.goodbye_received = True
                    if message.reason is GoodbyeReason.SUPERSEDED:
                        conn.superseded = True
                    break
                self._dispatch(link, message)
        except ProtocolError as exc:
            logger.warning("%s: protocol error from %s: %s", self.id, link.peer_id, exc)
            self._bump("protocol_errors")
            conn.abort()
        except OSError:
            conn.lost = True
        finally:
            conn.reader_done.set()
            if conn.lost:
                self._bump("connections_lost")
            self._detach(conn)
            try:
                await within(self._clock, self.limits.close_timeout_s, writer)
            except TimeoutError:
                conn.abort()

    async def _write_loop(self, conn: PeerConnection, link: Link) -> None:
        """While ``conn`` is its link's connection, write what the link queues; then say
        goodbye (unless the connection is already dead) and wait for the peer's."""
        try:
            while link.connection is conn and not conn.reader_done.is_set():
                if conn.writer.is_closing():  # the socket is gone; the reader will see it
                    conn.lost = True
                    return
                batch = link.take_batch(conn.serial)
                if not batch:
                    link.wakeup.clear()
                    await link.wakeup.wait()
                    continue
                conn.write(batch)
                self._bump("frames_sent", len(batch))
                await conn.writer.drain()
            if conn.lost:
                return
            if not conn.goodbye_sent:
                conn.goodbye_sent = True
                superseded = conn.superseded and not self._closing
                reason = GoodbyeReason.SUPERSEDED if superseded else GoodbyeReason.SHUTDOWN
                await conn.send_now(Goodbye(reason=reason))
            await within(self._clock, self.limits.close_timeout_s, conn.reader_done.wait())
        except TimeoutError:
            conn.abort()
        except OSError:
            conn.abort()

    def _on_faults_changed(self) -> None:
        """A rule changed: cut every connection a cut rule now covers."""
        faults = self.faults
        if faults is None:
            return
        for conn in list(self._connections):
            if conn.peer_id and faults.is_cut(self.id, conn.peer_id):
                conn.abort()
        for link in self._links.values():
            self._ensure_dialer(link)
