"""Distribution values to shards, exactly as the KV layer places keys.

**The canonical encoding.** A row's distribution value becomes a placement key
(``str``, ``int`` or ``bytes``) that :func:`shardwise.placement.key_bytes` turns into bytes:
an integer as its decimal digits, text as UTF-8, a blob as is. The value is first
converted the way SQLite stores it in the column (its type affinity), because that stored
value is what a later ``WHERE id = ...`` compares against:

* an INTEGER column takes ints, integral floats (``42.0`` is stored as ``42``) and text
  that is a plain decimal integer (``'42'`` is stored as ``42``);
* a TEXT column takes text and ints (``42`` is stored as ``'42'``);
* a BLOB (untyped) column takes ints, text and blobs as they are.

Since ``42`` and ``'42'`` encode to the same bytes, equal values land on the same shard
even across tables whose distribution columns differ in type: tables of one keyspace are
co-located. Floats never distribute (their text form is SQLite's, not Python's); REAL and
NUMERIC columns cannot be distribution columns. NULL has no shard: a row must name one.

Range keyspaces order keys as bytes, so their distribution columns must be TEXT or BLOB
(decimal digits do not sort as numbers).
"""

from __future__ import annotations

import re
from typing import Final

from shardwise.errors import DistributionValueError, SqlCatalogError
from shardwise.model.config import Keyspace
from shardwise.model.schemes import shard_map
from shardwise.placement import Key, KeyRangePartition
from shardwise.sql.catalog import Affinity
from shardwise.sql.values import INT64_MAX, INT64_MIN

DISTRIBUTABLE: Final[tuple[Affinity, ...]] = ("INTEGER", "TEXT", "BLOB")
_DECIMAL: Final = re.compile(r"^-?[0-9]+$")


def check_distribution_column(column_type_affinity: Affinity, keyspace: Keyspace) -> None:
    if column_type_affinity not in DISTRIBUTABLE:
        raise SqlCatalogError(
            f"a distribution column must be INTEGER, TEXT or BLOB, not {column_type_affinity}"
        )
    if keyspace.scheme.kind == "range" and column_type_affinity == "INTEGER":
        raise SqlCatalogError(
            f"keyspace {keyspace.name!r} orders keys as bytes: its tables need a TEXT "
            "distribution column"
        )


def stored_key(value: object, column_affinity: Affinity) -> Key | None:
    """The placement key of ``value`` as SQLite would store it in the column, or None if
    it has none (NULL, a float, a type the column keeps as something else)."""
    if value is None or isinstance(value, bool):
        return None
    if column_affinity == "INTEGER":
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer() and INT64_MIN <= value <= INT64_MAX:
            return int(value)
        if isinstance(value, str) and _DECIMAL.match(value):
            number = int(value)
            return number if INT64_MIN <= number <= INT64_MAX else None
        return None
    if column_affinity == "TEXT":
        if isinstance(value, str):
            return value
        if isinstance(value, int):
            return str(value)
        return None
    if isinstance(value, int | str | bytes):  # BLOB affinity: stored as given
        return value
    return None


def insert_key(value: object, column: str, column_affinity: Affinity) -> Key:
    """:func:`stored_key`, strict: a row without a shard is refused before anything runs."""
    key = stored_key(value, column_affinity)
    if key is None:
        shown = "NULL" if value is None else f"{value!r}"
        raise DistributionValueError(
            f"distribution column {column!r} ({column_affinity}) cannot take {shown}"
        )
    return key


class Router:
    """Shards of one keyspace for keys and key ranges."""

    def __init__(self, keyspace: Keyspace) -> None:
        self.keyspace = keyspace
        self._map = shard_map(keyspace)
        self.shard_count = keyspace.scheme.shards
        self._ranges: KeyRangePartition | None = None
        if keyspace.scheme.kind == "range":
            self._ranges = KeyRangePartition(list(keyspace.scheme.split_points))

    def all_shards(self) -> frozenset[int]:
        return frozenset(range(self.shard_count))

    def shard_of(self, key: Key) -> int:
        if self._ranges is not None and isinstance(key, int):
            key = str(key)  # a range keyspace holds TEXT/BLOB columns: 42 is stored '42'
        return self._map.index(key)

    @property
    def ordered(self) -> bool:
        """Whether shards hold contiguous key ranges (so a range predicate prunes)."""
        return self._ranges is not None

    def shards_between(self, low: Key | None, high: Key | None) -> frozenset[int]:
        """Shards that may hold keys in ``[low, high]`` (None: unbounded)."""
        first = 0 if low is None else self.shard_of(low)
        last = self.shard_count - 1 if high is None else self.shard_of(high)
        return frozenset(range(first, last + 1))
