"""SQL values as Python holds them: SQLite's storage classes and its integer range.

Apart from the parser so that the shard side (which runs fragments but parses nothing)
can name them without loading sqlglot.
"""

from __future__ import annotations

from typing import Final, TypeAlias

SqlValue: TypeAlias = int | float | str | bytes | None
"""A value SQLite stores: NULL, INTEGER, REAL, TEXT or BLOB."""

INT64_MIN: Final = -(1 << 63)
INT64_MAX: Final = (1 << 63) - 1
"""SQLite's INTEGER range; a Python int outside it has no SQLite value."""
