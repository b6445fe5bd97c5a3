"""HyperLogLog: an approximate distinct count whose sketches merge by register maximum.

``approx_count_distinct(x)`` on a shard builds a sketch; the coordinator merges sketches
and estimates. A merged sketch equals the sketch of the union, so the estimate does not
depend on how rows are spread over shards (the differential test checks exactly that).

2**12 registers: a standard error of about 1.6%, 4 KiB per dense sketch. A sketch with
few registers set travels sparse (index and rank pairs), so a GROUP BY with many small
groups does not ship 4 KiB per group per shard.

Values hash by type and SQLite value (``1`` and ``1.0`` are one value, ``1`` and ``'1'``
two, as ``COUNT(DISTINCT)`` counts them) with xxh3-64 under a seed of this purpose only.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable
from typing import Final

from shardwise.placement import stable_hash
from shardwise.sql.values import SqlValue

PRECISION: Final = 12
REGISTERS: Final = 1 << PRECISION
HASH_SEED: Final = 0x48_4C_4C  # "HLL": a seed used for nothing else
_DENSE: Final = b"D"
_SPARSE: Final = b"S"
_PAIR: Final = struct.Struct("<HB")
_ALPHA: Final = 0.7213 / (1 + 1.079 / REGISTERS)


def value_hash(value: SqlValue) -> int:
    """A 64-bit hash of a non-NULL value, equal for values SQLite counts as one."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**63:
        value = int(value)
    if isinstance(value, int):
        data = b"i" + str(value).encode()
    elif isinstance(value, float):
        data = b"f" + struct.pack("<d", value)
    elif isinstance(value, str):
        data = b"t" + value.encode("utf-8", "surrogatepass")
    else:
        assert isinstance(value, bytes)
        data = b"b" + value
    return stable_hash(data, HASH_SEED)


class Sketch:
    """A mutable HyperLogLog sketch."""

    __slots__ = ("registers",)

    def __init__(self, registers: bytearray | None = None) -> None:
        self.registers = registers if registers is not None else bytearray(REGISTERS)

    def add(self, value: SqlValue) -> None:
        h = value_hash(value)
        index = h >> (64 - PRECISION)
        rest = h & ((1 << (64 - PRECISION)) - 1)
        rank = (64 - PRECISION) - rest.bit_length() + 1
        self.registers[index] = max(self.registers[index], rank)

    def merge(self, other: Sketch) -> None:
        # Register by register maximum, in one pass in C rather than a Python loop: a
        # coordinator merges one sketch per shard per group.
        self.registers[:] = bytes(map(max, self.registers, other.registers))

    def estimate(self) -> int:
        zeros = self.registers.count(0)
        if zeros == REGISTERS:
            return 0
        raw = _ALPHA * REGISTERS * REGISTERS / sum(2.0**-r for r in self.registers)
        if raw <= 2.5 * REGISTERS and zeros:
            # Linear counting is the better estimate while many registers are empty.
            raw = REGISTERS * math.log(REGISTERS / zeros)
        return round(raw)

    def encode(self) -> bytes:
        pairs = [(i, r) for i, r in enumerate(self.registers) if r]
        if len(pairs) * _PAIR.size < REGISTERS:
            return _SPARSE + b"".join(_PAIR.pack(i, r) for i, r in pairs)
        return _DENSE + bytes(self.registers)

    @classmethod
    def decode(cls, data: bytes) -> Sketch:
        kind, body = data[:1], data[1:]
        if kind == _DENSE and len(body) == REGISTERS:
            return cls(bytearray(body))
        if kind == _SPARSE and len(body) % _PAIR.size == 0:
            registers = bytearray(REGISTERS)
            for i, r in _PAIR.iter_unpack(body):
                registers[i] = r
            return cls(registers)
        raise ValueError("not a HyperLogLog sketch")


def estimate_distinct(values: Iterable[SqlValue]) -> int:
    sketch = Sketch()
    for value in values:
        if value is not None:
            sketch.add(value)
    return sketch.estimate()
