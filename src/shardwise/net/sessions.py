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
from shardwise.net.connection import PeerConnection
from shardwise.net.links import Address, Link
from shardwise.net.timing import within
from shardwise.net.wire import Goodbye, GoodbyeReason, PeerRole

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
        if (
            self._closing
            or len(self._connections) >= limits.max_connections
            or self._handshaking >= limits.max_handshaking
        ):
            self._bump("connections_refused")
            writer.transport.abort()
            return
        conn = PeerConnection(
            reader,
            writer,
            local_id=self.id,
            outbound=False,
            read_chunk_bytes=limits.read_chunk_bytes,
        )
        self._connections.add(conn)
        _keepalive(writer)
        try:
            self._handshaking += 1
            self._notify()
            try:
                handshake = AcceptorHandshake(self._secret, self.id)
                await within(
                    self._clock,
                    limits.handshake_timeout_s,
                    conn.accept_handshake(handshake, self._admit),
                )
            except (OSError, TimeoutError, NetError, RefusedError) as exc:
                self._handshake_failed(conn, exc)
                return
            finally:
                self._handshaking -= 1
                self._notify()
            self._bump("connections_accepted")
            await self._serve(conn)
        finally:
            self._forget(conn)
            await conn.close()

    def _handshake_failed(self, conn: PeerConnection, exc: Exception) -> None:
        conn.abort()
        self._detach(conn)
        if isinstance(exc, TimeoutError):
            self._bump("handshake_timeouts")
        elif isinstance(exc, RefusedError):
            self._bump("connections_refused")
        elif isinstance(exc, AuthenticationError):
            self._bump("auth_failures")
        elif isinstance(exc, ProtocolError):
            self._bump("protocol_errors")
        logger.info("%s: handshake with %s failed: %r", self.id, conn.peer_id or "?", exc)

    def _admit(self, conn: PeerConnection) -> None:
        """An authenticated dialer: adopt it, or turn it away before it is welcomed."""
        if self._closing:
            raise RefusedError("shutting down")
        if self.faults is not None and self.faults.is_cut(self.id, conn.peer_id):
            raise RefusedError(f"the link to {conn.peer_id!r} is cut")
        if conn.peer_role is PeerRole.CLIENT:
            link = Link(conn.peer_id, PeerRole.CLIENT, None, self.limits)
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
            handshake = DialerHandshake(self._secret, self.id, self.role, expected_peer=peer)
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
        error = PeerUnreachableError(f"cannot connect to {link.peer_id!r} at {link.address}")
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
