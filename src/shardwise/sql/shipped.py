"""Rows shipped with a read fragment: a broadcast join's small side, made a typed table
of the connection the fragment runs on for as long as it runs.

Why a table and not a ``VALUES`` list: a ``VALUES`` column has no affinity, so
``text_column = value`` would compare differently than against the table the rows came
from. Each shipped column is declared with the affinity of the column it was read from
(one of five words), and storing a value read from a column of one affinity into a
column of the same affinity leaves it as it was, so every comparison in the fragment
means what it means on the table itself.

The tables live in the connection's ``temp`` schema inside a savepoint that is rolled
back when the fragment ends, so nothing of them outlives the read: not on the shard's
file, not in its log, not in the next read. Everything about them is checked first
(:func:`refusal`): names, affinities, widths, values and the named limits below. This
module loads no parser (the shard server uses it) and does no I/O of its own (the caller
passes the connection).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Final, Protocol, cast

from shardwise.sql.values import INT64_MAX, INT64_MIN, SqlValue

SHIPPED_PREFIX: Final = "_sw_t"
"""Shipped tables are named ``_sw_t0``, ``_sw_t1``, ...: a name no user table can have
(the catalog refuses the ``_sw`` prefix) and that the read authorizer lets a fragment
read from the ``temp`` schema only."""

AFFINITIES: Final = ("INTEGER", "REAL", "NUMERIC", "TEXT", "BLOB")
"""The declared types a shipped column may have: one per SQLite affinity."""

MAX_SHIPPED_TABLES: Final = 8
MAX_SHIPPED_ROWS: Final = 100_000
"""Rows of all tables of one read together (the request's frame bounds their bytes)."""
MAX_SHIPPED_COLUMNS: Final = 256
MAX_COLUMN_NAME: Final = 128

_NAME: Final = re.compile(rf"{SHIPPED_PREFIX}[0-9]{{1,3}}")
_SAVEPOINT: Final = "sw_shipped"


class Connection(Protocol):
    """What :func:`shipped_tables` needs of a ``sqlite3.Connection`` (the caller's)."""

    def execute(self, sql: str, /) -> Any: ...

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]], /) -> Any: ...


@dataclass(frozen=True, slots=True)
class ShippedTable:
    name: str
    columns: tuple[tuple[str, str], ...]
    """Each column's name and affinity (one of :data:`AFFINITIES`)."""
    rows: Sequence[Sequence[SqlValue]]


def refusal(tables: Sequence[ShippedTable]) -> str:
    """Why these tables cannot be shipped ("" if they can)."""
    if len(tables) > MAX_SHIPPED_TABLES:
        return f"more than {MAX_SHIPPED_TABLES} shipped tables"
    if len({t.name for t in tables}) != len(tables):
        return "two shipped tables of one name"
    if sum(len(t.rows) for t in tables) > MAX_SHIPPED_ROWS:
        return f"more than {MAX_SHIPPED_ROWS:,} shipped rows"
    for table in tables:
        if not _NAME.fullmatch(table.name):
            return f"shipped table name {table.name[:40]!r} is not {SHIPPED_PREFIX}<number>"
        if not 0 < len(table.columns) <= MAX_SHIPPED_COLUMNS:
            return f"shipped table {table.name} needs 1 to {MAX_SHIPPED_COLUMNS} columns"
        names = [name for name, _ in table.columns]
        if len({n.lower() for n in names}) != len(names):
            return f"shipped table {table.name} names a column twice"
        for name, kind in table.columns:
            if not 0 < len(name) <= MAX_COLUMN_NAME or "\x00" in name:
                return f"shipped table {table.name}: a column name is empty, long or has NUL"
            if kind not in AFFINITIES:
                return f"shipped table {table.name}: {kind[:20]!r} is not an affinity"
        width = len(table.columns)
        for row in table.rows:  # (a loop per value: a shard checks tens of thousands)
            if len(row) != width:
                return f"shipped table {table.name}: a row of {len(row)} values, not {width}"
            for value in row:
                stored: type = type(value)
                if stored in _PLAIN or (
                    stored is int and INT64_MIN <= cast(int, value) <= INT64_MAX
                ):
                    continue
                return f"shipped table {table.name}: {_value_refusal(value)}"
    return ""


_PLAIN: Final[frozenset[type]] = frozenset({str, float, bytes, bool, type(None)})


def _value_refusal(value: object) -> str:
    if value is None or isinstance(value, str | float | bytes):
        return ""
    if isinstance(value, int):  # (a bool is one: SQLite stores it as 0 or 1)
        return "" if INT64_MIN <= value <= INT64_MAX else f"{value} is not a 64-bit integer"
    return f"a {type(value).__name__} is not a SQL value"


@contextmanager
def shipped_tables(conn: Connection, tables: Sequence[ShippedTable]) -> Iterator[None]:
    """``tables`` (checked by :func:`refusal` first) as temporary tables of ``conn``
    while the block runs; gone after it, whatever happened in it."""
    if not tables:
        yield
        return
    conn.execute(f"SAVEPOINT {_SAVEPOINT}")
    try:
        for table in tables:
            columns = ", ".join(f"{_quoted(n)} {kind}" for n, kind in table.columns)
            conn.execute(f"CREATE TEMP TABLE {table.name} ({columns})")
            marks = ", ".join("?" for _ in table.columns)
            conn.executemany(f"INSERT INTO temp.{table.name} VALUES ({marks})", table.rows)
        yield
    finally:
        conn.execute(f"ROLLBACK TO {_SAVEPOINT}")
        conn.execute(f"RELEASE {_SAVEPOINT}")


def is_shipped(table: str | None, database: str | None) -> bool:
    """Whether a read authorizer's table is a shipped one (they are in ``temp`` only)."""
    return database == "temp" and table is not None and _NAME.fullmatch(table) is not None


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'
