"""The coordinator's merges, as pure functions over the rows shards sent.

:func:`merge_rows` concatenates or k-way merges sorted shard streams, de-duplicates, and
applies OFFSET/LIMIT; :func:`combine_aggregates` folds partial aggregate states per group
(the table in :mod:`shardwise.sql.aggregates`). :class:`Budget` bounds what the
coordinator holds.
"""

from __future__ import annotations

import heapq
import itertools
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Final

import msgspec

from shardwise.errors import SqlExecutionError, SqlLimitError
from shardwise.sql.hll import Sketch
from shardwise.sql.moments import Moments, Statistic
from shardwise.sql.numeric import OVERFLOW, ExactSum
from shardwise.sql.ordering import compare, row_comparator
from shardwise.sql.plans import AggregateMerge, PartialAggregate, RowMerge
from shardwise.sql.values import SqlValue

Row = tuple[SqlValue, ...]

MAX_COORDINATOR_ROWS: Final = 1_000_000
"""Rows the coordinator holds for one statement, summed over every shard's answer."""

MAX_COORDINATOR_BYTES: Final = 256 << 20
"""Bytes of values the coordinator holds for one statement (estimated: text and blobs by
length, every other value 8 bytes)."""

# Untyped: msgspec cannot type a union of str and bytes; MessagePack keeps them apart.
_decode_values: Final = msgspec.msgpack.Decoder()


@dataclass(frozen=True, slots=True)
class MergeLimits:
    max_rows: int = MAX_COORDINATOR_ROWS
    max_bytes: int = MAX_COORDINATOR_BYTES


class Budget:
    """Counts rows against :class:`MergeLimits`, refusing past either bound; ``what``
    names them in the error (the shards' answers, or a statement's own answer)."""

    def __init__(self, limits: MergeLimits, what: str = "the shards' answers") -> None:
        self.limits = limits
        self.what = what
        self.rows = 0
        self.bytes = 0

    def take(self, rows: Sequence[Row]) -> None:
        self.rows += len(rows)
        if self.rows > self.limits.max_rows:
            raise SqlLimitError("max_rows", self.limits.max_rows, f"{self.what} hold too many rows")
        size = 0
        for row in rows:
            for value in row:
                size += len(value) if isinstance(value, str | bytes) else 8
        self.bytes += size
        if self.bytes > self.limits.max_bytes:
            raise SqlLimitError(
                "max_bytes", self.limits.max_bytes, f"{self.what} hold too many bytes"
            )


# --- rows --------------------------------------------------------------------------------


def merge_rows(parts: Sequence[Sequence[Row]], merge: RowMerge) -> list[Row]:
    stream: Iterator[Row]
    if merge.sort:
        stream = heapq.merge(*parts, key=row_comparator(merge.sort))
    else:
        stream = itertools.chain.from_iterable(parts)
    width = merge.width
    if merge.distinct:
        stream = _unique(stream, width)
    # islice takes at most sys.maxsize; no statement holds that many rows anyway.
    stop = None if merge.limit is None else min(merge.offset + merge.limit, sys.maxsize)
    window = itertools.islice(stream, min(merge.offset, sys.maxsize), stop)
    return [row[:width] if len(row) > width else tuple(row) for row in window]


def _unique(rows: Iterable[Row], width: int) -> Iterator[Row]:
    # Python's equality of values matches SQLite's DISTINCT: 1 == 1.0, 'a' != b'a'.
    seen: set[Row] = set()
    for row in rows:
        key = tuple(row[:width])
        if key not in seen:
            seen.add(key)
            yield row


# --- aggregates --------------------------------------------------------------------------


class _State:
    """One aggregate's merged state in one group."""

    __slots__ = ("count", "extreme", "kind", "moments", "sketch", "sum", "values")

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.count = 0
        self.sum = ExactSum()
        self.extreme: SqlValue = None
        self.values: dict[SqlValue, None] = {}
        self.sketch: Sketch | None = None
        self.moments = Moments()

    def add(self, partial: Sequence[SqlValue]) -> None:
        kind = self.kind
        first = partial[0]
        if kind in ("count", "count_star"):
            self.count += _int(first)
        elif kind == "sum":
            self.sum.merge(_decode_sum(first))
        elif kind == "total":
            self.sum.add(first)
        elif kind == "avg":
            self.sum.add(first)
            self.count += _int(partial[1])
        elif kind in ("min", "max"):
            if first is not None:
                if self.extreme is None:
                    self.extreme = first
                else:
                    order = compare(first, self.extreme)
                    if (order < 0) if kind == "min" else (order > 0):
                        self.extreme = first
        elif kind.endswith("_distinct") and kind != "approx_distinct":
            for value in _decode_set(first):
                self.values.setdefault(value)
        elif kind == "approx_distinct":
            sketch = _decode_sketch(first)
            if self.sketch is None:
                self.sketch = sketch
            else:
                self.sketch.merge(sketch)
        else:
            self.moments = self.moments.merge(_decode_moments(first))

    def result(self) -> SqlValue:
        kind = self.kind
        if kind in ("count", "count_star"):
            return self.count
        if kind == "sum":
            return _checked(self.sum.result())
        if kind == "total":
            return self.sum.total()
        if kind == "avg":
            return None if self.count == 0 else self.sum.total() / self.count
        if kind in ("min", "max"):
            return self.extreme
        if kind == "count_distinct":
            return len(self.values)
        if kind in ("sum_distinct", "total_distinct", "avg_distinct"):
            distinct = ExactSum()
            for value in self.values:
                distinct.add(value)
            if kind == "sum_distinct":
                return _checked(distinct.result())
            if kind == "total_distinct":
                return distinct.total()
            return distinct.total() / len(self.values) if self.values else None
        if kind == "approx_distinct":
            return 0 if self.sketch is None else self.sketch.estimate()
        statistic: Statistic = kind  # type: ignore[assignment]
        return self.moments.statistic(statistic)


def combine_aggregates(parts: Iterable[Sequence[Row]], merge: AggregateMerge) -> list[Row]:
    """Rows of (group keys..., final aggregate values...), one per group, in first-seen order.

    Groups are found with Python equality, which agrees with SQLite's GROUP BY on stored
    values: NULLs form one group, ``1`` and ``1.0`` one group, text compares by bytes.
    """
    width = merge.group_width
    groups: dict[Row, list[_State]] = {}
    for rows in parts:
        for row in rows:
            key = tuple(row[:width])
            states = groups.get(key)
            if states is None:
                states = groups[key] = [_State(a.kind) for a in merge.aggregates]
            for state, spec in zip(states, merge.aggregates, strict=True):
                state.add(_columns(row, spec))
    if merge.scalar and not groups:
        groups[()] = [_State(a.kind) for a in merge.aggregates]
    return [key + tuple(s.result() for s in states) for key, states in groups.items()]


def _checked(value: SqlValue) -> SqlValue:
    """SQLite finishes every group's SUM (before HAVING), so any overflow is an error."""
    if value == OVERFLOW:
        raise SqlExecutionError("integer overflow")
    return value


def _columns(row: Row, spec: PartialAggregate) -> tuple[SqlValue, ...]:
    return tuple(row[c] for c in spec.columns)


def _int(value: SqlValue) -> int:
    if not isinstance(value, int):
        raise SqlExecutionError(f"a shard sent {value!r} for a count")
    return value


# A shard that aggregated no rows sends NULL for a state (SQLite never calls the
# function's step, and Python's sqlite3 then returns NULL): the empty state.


def _decode_set(value: SqlValue) -> list[SqlValue]:
    if value is None:
        return []
    if not isinstance(value, bytes):
        raise SqlExecutionError("a shard sent a distinct set that is not a blob")
    try:
        values = _decode_values.decode(value)
    except msgspec.DecodeError as exc:
        raise SqlExecutionError(f"a shard sent a corrupt distinct set: {exc}") from None
    if not isinstance(values, list) or not all(
        v is None or isinstance(v, int | float | str | bytes) for v in values
    ):
        raise SqlExecutionError("a shard sent a distinct set of unexpected values")
    return values


def _decode_sum(value: SqlValue) -> ExactSum:
    if value is None:
        return ExactSum()
    try:
        if not isinstance(value, bytes):
            raise ValueError("not a blob")
        return ExactSum.decode(value)
    except ValueError as exc:
        raise SqlExecutionError(f"a shard sent a corrupt sum: {exc}") from None


def _decode_sketch(value: SqlValue) -> Sketch:
    if value is None:
        return Sketch()
    try:
        if not isinstance(value, bytes):
            raise ValueError("not a blob")
        return Sketch.decode(value)
    except ValueError as exc:
        raise SqlExecutionError(f"a shard sent a corrupt HyperLogLog sketch: {exc}") from None


def _decode_moments(value: SqlValue) -> Moments:
    if value is None:
        return Moments()
    if not isinstance(value, bytes):
        raise SqlExecutionError("a shard sent a variance state that is not a blob")
    try:
        return Moments.decode(value)
    except Exception as exc:  # struct.error: a shard sent garbage
        raise SqlExecutionError(f"a shard sent a corrupt variance state: {exc}") from None
