"""SQLite's numeric reading of a value, for aggregates merged in Python.

``sum('12abc')`` is 12.0 in SQLite: text (and a blob, read as text) counts as the longest
numeric prefix it starts with, or 0. But text that is wholly an integer counts as that
INTEGER (``sum('7')`` is 7, an integer), and text that is wholly a real number as that
REAL: SQLite's ``sqlite3_value_numeric_type``. Mergeable states (variance moments,
``SUM(DISTINCT)`` over a set) apply the same rules so they agree with SQLite on odd
inputs too.
"""

from __future__ import annotations

import re
from typing import Final

import msgspec

from shardwise.sql.values import INT64_MAX, INT64_MIN, SqlValue

_PREFIX: Final = re.compile(r"\s*[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
# SQLite's whitespace for numbers: space, tab, newline, vertical tab, form feed, return.
_SPACE: Final = " \t\n\v\f\r"
_INTEGER: Final = re.compile(r"[+-]?[0-9]+")
_REAL: Final = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


def as_real(value: SqlValue) -> float:
    """The REAL SQLite reads from a non-NULL value."""
    if isinstance(value, int | float):
        return float(value)
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
    match = _PREFIX.match(text)
    return float(match.group().strip()) if match else 0.0


def as_number(value: SqlValue) -> tuple[int | float, bool]:
    """The number SQLite's SUM adds for a non-NULL value, and whether it is an exact
    INTEGER: an integer as is; text that is wholly an integer within 64 bits as that
    integer; any other value as :func:`as_real` reads it."""
    if isinstance(value, int):
        return value, True
    if isinstance(value, str):
        text = value.strip(_SPACE)
        if _INTEGER.fullmatch(text):
            number = int(text)
            if INT64_MIN <= number <= INT64_MAX:
                return number, True
        if _REAL.fullmatch(text):
            return float(text), False
    return as_real(value), False


OVERFLOW: Final = "shardwise: integer overflow"
"""A SUM's value when it overflows 64 bits (a SUM is never TEXT otherwise); whoever
reads it raises SQLite's error."""


class _SumState(msgspec.Struct, array_like=True):
    integer: str  # decimal digits: the exact sum can pass 64 bits
    real: float
    exact: bool
    seen: bool


_encode_sum: Final = msgspec.msgpack.Encoder().encode
_decode_sum: Final = msgspec.msgpack.Decoder(_SumState).decode


class ExactSum:
    """SQLite's SUM, mergeable and never narrower than its answer: exact integers (of
    any size) while every input is one, else a REAL. A shard's part of a SUM is one of
    these, so a part that passes 64 bits is no error unless the whole does."""

    __slots__ = ("exact", "integer", "real", "seen")

    def __init__(self) -> None:
        self.integer = 0
        self.real = 0.0
        self.seen = False
        self.exact = True

    def add(self, value: SqlValue) -> None:
        if value is None:
            return
        self.seen = True
        # Text that is wholly an integer ('7') adds as that INTEGER, as in SQLite.
        number, integral = as_number(value)
        if integral and self.exact:
            self.integer += int(number)
            return
        if self.exact:
            self.exact = False
            self.real = float(self.integer)
        self.real += float(number)

    def merge(self, other: ExactSum) -> None:
        if not other.seen:
            return
        self.seen = True
        if self.exact and other.exact:
            self.integer += other.integer
            return
        mine = float(self.integer) if self.exact else self.real
        self.exact = False
        self.real = mine + (float(other.integer) if other.exact else other.real)

    def result(self) -> SqlValue:
        if not self.seen:
            return None
        if self.exact:
            return self.integer if INT64_MIN <= self.integer <= INT64_MAX else OVERFLOW
        return self.real

    def total(self) -> float:
        return float(self.integer) if self.exact else self.real

    def encode(self) -> bytes:
        return _encode_sum(_SumState(str(self.integer), self.real, self.exact, self.seen))

    @classmethod
    def decode(cls, blob: bytes) -> ExactSum:
        try:
            state = _decode_sum(blob)
            integer = int(state.integer)
        except (msgspec.DecodeError, ValueError) as exc:
            raise ValueError(str(exc)) from None
        result = cls()
        result.integer, result.real = integer, state.real
        result.exact, result.seen = state.exact, state.seen
        return result
