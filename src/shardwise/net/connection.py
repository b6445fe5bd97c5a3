"""One TCP (or TLS) connection: a stream pair, its codec, and the handshake over it.

The codec does the parsing (sans-IO); this module only moves bytes between it and
asyncio's streams, and runs the four handshake messages of ``auth.py`` in order. What a
connection carries and when it closes is decided by the transport.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Final, TypeVar

from shardwise.errors import AuthenticationError, UnexpectedMessageError
from shardwise.net.auth import AcceptorHandshake, DialerHandshake
from shardwise.net.frames import (
    CLOSED,
    MAX_FRAME_BYTES,
    MAX_HANDSHAKE_FRAME_BYTES,
    NEED_DATA,
    Codec,
    encode_frame,
)
from shardwise.net.wire import Challenge, Hello, PeerRole, Proof, Welcome, WireMessage

if TYPE_CHECKING:
    from shardwise.net.links import Link

M = TypeVar("M", bound=WireMessage)

_serials: Final = itertools.count(1)


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
        self.local_id = local_id
        self.outbound = outbound
        self.codec = Codec(MAX_HANDSHAKE_FRAME_BYTES)
        self.peer_id = ""
        self.peer_role = PeerRole.NODE
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
        self._read_chunk_bytes = read_chunk_bytes

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
        while True:
            event = self.codec.next_event()
            if event is NEED_DATA:
                self.codec.receive_data(await self.reader.read(self._read_chunk_bytes))
            elif event is CLOSED:
                return None
            else:
                return event

    async def receive_expected(self, kind: type[M]) -> M:
        message = await self.receive()
        if message is None:
            raise AuthenticationError("the peer closed the connection during the handshake")
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

    async def close(self) -> None:
        """Close and wait until the socket is released; never raises."""
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
        hello = await self.receive_expected(Hello)
        await self.send_now(handshake.on_hello(hello))
        proof = await self.receive_expected(Proof)
        welcome = handshake.on_proof(proof)
        self.peer_id = hello.node_id
        self.peer_role = hello.role
        self.codec.max_frame_bytes = MAX_FRAME_BYTES
        admit(self)
        await self.send_now(welcome)
