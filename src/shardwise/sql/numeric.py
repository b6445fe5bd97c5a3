"""SQLite's numeric reading of a value, for aggregates merged in Python.

``sum('12abc')`` is 12.0 in SQLite: text (and a blob, read as text) counts as the longest
numeric prefix it starts with, or 0. Mergeable states (variance moments, ``SUM(DISTINCT)``
over a set) apply the same rule so they agree with SQLite on odd inputs too.
"""

from __future__ import annotations

import re
from typing import Final

from shardwise.sql.values import SqlValue

_PREFIX: Final = re.compile(r"\s*[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


def as_real(value: SqlValue) -> float:
    """The REAL SQLite reads from a non-NULL value."""
    if isinstance(value, int | float):
        return float(value)
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
    match = _PREFIX.match(text)
    return float(match.group().strip()) if match else 0.0
