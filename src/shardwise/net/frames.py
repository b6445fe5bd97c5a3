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

_COMPACT_AT_BYTES: Final = 64 << 10
"""Consumed bytes at the front of the buffer that trigger moving the rest down; below
this the move costs more than it saves."""


class _Sentinel(enum.Enum):
    NEED_DATA = "NEED_DATA"
    CLOSED = "CLOSED"


NEED_DATA: Final = _Sentinel.NEED_DATA
"""``next_event`` needs more bytes before it can return a message."""

CLOSED: Final = _Sentinel.CLOSED
"""The peer closed the stream after a whole frame; nothing more will come."""

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
    :data:`MAX_HANDSHAKE_FRAME_BYTES` and raises it once the peer is authenticated.
    """

    def __init__(self, max_frame_bytes: int = MAX_FRAME_BYTES) -> None:
        self._buf = bytearray()
        self._pos = 0
        self._eof = False
        self._error: ProtocolError | None = None
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
        return len(self._buf) - self._pos

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Add bytes from the peer; ``b""`` says the peer closed its side."""
        if self._eof:
            if data:
                raise RuntimeError("receive_data after end of stream")
            return
        if not data:
            self._eof = True
            return
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
            self._error = exc
            raise

    def send(self, message: WireMessage) -> bytes:
        """The frame to write for ``message`` (bounded by :data:`MAX_FRAME_BYTES`: the
        peer's limit, not this side's current one)."""
        return encode_frame(message)

    def _next(self) -> Event:
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
            return self._short(available)
        (expected,) = _CRC.unpack_from(self._buf, pos + _HEAD.size)
        with memoryview(self._buf) as view:
            body = view[pos + HEADER_BYTES : end]
            actual = crc32c.crc32c(body, crc32c.crc32c(view[pos : pos + _HEAD.size]))
            if actual != expected:
                body.release()
                raise ChecksumMismatchError("frame checksum does not match its contents")
            try:
                message = decode_body(body)
            finally:
                body.release()
        self._pos = end
        return message

    def _short(self, available: int) -> Event:
        if not self._eof:
            return NEED_DATA
        if available:
            raise TruncatedFrameError(f"stream ended {available} bytes into a frame")
        return CLOSED
