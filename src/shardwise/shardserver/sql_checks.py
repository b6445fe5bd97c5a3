"""What a shard checks of SQL write statements at its door, before anything is
proposed (and of a transaction's parts again as they apply): batch and row bounds,
values SQLite can bind, and the one shape a statement run for each of several rows may
take. Pure: no SQLite here (``sqlshard.py`` runs what passes)."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any, Final

import msgspec

from shardwise.model.sql import SqlStatement
from shardwise.shardserver.protocol import MAX_SQL_BATCH_BYTES, MAX_SQL_STATEMENTS
from shardwise.sql.values import INT64_MAX, INT64_MIN

MAX_STATEMENT_ROWS: Final = 100_000
"""Rows one statement run for each of its rows may hold (``SqlStatement.rows``; its batch
is bounded by bytes as well, ``MAX_SQL_BATCH_BYTES``): an INSERT's own bound."""

_QUOTED: Final = re.compile(r'"(?:[^"]|"")*"')
_INSERT_EACH: Final = re.compile(
    r'INSERT INTO "(?:[^"]|"")*" \((?P<columns>"(?:[^"]|"")*"(?:, "(?:[^"]|"")*")*)\) '
    r"VALUES \((?P<marks>\?(?:, \?)*)\)",
)
"""``sql.writes.insert_each``'s statements (``fullmatch``: nothing before or after)."""

_encode = msgspec.msgpack.Encoder().encode


def check_batch(statements: Sequence[SqlStatement]) -> str:
    """Why a batch is refused at the door ("" if it is not): checked before it is
    proposed, so nothing over a limit or unbindable reaches the log."""
    if not statements:
        return "a SQL write batch has no statements"
    if len(statements) > MAX_SQL_STATEMENTS:
        return f"{len(statements)} statements in one batch, over {MAX_SQL_STATEMENTS}"
    size = len(_encode(statements))
    if size > MAX_SQL_BATCH_BYTES:
        return f"a SQL write batch of {size} bytes is over the limit of {MAX_SQL_BATCH_BYTES}"
    for statement in statements:
        problem = check_statement(statement)
        if problem:
            return problem
    return ""


def check_statement(statement: SqlStatement) -> str:
    """Why a write statement's values cannot be bound ("" if they can)."""
    if not statement.rows:
        return check_params(statement.params)
    if statement.params:
        return "a statement run for each of its rows takes no named parameters"
    if len(statement.rows) > MAX_STATEMENT_ROWS:
        return f"{len(statement.rows)} rows in one statement, over {MAX_STATEMENT_ROWS}"
    width = len(statement.rows[0])
    if not insert_each_shape(statement.sql, width):
        return (
            'a statement run for each of its rows is INSERT INTO "table" ("column", ...) '
            "VALUES (?, ...), one ? for each value of a row"
        )
    for number, row in enumerate(statement.rows, 1):
        if len(row) != width:
            return f"row {number} has {len(row)} values, the first {width}"
        for value in row:
            if not _bindable(value):
                return f"row {number}: {_unbindable(value)}"
    return ""


def check_params(params: Mapping[str, Any]) -> str:
    """Why parameter values cannot be bound ("" if they can): SQLite values only."""
    for name, value in params.items():
        if not _bindable(value):
            return f"parameter {name}: {_unbindable(value)}"
    return ""


def insert_each_shape(sql: str, width: int) -> bool:
    """Whether ``sql`` is exactly ``INSERT INTO "table" ("a", ...) VALUES (?, ...)`` with
    ``width`` columns and marks: the only statement a client runs for each of several rows
    (``sql.writes.insert_each``). Anything else could cost far more than its bytes
    (a long literal copied into every row) or bind its rows by name (which Python's
    sqlite3 does by position now and will refuse later: replicas would differ)."""
    found = _INSERT_EACH.fullmatch(sql)
    if found is None:
        return False
    columns = len(_QUOTED.findall(found["columns"]))
    return columns == width and found["marks"].count("?") == width


def _bindable(value: object) -> bool:
    if value is None or isinstance(value, str | float | bytes):
        return True
    return isinstance(value, int) and (isinstance(value, bool) or INT64_MIN <= value <= INT64_MAX)


def _unbindable(value: object) -> str:
    if isinstance(value, int):
        return f"{value} does not fit in a 64-bit integer"
    return f"a {type(value).__name__} is not a SQL value"
