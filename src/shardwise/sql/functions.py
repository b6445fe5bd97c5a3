"""The SQL functions shardwise adds to SQLite, on shards and at the coordinator.

Shards need them to compute partial states and to run pushed-down queries that use
shardwise's aggregates; the coordinator's SQLite needs them for statements it evaluates
itself. Whoever opens a shard's database for SQL calls :func:`register` on the
connection. All are deterministic functions of their input rows.

| function | kind | result |
|---|---|---|
| ``var_samp``, ``var_pop``, ``stddev_samp``, ``stddev_pop`` | aggregate | REAL or NULL |
| ``approx_count_distinct`` | aggregate | INTEGER (HyperLogLog estimate) |
| ``shardwise_moments(x)`` | aggregate | BLOB: count, mean, M2 |
| ``shardwise_hll(x)`` | aggregate | BLOB: a HyperLogLog sketch |
| ``shardwise_distinct(x)`` | aggregate | BLOB: the set of distinct non-NULL values (MessagePack) |
| ``shardwise_sum(x)`` | aggregate | BLOB: SQLite's SUM state, exact past 64 bits (MessagePack) |
| ``shardwise_partition(x, n)`` | scalar | INTEGER in ``[0, n)``: the step of a repartition join |
"""

from __future__ import annotations

import sqlite3
import struct
from typing import Any, Final, cast

import msgspec
import xxhash

from shardwise.sql.aggregates import (
    APPROX_DISTINCT,
    DISTINCT_SET,
    EXACT_SUM,
    HLL,
    MOMENTS,
    PARTITION_FUNCTION,
)
from shardwise.sql.hll import Sketch
from shardwise.sql.moments import Moments, Statistic
from shardwise.sql.numeric import ExactSum, as_real
from shardwise.sql.values import INT64_MAX, INT64_MIN, SqlValue

_encode: Final = msgspec.msgpack.Encoder().encode


class _MomentsState:
    def __init__(self) -> None:
        self.moments = Moments()

    def step(self, value: SqlValue) -> None:
        if value is not None:
            self.moments = self.moments.add(as_real(value))


class _MomentsBlob(_MomentsState):
    def finalize(self) -> bytes:
        return self.moments.encode()


def _statistic(which: Statistic) -> type:
    class _Final(_MomentsState):
        def finalize(self) -> float | None:
            return self.moments.statistic(which)

    _Final.__name__ = f"_{which}"
    return _Final


class _HllState:
    def __init__(self) -> None:
        self.sketch = Sketch()

    def step(self, value: SqlValue) -> None:
        if value is not None:
            self.sketch.add(value)


class _HllBlob(_HllState):
    def finalize(self) -> bytes:
        return self.sketch.encode()


class _HllEstimate(_HllState):
    def finalize(self) -> int:
        return self.sketch.estimate()


class _SumBlob:
    def __init__(self) -> None:
        self.sum = ExactSum()

    def step(self, value: SqlValue) -> None:
        self.sum.add(value)

    def finalize(self) -> bytes:
        return self.sum.encode()


class _DistinctSet:
    def __init__(self) -> None:
        self.values: dict[SqlValue, None] = {}  # a set that keeps first-seen order

    def step(self, value: SqlValue) -> None:
        if value is not None:
            self.values.setdefault(value)

    def finalize(self) -> bytes:
        return _encode(list(self.values))


def partition(value: SqlValue, parts: object) -> int | None:
    """The part in ``[0, parts)`` of a repartition join's key ``value`` (None for a
    count that is not a positive integer). Values SQLite holds equal get the same part:
    an integral REAL within 64 bits hashes as its INTEGER (a column of INTEGER affinity
    never stores one, but the function does not rely on that); any other value by its
    storage class and bytes. NULL, one group to a GROUP BY, is part 0."""
    if not isinstance(parts, int) or isinstance(parts, bool) or parts < 1:
        return None
    if parts == 1 or value is None:
        return 0
    return int(xxhash.xxh3_64_intdigest(_hashed(value)) % parts)


def _hashed(value: int | float | str | bytes) -> bytes:
    if isinstance(value, float) and value.is_integer() and INT64_MIN <= value <= INT64_MAX:
        value = int(value)
    if isinstance(value, int):
        return b"i" + value.to_bytes(8, "little", signed=True)
    if isinstance(value, float):
        return b"f" + struct.pack("<d", value)
    if isinstance(value, str):
        data = value.encode("utf-8", "surrogatepass")
        return b"s" + len(data).to_bytes(8, "little") + data
    data = bytes(value)
    return b"b" + len(data).to_bytes(8, "little") + data


def register(conn: sqlite3.Connection) -> None:
    """Add shardwise's functions to ``conn``."""
    conn.create_function(PARTITION_FUNCTION, 2, partition, deterministic=True)
    statistics: tuple[Statistic, ...] = ("var_samp", "var_pop", "stddev_samp", "stddev_pop")
    # typeshed's aggregate protocol wants int results; SQLite takes any value it stores.
    aggregates: list[tuple[str, Any]] = [(which, _statistic(which)) for which in statistics]
    aggregates += [
        (APPROX_DISTINCT, _HllEstimate),
        (MOMENTS, _MomentsBlob),
        (HLL, _HllBlob),
        (DISTINCT_SET, _DistinctSet),
        (EXACT_SUM, _SumBlob),
    ]
    for name, implementation in aggregates:
        conn.create_aggregate(name, 1, cast(Any, implementation))
