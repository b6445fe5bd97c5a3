"""The rows a write changes in a table with global indexes, recorded as SQLite changes
them (``RowCapture``): temporary triggers that copy each changed row's rowid and indexed
columns, before and after, into a temporary table, read back after the write.

Triggers rather than a planned ``SELECT`` before and after: they see exactly the rows the
statement changed, with the values as stored (after the columns' affinities), whatever
the statement computes. Used inside a transaction's visit, which rolls everything back
(the shard server's ``sql_visit``), and by the in-process executor; imports no parser,
as the shard server loads this module.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Final

from shardwise.errors import SqlLimitError
from shardwise.model.sql import RowCapture
from shardwise.sql.identifiers import quote_identifier
from shardwise.sql.index_tables import MAX_CAPTURED_COLUMNS, ROW_NAMES

CAPTURE_PREFIX: Final = "_sw_cap"
"""Temporary tables and triggers of a capture: ``_sw_cap<i>`` in database ``temp``."""

MAX_CAPTURES: Final = 8
"""Tables one visit records (a statement writes one table)."""

MAX_CAPTURED_ROWS: Final = 100_000
"""Row images one visit records: an UPDATE of an indexed column records two per row."""

MAX_CAPTURED_BYTES: Final = 8 << 20
"""Bytes of the row images one visit records (they travel in the visit's reply, and
become entry statements of one transaction, itself bounded at 4 MiB)."""


def _size(value: object) -> int:
    return len(value) if isinstance(value, str | bytes) else 8


def capture_refusal(captures: Sequence[RowCapture]) -> str:
    """Why a request's captures are refused at the door ("" if they are not)."""
    if len(captures) > MAX_CAPTURES:
        return f"a visit records the changes of at most {MAX_CAPTURES} tables"
    for capture in captures:
        if not capture.table.startswith("sql_") or capture.row not in ROW_NAMES:
            return f"a capture names table {capture.table[:80]!r}, rowid {capture.row[:20]!r}"
        if not 0 < len(capture.columns) <= MAX_CAPTURED_COLUMNS:
            return f"a capture records 1 to {MAX_CAPTURED_COLUMNS} columns"
    return ""


def is_capture_table(name: str | None, database: str | None) -> bool:
    """Whether a write authorizer's table is a capture's (written by its triggers)."""
    return database == "temp" and name is not None and name.startswith(CAPTURE_PREFIX)


@contextmanager
def capturing(
    conn: sqlite3.Connection, captures: Sequence[RowCapture]
) -> Iterator[list[list[tuple[Any, ...]]]]:
    """Record the changes to each capture's table while the block runs, inside the
    caller's transaction (which must roll back: the triggers and tables are temporary
    schema, made and dropped in it). Yields a list that holds, after the block, each
    capture's rows ``(sign, rowid, *columns)`` in the order SQLite changed them."""
    found: list[list[tuple[Any, ...]]] = []
    for i, capture in enumerate(captures):
        name = f"{CAPTURE_PREFIX}{i}"
        table = f"main.{quote_identifier(capture.table)}"
        width = ", ".join(f"c{k}" for k in range(len(capture.columns)))
        conn.execute(f"CREATE TEMP TABLE {name} (s, r, {width})")

        def image(side: str, capture: RowCapture = capture) -> str:
            cells = ", ".join(f"{side}.{quote_identifier(c)}" for c in capture.columns)
            return f"{side}.{capture.row}, {cells}"

        insert = f"INSERT INTO {name} VALUES (1, "
        delete = f"INSERT INTO {name} VALUES (-1, "
        of = ", ".join(quote_identifier(c) for c in capture.columns)
        conn.execute(
            f"CREATE TEMP TRIGGER {name}_i AFTER INSERT ON {table} "
            f"BEGIN {insert}{image('NEW')}); END"
        )
        conn.execute(
            f"CREATE TEMP TRIGGER {name}_d AFTER DELETE ON {table} "
            f"BEGIN {delete}{image('OLD')}); END"
        )
        conn.execute(
            f"CREATE TEMP TRIGGER {name}_u AFTER UPDATE OF {of} ON {table} "
            f"BEGIN {delete}{image('OLD')}); {insert}{image('NEW')}); END"
        )
    try:
        yield found
        total = size = 0
        for i in range(len(captures)):
            rows = conn.execute(
                f"SELECT * FROM temp.{CAPTURE_PREFIX}{i} ORDER BY rowid LIMIT ?",
                (MAX_CAPTURED_ROWS + 1 - total,),
            ).fetchall()
            total += len(rows)
            size += sum(_size(v) for row in rows for v in row)
            if size > MAX_CAPTURED_BYTES:
                raise SqlLimitError(
                    "max_captured_bytes",
                    MAX_CAPTURED_BYTES,
                    "the rows this statement changes in a table with a global index are too "
                    "large to index in one transaction: split it",
                )
            if total > MAX_CAPTURED_ROWS:
                raise SqlLimitError(
                    "max_captured_rows",
                    MAX_CAPTURED_ROWS,
                    "the statement changes too many rows of a table with a global index at "
                    "once (each change is an index entry to write in the same transaction): "
                    "split it",
                )
            found.append([tuple(row) for row in rows])
    finally:  # (a caller that commits, the in-process executor, keeps no trigger)
        for i in range(len(captures)):
            for kind in "idu":
                conn.execute(f"DROP TRIGGER IF EXISTS temp.{CAPTURE_PREFIX}{i}_{kind}")
            conn.execute(f"DROP TABLE IF EXISTS temp.{CAPTURE_PREFIX}{i}")
