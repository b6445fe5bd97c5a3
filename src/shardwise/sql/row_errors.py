"""Which row of a bulk INSERT a shard refused.

A shard runs a chunk's rows as one statement and says what failed ("UNIQUE constraint
failed: events.id"), not which row: SQLite does not know either. So the coordinator
finds it after the fact, off the cluster: it replays the rows one by one into an
in-memory SQLite holding the table's definition (its types, NOT NULL, CHECK, UNIQUE
and primary key, local indexes) and the table's rows already stored under the same
distribution values (a unique key that includes the distribution column can only
collide with those). The first row refused is the one to name. Only on the error path.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Sequence
from typing import Final

from shardwise.model.config import Table
from shardwise.sql.catalog import physical_name
from shardwise.sql.functions import register
from shardwise.sql.identifiers import quote_identifier
from shardwise.sql.shard_schema import create_table_ddl
from shardwise.sql.values import SqlValue

MAX_SHOWN_CHARS: Final = 120
"""Characters of an offending row an error message shows."""


def offending_row(
    table: Table,
    columns: Sequence[str],
    rows: Sequence[Sequence[SqlValue]],
    present: Sequence[Sequence[SqlValue]] = (),
) -> tuple[int, str] | None:
    """The position of the first of ``rows`` (values of ``columns``) that SQLite refuses
    in ``table`` already holding ``present`` (every column, in order), and why; None if
    every row goes in (the shard's refusal came from elsewhere: a global index)."""
    name = quote_identifier(physical_name(table.name))
    listed = ", ".join(quote_identifier(c) for c in columns)
    insert = f"INSERT INTO {name} ({listed}) VALUES ({', '.join('?' * len(columns))})"
    with contextlib.closing(sqlite3.connect(":memory:", isolation_level=None)) as conn:
        register(conn)
        for ddl in create_table_ddl(table):
            conn.execute(ddl)
        if present:
            marks = ", ".join("?" * len(present[0]))
            conn.executemany(f"INSERT OR IGNORE INTO {name} VALUES ({marks})", present)
        for position, row in enumerate(rows):
            try:
                conn.execute(insert, tuple(row))
            except (sqlite3.Error, ValueError, OverflowError) as exc:
                return position, str(exc) or type(exc).__name__
    return None


def shown(columns: Sequence[str], row: Sequence[SqlValue]) -> str:
    """``row`` as an error message shows it: ``(id=7, name='x')``, cut short."""
    text = ", ".join(f"{c}={v!r}" for c, v in zip(columns, row, strict=True))
    if len(text) > MAX_SHOWN_CHARS:
        text = text[: MAX_SHOWN_CHARS - 3] + "..."
    return f"({text})"
