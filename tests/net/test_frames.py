"""The sans-IO codec: every message round-trips; every kind of bad frame is a typed error."""

from __future__ import annotations

import pathlib
import random
import struct

import crc32c
import msgspec
import pytest

import shardwise.net
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
from shardwise.net.frames import (
    CLOSED,
    HEADER_BYTES,
    MAGIC,
    MAX_FRAME_BYTES,
    MAX_HANDSHAKE_FRAME_BYTES,
    NEED_DATA,
    Codec,
    Event,
    decode_body,
    encode_frame,
)
from shardwise.net.harness import sample_raft_messages, sample_wire_messages
from shardwise.net.wire import (
    PROTOCOL_VERSION,
    TYPE_VERSIONS,
    WIRE_TYPES,
    GoodbyeReason,
    RaftFrame,
    RpcRequest,
    RpcResponse,
    type_name,
)
from shardwise.raft.messages import MESSAGE_TYPES, Heartbeat

_pack = msgspec.msgpack.encode


def raw_frame(
    body: bytes,
    *,
    magic: bytes = MAGIC,
    version: int = PROTOCOL_VERSION,
    flags: int = 0,
    length: int | None = None,
    checksum: int | None = None,
) -> bytes:
    """A frame built by hand, so each header field can be wrong on purpose."""
    head = struct.pack(">4sBBI", magic, version, flags, len(body) if length is None else length)
    if checksum is None:
        checksum = crc32c.crc32c(body, crc32c.crc32c(head))
    return head + struct.pack(">I", checksum) + body


def events(codec: Codec) -> list[Event]:
    out: list[Event] = []
    while True:
        event = codec.next_event()
        out.append(event)
        if event is NEED_DATA or event is CLOSED:
            return out


def decode_all(data: bytes, *, eof: bool = True) -> list[Event]:
    codec = Codec()
    if data:
        codec.receive_data(data)
    if eof:
        codec.receive_data(b"")
    return events(codec)


# --- round trips ----------------------------------------------------------------------


def test_the_samples_cover_every_raft_and_wire_type() -> None:
    """A new message type without a sample here fails, so it cannot skip these tests."""
    assert {type(m) for m in sample_raft_messages()} == set(MESSAGE_TYPES)
    assert {type(m) for m in sample_wire_messages()} == set(WIRE_TYPES)


@pytest.mark.parametrize(
    "message", sample_wire_messages(), ids=lambda m: type_name(m) + ":" + type(m).__name__
)
def test_every_message_round_trips(message: shardwise.net.wire.WireMessage) -> None:
    frame = Codec().send(message)
    assert frame == encode_frame(message)
    assert decode_all(frame) == [message, CLOSED]
    if isinstance(message, RaftFrame):
        assert type(message.message) in MESSAGE_TYPES


def test_a_stream_of_frames_in_arbitrary_chunks_decodes_in_order(rng: random.Random) -> None:
    messages = sample_wire_messages() * 3
    rng.shuffle(messages)
    stream = b"".join(encode_frame(m) for m in messages)
    codec = Codec()
    out: list[Event] = []
    pos = 0
    while pos < len(stream):
        step = rng.choice([1, 2, 13, 64, 1000, 5000])
        codec.receive_data(stream[pos : pos + step])
        pos += step
        out += [e for e in events(codec) if e is not NEED_DATA]
    codec.receive_data(b"")
    assert out + events(codec) == [*messages, CLOSED]
    assert codec.buffered_bytes == 0


def test_every_prefix_of_a_frame_needs_data_then_is_truncated_at_eof() -> None:
    frame = encode_frame(RaftFrame(group=3, message=sample_raft_messages()[0]))
    for cut in range(len(frame)):
        assert decode_all(frame[:cut], eof=False) == [NEED_DATA]
        if cut == 0:
            assert decode_all(b"") == [CLOSED]
        else:
            with pytest.raises(TruncatedFrameError):
                decode_all(frame[:cut])


def test_the_header_is_fourteen_bytes_big_endian() -> None:
    frame = encode_frame(RpcResponse(call_id=5, body=b"ok"))
    body = frame[HEADER_BYTES:]
    assert HEADER_BYTES == 14
    assert frame[:4] == MAGIC == b"\xd5SWN"
    assert frame[4] == PROTOCOL_VERSION == 1
    assert frame[5] == 0
    assert int.from_bytes(frame[6:10], "big") == len(body)
    assert int.from_bytes(frame[10:14], "big") == crc32c.crc32c(body, crc32c.crc32c(frame[:10]))
    assert msgspec.msgpack.decode(body) == ["reply/1", 5, b"ok"]


def test_tags_carry_each_type_and_its_version() -> None:
    assert TYPE_VERSIONS == {
        "hello": 1,
        "challenge": 1,
        "proof": 1,
        "refuse": 1,
        "welcome": 1,
        "raft": 1,
        "call": 1,
        "reply": 1,
        "fail": 1,
        "bye": 1,
    }


# --- typed errors ---------------------------------------------------------------------


def valid_body() -> bytes:
    return encode_frame(RpcResponse(call_id=1, body=b"x"))[HEADER_BYTES:]


@pytest.mark.parametrize(
    ("frame", "error"),
    [
        (raw_frame(valid_body(), magic=b"GET "), BadMagicError),
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", BadMagicError),
        (raw_frame(valid_body(), version=2), UnsupportedVersionError),
        (raw_frame(valid_body(), version=0), UnsupportedVersionError),
        (raw_frame(valid_body(), flags=1), UnsupportedVersionError),
        (raw_frame(valid_body(), checksum=0), ChecksumMismatchError),
        (raw_frame(b""), InvalidMessageError),
        (raw_frame(b"\xc1"), InvalidMessageError),  # a byte MessagePack never uses
        (raw_frame(_pack({"k": "reply/1"})), InvalidMessageError),
        (raw_frame(_pack(["zap/1", 1])), UnknownMessageTypeError),
        (raw_frame(_pack([7, 1])), InvalidMessageError),
        (raw_frame(_pack(["reply/2", 1, b""])), UnsupportedVersionError),
        (raw_frame(_pack(["reply/1", -1, b""])), InvalidMessageError),
        (raw_frame(_pack(["reply/1", 1 << 63, b""])), InvalidMessageError),
        (raw_frame(_pack(["reply/1", 1, "not bytes"])), InvalidMessageError),
        (raw_frame(_pack(["reply/1", 1])), InvalidMessageError),
        (raw_frame(_pack(["hello/1", "n1", 0, b"short nonce"])), InvalidMessageError),
        (raw_frame(_pack(["hello/1", "", 0, bytes(32)])), InvalidMessageError),
        (raw_frame(_pack(["hello/1", "n" * 129, 0, bytes(32)])), InvalidMessageError),
        (raw_frame(_pack(["hello/1", "n1", 9, bytes(32)])), InvalidMessageError),
        (raw_frame(_pack(["call/1", 1, "m", 0, b""])), InvalidMessageError),
        (raw_frame(_pack(["call/1", 1, "", 10, b""])), InvalidMessageError),
        (raw_frame(_pack(["fail/1", 1, 99, "?"])), InvalidMessageError),
        (raw_frame(_pack(["bye/1", 0])), InvalidMessageError),
        (raw_frame(_pack(["raft/1", 1, {"t": "nope", "term": 1}])), InvalidMessageError),
        (
            raw_frame(_pack(["raft/1", -1, {"t": "hb", "term": 1, "sender": "a", "to": "b"}])),
            InvalidMessageError,
        ),
        (
            raw_frame(_pack(["raft/1", 1, {"t": "hb", "term": "1", "sender": "a", "to": "b"}])),
            InvalidMessageError,
        ),
        (raw_frame(b"\x91" * 100_000 + b"\xc0"), InvalidMessageError),  # nested too deep
    ],
)
def test_bad_frames_raise_typed_protocol_errors(frame: bytes, error: type[ProtocolError]) -> None:
    with pytest.raises(error):
        decode_all(frame)


def test_an_oversized_length_is_refused_before_its_body_arrives() -> None:
    codec = Codec()
    codec.receive_data(raw_frame(b"", length=MAX_FRAME_BYTES + 1))
    with pytest.raises(FrameTooLargeError):
        codec.next_event()


def test_the_handshake_limit_is_much_smaller() -> None:
    codec = Codec(MAX_HANDSHAKE_FRAME_BYTES)
    codec.receive_data(encode_frame(RpcResponse(call_id=1, body=bytes(MAX_HANDSHAKE_FRAME_BYTES))))
    with pytest.raises(FrameTooLargeError):
        codec.next_event()
    codec = Codec(MAX_HANDSHAKE_FRAME_BYTES)
    codec.receive_data(encode_frame(RpcResponse(call_id=1, body=bytes(400))))
    assert isinstance(codec.next_event(), RpcResponse)


def test_a_broken_codec_stays_broken() -> None:
    good = encode_frame(RpcResponse(call_id=1, body=b""))
    codec = Codec()
    codec.receive_data(raw_frame(valid_body(), magic=b"XXXX") + good)
    for _ in range(3):
        with pytest.raises(BadMagicError):
            codec.next_event()


def test_frames_after_a_good_one_are_checked_independently() -> None:
    good = encode_frame(RpcResponse(call_id=1, body=b""))
    codec = Codec()
    codec.receive_data(good + raw_frame(valid_body(), checksum=1))
    assert isinstance(codec.next_event(), RpcResponse)
    with pytest.raises(ChecksumMismatchError):
        codec.next_event()


def test_encoding_refuses_a_message_over_the_limit() -> None:
    big = RpcRequest(call_id=1, method="m", timeout_ms=1, body=bytes(MAX_FRAME_BYTES))
    with pytest.raises(FrameTooLargeError):
        encode_frame(big)
    small = RpcRequest(call_id=1, method="m", timeout_ms=1, body=bytes(100))
    with pytest.raises(FrameTooLargeError):
        encode_frame(small, max_frame_bytes=50)


def test_data_after_eof_is_a_usage_error() -> None:
    codec = Codec()
    codec.receive_data(b"")
    with pytest.raises(RuntimeError):
        codec.receive_data(b"x")


def test_max_frame_bytes_is_bounded() -> None:
    with pytest.raises(ValueError):
        Codec(0)
    with pytest.raises(ValueError):
        Codec(MAX_FRAME_BYTES + 1)


def test_decode_body_alone() -> None:
    body = encode_frame(RaftFrame(group=1, message=Heartbeat(term=1, sender="a", to="b")))
    assert decode_body(body[HEADER_BYTES:]) == RaftFrame(
        group=1, message=Heartbeat(term=1, sender="a", to="b")
    )
    assert isinstance(GoodbyeReason.SHUTDOWN, int)


def test_nothing_in_the_package_pickles() -> None:
    package = pathlib.Path(shardwise.net.__file__).parent
    for path in package.rglob("*.py"):
        assert "pickle" not in path.read_text(), path
