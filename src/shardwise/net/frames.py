"""The sans-IO frame codec: bytes in, validated messages out, and messages back to bytes.

Shaped like h11: feed what the socket gave with :meth:`Codec.receive_data` (``b""``
means the peer closed), then call :meth:`Codec.next_event` until it returns
:data:`NEED_DATA` (or :data:`CLOSED` once the peer closed after a whole frame).
:meth:`Codec.send` turns a message into the bytes to write. Nothing here touches a socket,
a clock or a thread, so every byte sequence can be tested without a network.

A frame, all integers big-endian (DESIGN.md has the byte-by-byte table)::

    magic (4) | version (1) | flags (1) | body length (4) | CRC32C (4) | body

The CRC32C covers the ten header bytes before it and the body. The body is one wire
message (``wire.py``) as MessagePack. Anything wrong raises a subclass of
:class:`~shardwise.errors.ProtocolError`, and the codec then stays broken: every later
call raises the same error, because after a bad frame the stream cannot be resynchronised.
"""

from __future__ import annotations

import enum
import struct
import traceback
from typing import Final

import crc32c
import msgspec

from shardwise.errors import (
    BadMagicError,
    ChecksumMismatchError,
    FrameTooLargeError,
    InvalidMessageError,
    ProtocolError,
    TruncatedFrameError,
    UnknownMessageTypeError,
    UnsupportedVersionError,
)
from shardwise.net.wire import PROTOCOL_VERSION, TYPE_VERSIONS, WireMessage

MAGIC: Final = b"\xd5SWN"
"""First four bytes of every frame. The first byte is not ASCII, so text protocols (HTTP,
a stray ``telnet``) are rejected on their first byte."""

_HEAD: Final = struct.Struct(">4sBBI")
_CRC: Final = struct.Struct(">I")
HEADER_BYTES: Final = _HEAD.size + _CRC.size
"""Magic, version, flags, body length, checksum: 14 bytes."""

MAX_FRAME_BYTES: Final = 16 << 20
"""Largest body accepted after the handshake: room for a full Raft append
(``MAX_APPEND_BYTES``, 1 MiB) or snapshot chunk many times over, small enough that one
peer cannot make a node buffer much. A Raft message that would not fit is dropped."""

MAX_HANDSHAKE_FRAME_BYTES: Final = 512
"""Largest body accepted before the peer is authenticated: a handshake message needs
under 200 bytes, and an unauthenticated peer must not make us buffer more."""

EXACT_BUFFER_AT_BYTES: Final = 64 << 10
"""A frame whose body is at least this long and has not all arrived gets one buffer of
exactly its size (the caller reserves it from the transport's budget first:
:data:`NEED_BUFFER`), and the rest of its bytes are copied into it as they come, instead
of growing a buffer read by read (which over-allocates and copies the frame again at each
growth). Smaller frames cost at most this much per connection, so they are not counted."""

_COMPACT_AT_BYTES: Final = 64 << 10
"""Consumed bytes at the front of the buffer that trigger moving the rest down; below
this the move costs more than it saves."""


class _Sentinel(enum.Enum):
    NEED_DATA = "NEED_DATA"
    CLOSED = "CLOSED"
    NEED_BUFFER = "NEED_BUFFER"


NEED_DATA: Final = _Sentinel.NEED_DATA
"""``next_event`` needs more bytes before it can return a message."""

CLOSED: Final = _Sentinel.CLOSED
"""The peer closed the stream after a whole frame; nothing more will come."""

NEED_BUFFER: Final = _Sentinel.NEED_BUFFER
"""A large frame's header is in but not its body: reserve :attr:`Codec.pending_frame_bytes`
(the transport's budget) and call :meth:`Codec.allocate`, then go on."""

Event = WireMessage | _Sentinel

_encoder: Final = msgspec.msgpack.Encoder()
_decoder: Final[msgspec.msgpack.Decoder[WireMessage]] = msgspec.msgpack.Decoder(WireMessage)


DECODE_ERRORS: Final = (msgspec.DecodeError, UnicodeDecodeError, RecursionError)
"""What msgspec raises for bad input: its own errors, and invalid UTF-8 in a string
(which it reports as Python's own ``UnicodeDecodeError``)."""


class _Head(msgspec.Struct, array_like=True):
    """Just the tag of a body: decoded only to explain why a body did not validate."""

    tag: str


_head_decoder: Final = msgspec.msgpack.Decoder(_Head)


def encode_frame(message: WireMessage, max_frame_bytes: int = MAX_FRAME_BYTES) -> bytes:
    """One whole frame for ``message``; :class:`FrameTooLargeError` if its body exceeds
    ``max_frame_bytes`` (the message is then not sent at all)."""
    buf = bytearray(HEADER_BYTES)
    _encoder.encode_into(message, buf, HEADER_BYTES)
    length = len(buf) - HEADER_BYTES
    if length > max_frame_bytes:
        raise FrameTooLargeError(
            f"{type(message).__name__} needs a {length}-byte frame; the limit is {max_frame_bytes}"
        )
    _HEAD.pack_into(buf, 0, MAGIC, PROTOCOL_VERSION, 0, length)
    with memoryview(buf) as view:
        checksum = crc32c.crc32c(view[HEADER_BYTES:], crc32c.crc32c(view[: _HEAD.size]))
    _CRC.pack_into(buf, _HEAD.size, checksum)
    return bytes(buf)


def decode_body(body: bytes | memoryview) -> WireMessage:
    """Decode and validate one frame body, or raise a typed :class:`ProtocolError`."""
    try:
        return _decoder.decode(body)
    except DECODE_ERRORS as exc:
        raise _classify(body, exc) from None


def _classify(body: bytes | memoryview, exc: Exception) -> ProtocolError:
    """Tell an unknown type or version from an invalid body of a known type."""
    try:
        tag = _head_decoder.decode(body).tag
    except DECODE_ERRORS:
        return InvalidMessageError(f"frame body does not decode: {exc}")
    name, _, version = tag.partition("/")
    known = TYPE_VERSIONS.get(name)
    if known is None:
        return UnknownMessageTypeError(f"unknown message type {tag[:64]!r}")
    if version != str(known):
        return UnsupportedVersionError(
            f"message {name!r} version {version[:16]!r} is not supported (we speak {known})"
        )
    return InvalidMessageError(f"invalid {name!r} message: {exc}")


class Codec:
    """One direction-pair of one connection: decodes what arrives, encodes what leaves.

    ``max_frame_bytes`` bounds what is accepted; a connection starts at
    :data:`MAX_HANDSHAKE_FRAME_BYTES` and raises it once the peer is authenticated. A large
    frame that arrives in pieces is gathered in one buffer of its exact size
    (:data:`EXACT_BUFFER_AT_BYTES`), which with ``reserves`` the caller must reserve first.
    """

    def __init__(self, max_frame_bytes: int = MAX_FRAME_BYTES, *, reserves: bool = False) -> None:
        self.reserves = reserves
        """Whether :data:`NEED_BUFFER` is returned before a large frame's buffer is
        allocated (the caller reserves it from a budget); if not, it is allocated at once."""
        self._buf = bytearray()
        self._pos = 0
        self._eof = False
        self._error: ProtocolError | None = None
        self._frame: bytearray | None = None
        """The exactly-sized buffer of the large frame being received, header included."""
        self._filled = 0
        self._pending = 0
        """The whole size of a large frame announced by its header, not yet allocated."""
        self.max_frame_bytes = max_frame_bytes

    @property
    def max_frame_bytes(self) -> int:
        return self._max_frame_bytes

    @max_frame_bytes.setter
    def max_frame_bytes(self, value: int) -> None:
        if not 0 < value <= MAX_FRAME_BYTES:
            raise ValueError(f"max_frame_bytes must be in (0, {MAX_FRAME_BYTES}]")
        self._max_frame_bytes = value

    @property
    def buffered_bytes(self) -> int:
        """Bytes received and not yet returned as messages."""
        return len(self._buf) - self._pos + self._filled

    @property
    def frame_buffer_bytes(self) -> int:
        """Size of the exactly-sized buffer held for an unfinished large frame (0: none)."""
        return 0 if self._frame is None else len(self._frame)

    @property
    def pending_frame_bytes(self) -> int:
        """After :data:`NEED_BUFFER`: the whole size of the frame to reserve."""
        return self._pending

    def allocate(self) -> None:
        """Allocate the buffer for the frame :data:`NEED_BUFFER` announced, and move the
        bytes of it already received there."""
        size = self._pending
        if not size or self._frame is not None:
            raise RuntimeError("allocate() without NEED_BUFFER")
        self._pending = 0
        frame = bytearray(size)
        with memoryview(self._buf) as view:
            taken = min(size, len(self._buf) - self._pos)
            frame[:taken] = view[self._pos : self._pos + taken]
        self._pos += taken
        self._frame, self._filled = frame, taken

    def fail(self, error: ProtocolError) -> None:
        """Break the codec with ``error`` (the transport gave the connection up) and let
        its buffers go."""
        self._error = error
        self.discard()

    def discard(self) -> None:
        """Let the buffers go now (the connection is over). Not left to the garbage
        collector: an error kept here holds a traceback that refers back to this codec,
        a cycle that would keep a 16 MiB frame buffer alive until a collection runs."""
        self._frame = None
        self._filled = self._pending = 0
        self._buf = bytearray()
        self._pos = 0

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Add bytes from the peer; ``b""`` says the peer closed its side."""
        if self._eof:
            if data:
                raise RuntimeError("receive_data after end of stream")
            return
        if not data:
            self._eof = True
            return
        frame = self._frame
        if frame is not None:
            taken = min(len(frame) - self._filled, len(data))
            with memoryview(data) as view:
                frame[self._filled : self._filled + taken] = view[:taken]
                self._filled += taken
                if taken == len(data):
                    return
                data = bytes(view[taken:])
        if self._pos and (self._pos >= _COMPACT_AT_BYTES or self._pos == len(self._buf)):
            del self._buf[: self._pos]
            self._pos = 0
        self._buf += data

    def next_event(self) -> Event:
        """The next whole message, :data:`NEED_DATA` or :data:`CLOSED`; or raise."""
        if self._error is not None:
            raise self._error
        try:
            return self._next()
        except ProtocolError as exc:
            # The finished frames in the traceback hold the frame buffer as a local: clear
            # them, or the error kept below keeps the buffer alive.
            traceback.clear_frames(exc.__traceback__)
            self._error = exc
            self.discard()
            raise

    def send(self, message: WireMessage) -> bytes:
        """The frame to write for ``message`` (bounded by :data:`MAX_FRAME_BYTES`: the
        peer's limit, not this side's current one)."""
        return encode_frame(message)

    def _next(self) -> Event:
        if self._frame is not None:
            return self._next_large(self._frame)
        if self._pending:
            return NEED_BUFFER
        available = len(self._buf) - self._pos
        if available < HEADER_BYTES:
            return self._short(available)
        pos = self._pos
        magic, version, flags, length = _HEAD.unpack_from(self._buf, pos)
        if magic != MAGIC:
            raise BadMagicError(f"bad frame magic {bytes(magic)!r}")
        if version != PROTOCOL_VERSION:
            raise UnsupportedVersionError(
                f"frame protocol version {version} is not supported (we speak {PROTOCOL_VERSION})"
            )
        if flags:
            raise UnsupportedVersionError(f"frame flags {flags:#04x} are not understood")
        if length > self._max_frame_bytes:
            raise FrameTooLargeError(
                f"a {length}-byte frame exceeds the limit of {self._max_frame_bytes}"
            )
        end = pos + HEADER_BYTES + length
        if len(self._buf) < end:
            if length >= EXACT_BUFFER_AT_BYTES and not self._eof:
                self._pending = HEADER_BYTES + length
                if self.reserves:
                    return NEED_BUFFER
                self.allocate()
                return NEED_DATA
            return self._short(available)
        message = _check_and_decode(self._buf, pos, end)
        self._pos = end
        return message

    def _next_large(self, frame: bytearray) -> Event:
        if self._filled < len(frame):
            if not self._eof:
                return NEED_DATA
            raise TruncatedFrameError(f"stream ended {self._filled} bytes into a frame")
        self._frame, self._filled = None, 0
        return _check_and_decode(frame, 0, len(frame))

    def _short(self, available: int) -> Event:
        if not self._eof:
            return NEED_DATA
        if available:
            raise TruncatedFrameError(f"stream ended {available} bytes into a frame")
        return CLOSED


def _check_and_decode(buf: bytearray, pos: int, end: int) -> WireMessage:
    """The message of the whole frame at ``buf[pos:end]``, its checksum verified."""
    (expected,) = _CRC.unpack_from(buf, pos + _HEAD.size)
    with memoryview(buf) as view:
        body = view[pos + HEADER_BYTES : end]
        actual = crc32c.crc32c(body, crc32c.crc32c(view[pos : pos + _HEAD.size]))
        if actual != expected:
            body.release()
            raise ChecksumMismatchError("frame checksum does not match its contents")
        try:
            return decode_body(body)
        finally:
            body.release()
