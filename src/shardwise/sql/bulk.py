"""``executemany`` of a one-row INSERT as multi-row INSERTs: one planned statement (one
batch per shard) per many rows instead of one per row.

Only the plainest form is rewritten, where the rewrite cannot change the meaning:
``INSERT INTO t [(columns)] VALUES (...)`` with ``?`` placeholders, all inside the one
row, and nothing after it (no ``ON CONFLICT``, no ``RETURNING``). The row's text is
repeated, so its ``?`` marks number themselves in order. Anything else runs row by row.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

from sqlglot import exp
from sqlglot.errors import SqlglotError
from sqlglot.tokenizer_core import Token, TokenType

from shardwise.errors import ShardwiseError
from shardwise.sql.dialect import DIALECT
from shardwise.sql.params import MAX_PARAMS
from shardwise.sql.parse import MAX_SQL_CHARS, parse_statement

MAX_BULK_ROWS: Final = 1000
"""Rows per multi-row INSERT that ``executemany`` sends (fewer when the row has so many
parameters that MAX_PARAMS, or so much text that MAX_SQL_CHARS, would be passed)."""


def multi_row_inserts(operation: str, rows: Sequence[Any]) -> list[tuple[str, Any]] | None:
    """``operation`` over ``rows`` as a few multi-row INSERTs with their parameters, or
    None when ``operation`` is not a one-row ``?`` INSERT that every row fits."""
    span = _row_span(operation)
    if span is None:
        return None
    start, end, width = span
    if width == 0 or any(len(row) != width for row in rows):
        return None
    row_text = operation[start:end]
    head = operation[:start]
    per_statement = min(
        MAX_BULK_ROWS,
        MAX_PARAMS // width,
        max(1, (MAX_SQL_CHARS - len(head)) // (len(row_text) + 2)),
    )
    statements: list[tuple[str, Any]] = []
    for first in range(0, len(rows), per_statement):
        chunk = rows[first : first + per_statement]
        text = head + ", ".join([row_text] * len(chunk))
        statements.append((text, [value for row in chunk for value in row]))
    return statements


def _row_span(operation: str) -> tuple[int, int, int] | None:
    """Where the one row of VALUES starts and ends in ``operation``, and its ``?`` count."""
    try:
        parsed = parse_statement(operation)
        tokens = DIALECT().tokenize(operation)
    except (ShardwiseError, SqlglotError):
        return None
    insert = parsed.statement
    if parsed.explain or not isinstance(insert, exp.Insert):
        return None
    values = insert.args.get("expression")
    extras = {k for k, v in insert.args.items() if v and k not in ("this", "expression")}
    if extras or not isinstance(values, exp.Values) or len(values.expressions) != 1:
        return None
    opening = next((i + 1 for i, t in enumerate(tokens) if t.token_type is TokenType.VALUES), None)
    if opening is None or opening >= len(tokens):
        return None
    closing = _matching(tokens, opening)
    if closing is None:
        return None
    after = tokens[closing + 1 :]
    if after and not (len(after) == 1 and after[0].token_type is TokenType.SEMICOLON):
        return None
    marks = [t for t in tokens if t.token_type in (TokenType.PLACEHOLDER, TokenType.PARAMETER)]
    inside = [t for t in tokens[opening:closing] if t in marks]
    if len(inside) != len(marks) or any(t.text != "?" for t in marks):
        return None
    return tokens[opening].start, tokens[closing].end + 1, len(marks)


def _matching(tokens: list[Token], opening: int) -> int | None:
    if tokens[opening].token_type is not TokenType.L_PAREN:
        return None
    depth = 0
    for index in range(opening, len(tokens)):
        kind = tokens[index].token_type
        if kind is TokenType.L_PAREN:
            depth += 1
        elif kind is TokenType.R_PAREN:
            depth -= 1
            if depth == 0:
                return index
    return None
