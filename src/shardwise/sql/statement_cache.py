"""Parsed statements kept by their text, so a statement run again is not parsed again.

Parsing (sqlglot's tokenizer and parser) is the largest single part of planning a short
statement: about a third of a point query's planning. What is kept is the parsed tree
with its identifiers normalized, which depends on the text alone, not on the catalog,
the parameters or the clock; so nothing needs to invalidate it: after DDL or a shard
move the same tree is planned again against the new catalog (planning runs on every
execution, and binds the parameters into a copy of the tree, so a kept tree never
changes). A statement whose text is longer than :data:`MAX_CACHED_CHARS` (a multi-row
INSERT of literals, rarely run twice) is parsed each time.
"""

from __future__ import annotations

import functools
from typing import Final

from sqlglot.optimizer.normalize_identifiers import normalize_identifiers

from shardwise.sql.dialect import DIALECT
from shardwise.sql.parse import ParsedStatement, parse_statement

MAX_CACHED_STATEMENTS: Final = 1024
"""Distinct statement texts kept (least recently used first out)."""

MAX_CACHED_CHARS: Final = 4096
"""Longest text kept: with MAX_CACHED_STATEMENTS, bounds the cache to a few MiB."""


def parsed(sql: str) -> ParsedStatement:
    """``sql`` parsed and its identifiers normalized: from the cache when it was parsed
    before. Errors are raised each time (never kept)."""
    if len(sql) > MAX_CACHED_CHARS:
        return _parse(sql)
    return _cached(sql)


def _parse(sql: str) -> ParsedStatement:
    statement = parse_statement(sql)
    tree = normalize_identifiers(statement.statement, dialect=DIALECT)
    return ParsedStatement(
        tree, statement.explain, statement.text, statement.select_heads, statement.analyze
    )


_cached = functools.lru_cache(maxsize=MAX_CACHED_STATEMENTS)(_parse)


def cache_counts() -> tuple[int, int]:
    """Hits and misses so far (for tests and benchmarks)."""
    info = _cached.cache_info()
    return info.hits, info.misses
