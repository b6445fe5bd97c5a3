"""The log record format: how one entry is framed on disk, and how a segment is scanned.

A record is a 12-byte header followed by the payload (see ``DESIGN.md``)::

    magic (4 bytes) | payload length (u32 LE) | CRC32C of length + payload (u32 LE)

The checksum covers the length field too, so a flipped bit there is caught rather than
read as a record boundary. The magic lets recovery find record starts after a damaged
record with ``bytes.find`` (at C speed), which is how a torn tail is told from damage in
the middle of a segment: a damaged record followed by any readable record is corruption.
"""

from __future__ import annotations

import struct
from array import array
from dataclasses import dataclass, field
from typing import Final

import crc32c
import msgspec

from shardwise.errors import CorruptLogError
from shardwise.storage.rules import MAX_ENTRY_DATA_BYTES
from shardwise.storage.types import LogEntry

RECORD_MAGIC: Final = b"\xf1SWL"
"""Starts every record; it also names format version 1 (a new format gets a new magic)."""

HEADER: Final = struct.Struct("<4sII")
HEADER_BYTES: Final = HEADER.size
_LENGTH: Final = struct.Struct("<I")

MAX_PAYLOAD_BYTES: Final = MAX_ENTRY_DATA_BYTES + 64
"""Largest payload a record may declare: the largest entry plus msgpack framing (at most
a few dozen bytes for the array, two integers and the bytes header)."""

MAX_RECORD_BYTES: Final = HEADER_BYTES + MAX_PAYLOAD_BYTES

_encoder: Final = msgspec.msgpack.Encoder()
_decoder: Final = msgspec.msgpack.Decoder(LogEntry)


def encode_record(entry: LogEntry) -> bytes:
    """Frame one entry as a record: header then msgpack payload."""
    payload = _encoder.encode(entry)
    length = len(payload)
    checksum = crc32c.crc32c(payload, crc32c.crc32c(_LENGTH.pack(length)))
    return HEADER.pack(RECORD_MAGIC, length, checksum) + payload


def parse_record(buf: bytes, pos: int) -> tuple[LogEntry, int] | str:
    """The entry framed at ``buf[pos:]`` and the offset just after it, or, when no valid
    record starts there, the reason why (a short phrase for error messages)."""
    if len(buf) - pos < HEADER_BYTES:
        return "truncated header"
    magic, length, checksum = HEADER.unpack_from(buf, pos)
    if magic != RECORD_MAGIC:
        return "bad magic"
    if length > MAX_PAYLOAD_BYTES:
        return f"length {length} over the limit"
    start = pos + HEADER_BYTES
    end = start + length
    if end > len(buf):
        return "truncated payload"
    view = memoryview(buf)
    payload = view[start:end]
    if crc32c.crc32c(payload, crc32c.crc32c(view[pos + 4 : start - 4])) != checksum:
        return "checksum mismatch"
    try:
        entry = _decoder.decode(payload)
    except msgspec.DecodeError:
        # A payload with a good checksum that does not decode was written by a different
        # program or version; it is never a torn write.
        return "undecodable payload"
    return entry, end


def find_record_after(buf: bytes, pos: int) -> int | None:
    """Offset of the first valid record starting after ``pos``, if any."""
    candidate = buf.find(RECORD_MAGIC, pos + 1)
    while candidate != -1:
        if not isinstance(parse_record(buf, candidate), str):
            return candidate
        candidate = buf.find(RECORD_MAGIC, candidate + 1)
    return None


@dataclass
class SegmentScan:
    """What a scan of one segment file found, index by index from its first entry."""

    terms: array[int] = field(default_factory=lambda: array("Q"))
    offsets: array[int] = field(default_factory=lambda: array("Q"))
    data_lengths: array[int] = field(default_factory=lambda: array("Q"))
    valid_end: int = 0
    """Offset just past the last valid record."""
    bad_reason: str | None = None
    """Why the bytes at ``valid_end`` are not a record; ``None`` if the file ends there."""
    later_record: int | None = None
    """Offset of a valid record found after the bad one: proof of mid-segment damage."""


def scan_segment(buf: bytes, name: str, first_index: int, previous_term: int) -> SegmentScan:
    """Read every record of a segment, stopping at the first that cannot be read.

    Records that read fine but break the log's shape (an unexpected index, a term going
    backwards) cannot come from a torn write, so they raise ``CorruptLogError`` at once.
    """
    scan = SegmentScan()
    pos = 0
    index = first_index
    while pos < len(buf):
        parsed = parse_record(buf, pos)
        if isinstance(parsed, str):
            scan.bad_reason = parsed
            scan.later_record = find_record_after(buf, pos)
            break
        entry, end = parsed
        if entry.index != index:
            raise CorruptLogError(
                f"{name}: offset {pos}: expected entry {index}, found {entry.index}"
            )
        if entry.term < previous_term:
            raise CorruptLogError(
                f"{name}: offset {pos}: entry {index} has term {entry.term}, "
                f"below the term {previous_term} before it"
            )
        scan.terms.append(entry.term)
        scan.offsets.append(pos)
        scan.data_lengths.append(len(entry.data))
        previous_term = entry.term
        index += 1
        pos = end
    scan.valid_end = pos
    return scan


def decode_run(buf: bytes, base_offset: int, first_index: int, name: str) -> list[LogEntry]:
    """Decode the consecutive records in ``buf`` (read from ``base_offset`` of a segment),
    which must hold entries ``first_index, first_index + 1, ...``.

    These records were validated when the log was opened or written by this process, so
    any failure now is damage to the file since then.
    """
    result: list[LogEntry] = []
    pos = 0
    while pos < len(buf):
        parsed = parse_record(buf, pos)
        if isinstance(parsed, str):
            raise CorruptLogError(f"{name}: offset {base_offset + pos}: {parsed}")
        entry, pos_after = parsed
        expected = first_index + len(result)
        if entry.index != expected:
            raise CorruptLogError(
                f"{name}: offset {base_offset + pos}: expected entry {expected}, "
                f"found {entry.index}"
            )
        result.append(entry)
        pos = pos_after
    return result
