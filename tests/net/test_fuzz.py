"""The decoder against garbage: only whole messages or typed protocol errors come out.

The bulk is a deterministic loop over a seeded generator (``FUZZ_INPUTS`` inputs per run,
in a few seconds): truncations, bit flips with and without a repaired checksum, random
MessagePack bodies under valid headers, wrong lengths and plain noise. Hypothesis adds
shrinking for the same properties; ``@pytest.mark.soak`` runs the loop much longer.
"""

from __future__ import annotations

import random
import struct
import time

import crc32c
import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from shardwise.errors import ProtocolError
from shardwise.net.frames import CLOSED, HEADER_BYTES, MAGIC, NEED_DATA, Codec, encode_frame
from shardwise.net.harness import sample_wire_messages
from shardwise.net.wire import PROTOCOL_VERSION, TYPE_VERSIONS, WIRE_TYPES

FUZZ_INPUTS = 100_000
"""Inputs per CI run: all fed through a fresh codec each, in random chunks."""

SOAK_INPUTS = 5_000_000

CORPUS: list[bytes] = [encode_frame(m) for m in sample_wire_messages(snapshot_bytes=64)]
TAGS: list[str] = [f"{name}/{v}" for name, v in TYPE_VERSIONS.items()] + ["raft/2", "zz/1"]
_pack = msgspec.msgpack.encode


def framed(body: bytes, *, length: int | None = None) -> bytes:
    head = struct.pack(
        ">4sBBI", MAGIC, PROTOCOL_VERSION, 0, len(body) if length is None else length
    )
    return head + struct.pack(">I", crc32c.crc32c(body, crc32c.crc32c(head))) + body


def repair(frame: bytes) -> bytes:
    """Recompute a mutated frame's checksum, so the mutation reaches the body decoder."""
    if len(frame) < HEADER_BYTES:
        return frame
    head, body = frame[:10], frame[HEADER_BYTES:]
    return head + struct.pack(">I", crc32c.crc32c(body, crc32c.crc32c(head))) + body


def random_value(rng: random.Random, depth: int = 0) -> object:
    kind = rng.randrange(10 if depth < 4 else 6)
    if kind == 0:
        return rng.choice([0, 1, -1, 2**63 - 1, -(2**63), 2**64 - 1, rng.randrange(-1000, 1000)])
    if kind == 1:
        return rng.choice(["", "n1", "x" * rng.randrange(200), "\u00e9\u4e2d", *TAGS])
    if kind == 2:
        return rng.randbytes(rng.choice([0, 1, 31, 32, 33, rng.randrange(100)]))
    if kind == 3:
        return rng.choice([None, True, False, 1.5, float("nan")])
    if kind == 4:
        return rng.choice(["hb", "app", "snap", "vote", "t", "term", "sender", "to"])
    if kind == 5:
        return rng.randrange(1 << 16)
    if kind in (6, 7):
        return [random_value(rng, depth + 1) for _ in range(rng.randrange(6))]
    keys = ["t", "term", "sender", "to", "entries", "meta", "commit", "data", "context"]
    return {rng.choice(keys): random_value(rng, depth + 1) for _ in range(rng.randrange(6))}


def random_body(rng: random.Random) -> bytes:
    """Mostly the shape of a wire message (a tag, then fields), with random contents."""
    if rng.random() < 0.2:
        return _pack(random_value(rng))
    fields = [random_value(rng) for _ in range(rng.randrange(6))]
    if rng.random() < 0.5:
        fields.insert(1, {"t": rng.choice(["hb", "app", "vote", "snap", "read"]), "term": 1})
    return _pack([rng.choice(TAGS), *fields])


def mutate(rng: random.Random) -> bytes:
    frame = rng.choice(CORPUS)
    kind = rng.randrange(9)
    if kind == 0:  # truncation
        return frame[: rng.randrange(len(frame))]
    if kind in (1, 2):  # bit flips; half the time the checksum is repaired
        data = bytearray(frame)
        for _ in range(rng.randrange(1, 9)):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        return repair(bytes(data)) if kind == 2 else bytes(data)
    if kind in (3, 4):  # random body under a valid header
        return framed(random_body(rng))
    if kind == 5:  # a header that lies about the length
        return framed(
            frame[HEADER_BYTES:], length=rng.choice([0, 1, 2**32 - 1, rng.randrange(2**25)])
        )
    if kind == 6:  # noise, sometimes after the magic
        noise = rng.randbytes(rng.randrange(64))
        return MAGIC + noise if rng.random() < 0.5 else noise
    if kind == 7:  # spliced frames, cut anywhere
        other = rng.choice(CORPUS)
        joined = frame + other
        return joined[: rng.randrange(len(joined) + 1)]
    # a byte-level edit of the body with a repaired checksum
    data = bytearray(frame)
    pos = rng.randrange(HEADER_BYTES, len(data))
    data[pos : pos + rng.randrange(4)] = rng.randbytes(rng.randrange(4))
    body = bytes(data[HEADER_BYTES:])
    return framed(body)


def feed(data: bytes, rng: random.Random) -> int:
    """Decode ``data`` in random chunks, then EOF. Returns messages decoded; raises only
    ``ProtocolError``; never loops more than the bytes allow."""
    codec = Codec()
    pos = 0
    decoded = 0
    budget = len(data) // HEADER_BYTES + 2
    try:
        while pos < len(data):
            step = rng.randrange(1, len(data) - pos + 1)
            codec.receive_data(data[pos : pos + step])
            pos += step
            while (event := codec.next_event()) is not NEED_DATA:
                assert isinstance(event, WIRE_TYPES), event
                decoded += 1
                budget -= 1
                assert budget > 0
        codec.receive_data(b"")
        while (event := codec.next_event()) is not CLOSED:
            assert isinstance(event, WIRE_TYPES), event
            decoded += 1
            budget -= 1
            assert budget > 0
    except ProtocolError:
        pass
    return decoded


def run_fuzz(seed: int, inputs: int) -> tuple[int, float]:
    rng = random.Random(seed)
    started = time.perf_counter()
    decoded = 0
    for _ in range(inputs):
        decoded += feed(mutate(rng), rng)
    return decoded, time.perf_counter() - started


def test_fuzz_the_decoder_with_a_seeded_generator(seed: int) -> None:
    decoded, elapsed = run_fuzz(seed, FUZZ_INPUTS)
    print(f"{FUZZ_INPUTS} inputs in {elapsed:.2f} s, {decoded} messages decoded")
    assert decoded > 0  # some mutations stay valid: the loop does reach the decoder


def test_every_prefix_of_every_sample_is_need_data_or_truncated(rng: random.Random) -> None:
    for frame in CORPUS:
        for cut in range(len(frame) + 1):
            assert feed(frame[:cut], rng) == (1 if cut == len(frame) else 0)


@pytest.mark.soak
def test_fuzz_the_decoder_for_long(seed: int) -> None:
    decoded, elapsed = run_fuzz(seed, SOAK_INPUTS)
    print(f"{SOAK_INPUTS} inputs in {elapsed:.1f} s, {decoded} messages decoded")


# --- hypothesis: the same properties, with shrinking -----------------------------------

_frames = st.sampled_from(CORPUS)


def _check(data: bytes) -> None:
    feed(data, random.Random(len(data)))


@given(st.binary(max_size=512))
def test_hypothesis_noise(data: bytes) -> None:
    _check(data)
    _check(MAGIC + bytes([PROTOCOL_VERSION, 0]) + data)


@given(_frames, st.data())
def test_hypothesis_flips_and_cuts(frame: bytes, data: st.DataObject) -> None:
    positions = data.draw(st.lists(st.integers(0, len(frame) * 8 - 1), max_size=8))
    mutated = bytearray(frame)
    for bit in positions:
        mutated[bit // 8] ^= 1 << (bit % 8)
    cut = data.draw(st.integers(0, len(frame)))
    _check(bytes(mutated)[:cut])
    _check(repair(bytes(mutated)))


_msgpack_values: st.SearchStrategy[object] = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.text(max_size=40)
    | st.binary(max_size=40)
    | st.sampled_from(TAGS),
    lambda children: (
        st.lists(children, max_size=6) | st.dictionaries(st.text(max_size=8), children, max_size=6)
    ),
    max_leaves=30,
)


@given(st.sampled_from(TAGS), st.lists(_msgpack_values, max_size=6))
def test_hypothesis_bodies_under_valid_headers(tag: str, fields: list[object]) -> None:
    _check(framed(_pack([tag, *fields])))
