"""SQLite's order of values, for merges the coordinator does itself.

SQLite sorts NULL first, then numbers (INTEGER and REAL compared by value, exactly), then
text (BINARY collation: UTF-8 bytes, which is Python's order of ``str``), then blobs
(bytes). Every coordinator comparison goes through here (the k-way merge of ORDER BY, the
final MIN and MAX), so a merged result is ordered as a single SQLite database would order it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from shardwise.sql.values import SqlValue


def storage_class(value: SqlValue) -> int:
    """NULL 0, numeric 1, TEXT 2, BLOB 3: the first criterion of every comparison."""
    if value is None:
        return 0
    if isinstance(value, int | float):
        return 1
    return 2 if isinstance(value, str) else 3


def compare(a: SqlValue, b: SqlValue) -> int:
    """-1, 0 or 1 as SQLite's ``ORDER BY`` orders ``a`` and ``b`` (NULLs equal)."""
    ca, cb = storage_class(a), storage_class(b)
    if ca != cb:
        return -1 if ca < cb else 1
    if ca == 0:
        return 0
    # Same class: Python's int/float comparison is exact, as SQLite's is.
    x: Any = a
    y: Any = b
    return -1 if x < y else (1 if x > y else 0)


@dataclass(frozen=True, slots=True)
class SortKey:
    """One ``ORDER BY`` term over a result column."""

    column: int
    descending: bool = False
    nulls_first: bool = True  # SQLite's default for ASC; DESC defaults to NULLs last


def row_comparator(keys: Sequence[SortKey]) -> Callable[[Sequence[SqlValue]], Any]:
    """A ``key=`` function ordering rows by ``keys`` (for ``sorted``/``heapq.merge``)."""

    def cmp(left: Sequence[SqlValue], right: Sequence[SqlValue]) -> int:
        for key in keys:
            a, b = left[key.column], right[key.column]
            if a is None or b is None:
                if a is None and b is None:
                    continue
                # NULL placement is explicit: it does not flip with DESC.
                return (-1 if a is None else 1) * (1 if key.nulls_first else -1)
            order = compare(a, b)
            if order:
                return -order if key.descending else order
        return 0

    return functools.cmp_to_key(cmp)
