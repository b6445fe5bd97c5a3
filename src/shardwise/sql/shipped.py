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

from shardwise.sql.identifiers import quote_identifier
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
MAX_SHIPPED_VALUES: Final = 500_000
"""Values (rows times columns) of all tables of one read: making them holds the shard's
event loop, and is not within the fragment's time limit."""
MAX_COLUMN_NAME: Final = 128

_NAME: Final = re.compile(rf"{SHIPPED_PREFIX}[0-9]{{1,3}}")
_SAVEPOINT: Final = "sw_shipped"


class Connection(Protocol):
    """What :func:`shipped_tables` needs of a ``sqlite3.Connection`` (the caller's)."""

    @property
    def in_transaction(self) -> bool: ...

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
    if sum(len(t.rows) * len(t.columns) for t in tables) > MAX_SHIPPED_VALUES:
        return f"more than {MAX_SHIPPED_VALUES:,} shipped values"
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
    conn.execute(f"SAVEPOINT {_SAVEPOINT}")  # (inside an open transaction: nested in it)
    try:
        for table in tables:
            columns = ", ".join(f"{quote_identifier(n)} {kind}" for n, kind in table.columns)
            conn.execute(f"CREATE TEMP TABLE {table.name} ({columns})")
            marks = ", ".join("?" for _ in table.columns)
            conn.executemany(f"INSERT INTO temp.{table.name} VALUES ({marks})", table.rows)
        yield
    finally:
        # A full disk or memory while making them rolls back the whole transaction
        # (SQLite's choice): then there is no savepoint left to roll back to, and the
        # error that did it is the one to see. (A caller with writes of its own in an
        # open transaction commits them first: see the shard store's read_sql.)
        if conn.in_transaction:
            conn.execute(f"ROLLBACK TO {_SAVEPOINT}")
            conn.execute(f"RELEASE {_SAVEPOINT}")


def shipped_size(tables: Sequence[ShippedTable]) -> tuple[int, int, int]:
    """Rows, values and bytes of ``tables`` as a request carries them (UTF-8 text, and a
    MessagePack header's worst case per value): what a sender checks against its bounds."""
    rows = sum(len(t.rows) for t in tables)
    values = sum(len(t.rows) * len(t.columns) for t in tables)
    size = 9 * values
    for table in tables:
        for row in table.rows:
            for value in row:
                if isinstance(value, str):
                    size += len(value.encode("utf-8", "surrogatepass"))
                elif isinstance(value, bytes):
                    size += len(value)
    return rows, values, size


def is_shipped(table: str | None, database: str | None) -> bool:
    """Whether an authorizer's table is a shipped one: named so, in ``temp`` (or in no
    database named: SQLite names none when a statement reads no column of the table,
    and no table of a shard's own file has such a name)."""
    return database in ("temp", None) and table is not None and _NAME.fullmatch(table) is not None
