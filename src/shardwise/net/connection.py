"""One TCP (or TLS) connection: a stream pair, its codec, and the handshake over it.

The codec does the parsing (sans-IO); this module only moves bytes between it and
asyncio's streams, and runs the four handshake messages of ``auth.py`` in order. What a
connection carries and when it closes is decided by the transport.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import socket
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Final, TypeVar

from shardwise.errors import (
    AuthenticationError,
    FrameBudgetError,
    HandshakeInterruptedError,
    NetError,
    ServerBusyError,
    TooManyConnectionsError,
    UnexpectedMessageError,
)
from shardwise.net.auth import AcceptorHandshake, DialerHandshake
from shardwise.net.frames import (
    CLOSED,
    MAX_FRAME_BYTES,
    MAX_HANDSHAKE_FRAME_BYTES,
    NEED_BUFFER,
    NEED_DATA,
    Codec,
    encode_frame,
)
from shardwise.net.wire import (
    MAX_REFUSAL_MESSAGE_CHARS,
    Challenge,
    Hello,
    PeerRole,
    Proof,
    RefusalReason,
    Refused,
    Welcome,
    WireMessage,
)

if TYPE_CHECKING:
    from shardwise.net.budget import FrameBudget
    from shardwise.net.links import Link

M = TypeVar("M", bound=WireMessage)

_serials: Final = itertools.count(1)

UNACKED_SEND_TIMEOUT_MS: Final = 2000
"""How long sent bytes may stay unacknowledged by the peer's kernel before the
connection is given up (``TCP_USER_TIMEOUT``): past a few election timeouts, so a brief
loss costs nothing, short enough that a cut link is dialled again soon after it heals."""


def _give_up_on_unacknowledged_sends(writer: asyncio.StreamWriter) -> None:
    """Have the kernel close the connection once bytes it sent stay unacknowledged for
    :data:`UNACKED_SEND_TIMEOUT_MS` (``TCP_USER_TIMEOUT``). A path that drops packets (a
    partition) otherwise leaves the connection in TCP's retransmission back-off, where
    after the path heals it resumes only at its next, seconds-late retransmission, and a
    Raft peer goes unheard meanwhile (a quorum lost for nothing). Closed, it is dialled
    again, which works at once after the heal. A paused but live peer's kernel still
    acknowledges, so a pause does not close it."""
    sock = writer.get_extra_info("socket")
    option = getattr(socket, "TCP_USER_TIMEOUT", None)
    if sock is None or option is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.IPPROTO_TCP, option, UNACKED_SEND_TIMEOUT_MS)


def refusal_error(refused: Refused) -> NetError:
    """The dialer's error for an acceptor's refusal: only a failed proof says anything
    about the secret."""
    text = f"the server refused the connection: {refused.message or refused.reason.name}"
    reason = refused.reason.name.lower()
    if refused.reason is RefusalReason.AUTHENTICATION_FAILED:
        return AuthenticationError(text)
    if refused.reason is RefusalReason.TOO_MANY_CONNECTIONS:
        return TooManyConnectionsError(text, reason)
    return ServerBusyError(text, reason)


class PeerConnection:
    """An open connection, authenticated or still in its handshake.

    ``serial`` orders connections by when this process opened or accepted them; the
    ownership rule uses it to prefer the newer of two connections from the same dialer.
    """

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        local_id: str,
        outbound: bool,
        read_chunk_bytes: int,
    ) -> None:
        self.serial = next(_serials)
        self.reader = reader
        self.writer = writer
        _give_up_on_unacknowledged_sends(writer)
        self.local_id = local_id
        self.outbound = outbound
        self.codec = Codec(MAX_HANDSHAKE_FRAME_BYTES)
        self.peer_id = ""
        self.peer_role = PeerRole.NODE
        self.peer_user: str | None = None
        """The user an inbound client logged in as (``None``: it proved the secret)."""
        self.goodbye_sent = False
        self.goodbye_received = False
        self.lost = False
        """Ended without a goodbye (EOF, error, abort): what it carried may be lost."""
        self.superseded = False
        """Lost to another connection between the same nodes; both sides still read
        everything written on it before its goodbyes, so nothing on it is lost."""
        self.link: Link | None = None
        """The link this connection carries, once the handshake admitted it."""
        self.reader_done = asyncio.Event()
        self.evicted = False
        """Made room for a newer unauthenticated connection (and was told so)."""
        self.frames_received = 0
        """Messages read so far: a call that timed out while it did not move was sent on
        a connection that may be dead (``Transport.call``)."""
        self._read_chunk_bytes = read_chunk_bytes
        self._budget: FrameBudget | None = None
        self._cut: FrameBudgetError | None = None
        self._reserved = False

    def has_unread_input(self) -> bool:
        """Whether bytes arrived that were not read yet (a hello waiting for its task to
        run). Peeks at the stream's buffer; ``False`` where it cannot tell."""
        return bool(getattr(self.reader, "_buffer", None))

    def use_budget(self, budget: FrameBudget) -> None:
        """Reserve every large unfinished incoming frame from ``budget`` (an acceptor's
        connections share their transport's)."""
        self._budget = budget
        self.codec.reserves = True

    def cut_for_budget(self, error: FrameBudgetError) -> None:
        """The budget gives this connection's frame up: close at once; ``receive`` raises
        ``error``."""
        self._cut = error
        self.codec.fail(error)
        self.abort()

    @property
    def dialer_id(self) -> str:
        return self.local_id if self.outbound else self.peer_id

    def __repr__(self) -> str:
        arrow = "->" if self.outbound else "<-"
        return f"<Connection #{self.serial} {self.local_id} {arrow} {self.peer_id or '?'}>"

    # --- bytes -------------------------------------------------------------------------

    async def receive(self) -> WireMessage | None:
        """The next message, or ``None`` once the peer closed cleanly between frames.
        Raises ``ProtocolError`` for bad bytes and ``OSError`` for a broken socket."""
        codec = self.codec
        budget = self._budget
        while True:
            event = codec.next_event()
            if event is NEED_DATA:
                data = await self.reader.read(self._read_chunk_bytes)
                if self._cut is not None:
                    raise self._cut
                codec.receive_data(data)
                if budget is not None and codec.frame_buffer_bytes:
                    budget.progress(self)
            elif event is NEED_BUFFER:
                assert budget is not None
                await budget.acquire(self, codec.pending_frame_bytes)
                self._reserved = True
                codec.allocate()
            elif event is CLOSED:
                return None
            else:
                if self._reserved:
                    self._reserved = False
                    assert budget is not None
                    budget.release(self)
                self.frames_received += 1
                return event

    async def receive_expected(self, kind: type[M]) -> M:
        message = await self.receive()
        if message is None:
            raise HandshakeInterruptedError("the peer closed the connection during the handshake")
        if isinstance(message, Refused) and self.outbound:
            raise refusal_error(message)
        if not isinstance(message, kind):
            raise UnexpectedMessageError(
                f"expected {kind.__name__} in the handshake, got {type(message).__name__}"
            )
        return message

    def write(self, frames: Iterable[bytes]) -> None:
        self.writer.writelines(frames)

    async def send_now(self, message: WireMessage) -> None:
        self.writer.write(encode_frame(message))
        await self.writer.drain()

    def abort(self) -> None:
        """Close at once, discarding what is buffered (a cut, a protocol error)."""
        self.lost = True
        self.writer.transport.abort()
        self._release()

    def refuse(self, reason: RefusalReason, message: str) -> None:
        """Tell the dialer why it is turned away (one small frame, written without
        waiting), then close: gracefully, so the frame is not discarded."""
        self.lost = True
        refuse(self.writer, reason, message)
        self._release()

    def _release(self) -> None:
        """Give back what the budget holds for us (or stop waiting for it)."""
        self._reserved = False
        if self._budget is not None:
            self._budget.release(self)

    async def close(self) -> None:
        """Close and wait until the socket is released; never raises."""
        self._release()
        self.codec.discard()
        if not self.writer.is_closing():
            self.writer.close()
        with contextlib.suppress(OSError, asyncio.CancelledError):
            await self.writer.wait_closed()

    # --- handshake ---------------------------------------------------------------------

    async def dial_handshake(self, handshake: DialerHandshake) -> None:
        """Authenticate to the acceptor and have it authenticate itself to us."""
        await self.send_now(handshake.hello())
        challenge = await self.receive_expected(Challenge)
        await self.send_now(handshake.on_challenge(challenge))
        welcome = await self.receive_expected(Welcome)
        self.peer_id = handshake.on_welcome(welcome)
        self.peer_role = PeerRole.NODE
        self.codec.max_frame_bytes = MAX_FRAME_BYTES

    async def accept_handshake(
        self, handshake: AcceptorHandshake, admit: Callable[[PeerConnection], None]
    ) -> None:
        """Authenticate the dialer, then prove ourselves. ``admit`` sees the connection
        once the dialer is authenticated and before it is welcomed: it may refuse it
        (raise ``AuthenticationError``) or adopt it, so that by the time the dialer hears
        it was welcomed, this side already counts the connection as open."""
        await self.finish_accept(handshake, await self.receive_hello(), admit)

    async def receive_hello(self) -> Hello:
        """The acceptor's first step: the dialer's hello (its first frame)."""
        return await self.receive_expected(Hello)

    async def finish_accept(
        self, handshake: AcceptorHandshake, hello: Hello, admit: Callable[[PeerConnection], None]
    ) -> None:
        """The rest of :meth:`accept_handshake`, once the hello is in."""
        await self.send_now(handshake.on_hello(hello))
        proof = await self.receive_expected(Proof)
        welcome = handshake.on_proof(proof)
        self.peer_id = hello.node_id
        self.peer_role = hello.role
        self.peer_user = handshake.peer_user
        self.codec.max_frame_bytes = MAX_FRAME_BYTES
        admit(self)
        await self.send_now(welcome)


def refuse(writer: asyncio.StreamWriter, reason: RefusalReason, message: str) -> None:
    """Write a refusal on a connection and close it (gracefully: the frame goes first).
    Never raises: the connection may already be gone."""
    # Cut by bytes, not characters, so the frame always fits the dialer's handshake limit.
    text = message.encode()[:MAX_REFUSAL_MESSAGE_CHARS].decode(errors="ignore")
    frame = encode_frame(Refused(reason=reason, message=text), MAX_HANDSHAKE_FRAME_BYTES)
    with contextlib.suppress(OSError, RuntimeError):
        if not writer.is_closing():
            writer.write(frame)
        writer.transport.close()
