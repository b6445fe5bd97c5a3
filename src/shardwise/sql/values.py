"""SQL values as Python holds them: SQLite's storage classes and its integer range.

Apart from the parser so that the shard side (which runs fragments but parses nothing)
can name them without loading sqlglot.
"""

from __future__ import annotations

from typing import Final, TypeAlias

from shardwise.model.bounds import INT64_MAX, INT64_MIN

SqlValue: TypeAlias = int | float | str | bytes | None
"""A value SQLite stores: NULL, INTEGER, REAL, TEXT or BLOB."""

MAX_PARAMS: Final = 32_766
"""SQLite's own bound on parameters in one statement (SQLITE_MAX_VARIABLE_NUMBER)."""

__all__ = ["INT64_MAX", "INT64_MIN", "MAX_PARAMS", "SqlValue"]
"""``INT64_MIN`` and ``INT64_MAX`` are SQLite's INTEGER range (``shardwise.model.bounds``)."""
