"""The building blocks on their own: record framing, the tail cache, the limits."""

from __future__ import annotations

import pytest

from shardwise.errors import CorruptLogError
from shardwise.storage import LogEntry, entry_size
from shardwise.storage.hardstate import decode_hard_state, encode_hard_state
from shardwise.storage.record import (
    HEADER_BYTES,
    MAX_RECORD_BYTES,
    RECORD_MAGIC,
    decode_run,
    encode_record,
    find_record_after,
    parse_record,
    scan_segment,
)
from shardwise.storage.rules import MAX_ENTRY_DATA_BYTES
from shardwise.storage.tailcache import TailCache
from shardwise.storage.types import HardState


def test_a_record_is_header_then_msgpack_payload() -> None:
    record = encode_record(LogEntry(7, 3, b"abc"))
    assert record[:4] == RECORD_MAGIC
    assert int.from_bytes(record[4:8], "little") == len(record) - HEADER_BYTES
    # msgpack: fixarray of 3, fixint 7, fixint 3, bin8 of length 3.
    assert record[HEADER_BYTES:] == b"\x93\x07\x03\xc4\x03abc"
    assert parse_record(record, 0) == (LogEntry(7, 3, b"abc"), len(record))


def test_the_largest_entry_fits_the_record_limit() -> None:
    record = encode_record(LogEntry(2**63, 2**63, bytes(MAX_ENTRY_DATA_BYTES)))
    assert len(record) <= MAX_RECORD_BYTES


def test_every_single_bit_flip_in_a_record_is_detected() -> None:
    record = encode_record(LogEntry(1, 1, b"payload bytes"))
    for bit in range(len(record) * 8):
        damaged = bytearray(record)
        damaged[bit // 8] ^= 1 << (bit % 8)
        assert isinstance(parse_record(bytes(damaged), 0), str), bit


def test_a_valid_record_is_found_after_damage() -> None:
    first, second = encode_record(LogEntry(1, 1, b"a")), encode_record(LogEntry(2, 1, b"b"))
    buf = b"\xf1SW" + first[: len(first) - 1] + RECORD_MAGIC + b"junk" + second
    assert find_record_after(buf, 0) == len(buf) - len(second)
    assert find_record_after(first[:-1] + bytes(50), 0) is None


def test_scan_reports_where_and_why_it_stopped() -> None:
    records = [encode_record(LogEntry(i, 1, b"x" * i)) for i in range(1, 4)]
    buf = b"".join(records)
    clean = scan_segment(buf, "s", 1, 0)
    assert (clean.valid_end, clean.bad_reason, list(clean.terms)) == (len(buf), None, [1, 1, 1])
    torn = scan_segment(buf[:-2], "s", 1, 0)
    assert torn.valid_end == len(records[0]) + len(records[1])
    assert (torn.bad_reason, torn.later_record) == ("truncated payload", None)


def test_decode_run_refuses_damage() -> None:
    first = encode_record(LogEntry(5, 1, b"x"))
    buf = first + encode_record(LogEntry(6, 1, b"y"))
    assert [e.index for e in decode_run(buf, 0, 5, "s")] == [5, 6]
    with pytest.raises(CorruptLogError, match="expected entry 4"):
        decode_run(buf, 0, 4, "s")
    with pytest.raises(CorruptLogError, match=f"s: offset {100 + len(first)}: truncated"):
        decode_run(buf[:-1], 100, 5, "s")


def test_hard_state_round_trip() -> None:
    for state in [HardState(), HardState(7, "node-3", 41)]:
        assert decode_hard_state(encode_hard_state(state)) == state


def cached(cache: TailCache) -> list[int]:
    return [cache.get(i).index for i in range(cache.lo, cache.hi)]


def test_tail_cache_keeps_the_newest_entries_within_its_budget() -> None:
    entries = [LogEntry(i, 1, bytes(10)) for i in range(1, 21)]
    cache = TailCache(max_bytes=5 * entry_size(entries[0]), next_index=1)
    cache.extend(entries[:3])
    assert cached(cache) == [1, 2, 3]
    cache.extend(entries[3:])
    assert cached(cache) == [16, 17, 18, 19, 20]
    cache.truncate(18)
    assert (cache.lo, cache.hi, cached(cache)) == (16, 18, [16, 17])
    cache.truncate(3)
    assert (cache.lo, cache.hi) == (3, 3)
    cache.extend(entries[2:6])
    assert cached(cache) == [3, 4, 5, 6]
    cache.drop_before(5)
    assert cached(cache) == [5, 6]
    cache.drop_before(9)
    assert (cache.lo, cache.hi) == (9, 9)
    with pytest.raises(KeyError):
        cache.get(6)
    cache.clear(30)
    assert (cache.lo, cache.hi) == (30, 30)


def test_a_cache_of_zero_bytes_holds_nothing() -> None:
    cache = TailCache(max_bytes=0, next_index=1)
    cache.extend([LogEntry(1, 1, b"")])
    assert (cache.lo, cache.hi) == (2, 2)
