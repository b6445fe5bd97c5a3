"""Parsed statements kept by their text, so a statement run again is not parsed again.

Parsing (sqlglot's tokenizer and parser) is the largest single part of planning a short
statement: about a third of a point query's planning, and two thirds of a multi-row
INSERT's. What is kept depends on the text alone, not on the catalog, the parameters or
the clock, so nothing needs to invalidate it: after DDL or a shard move the same
statement is planned again against the new catalog (planning binds the parameters into
a copy of the tree, so a kept tree never changes). Plans are kept apart, by text and
catalog: ``plan_cache``.

- A text of up to :data:`MAX_CACHED_CHARS` characters: its parsed tree, identifiers
  normalized, and its INSERT shape if it has one (``param_insert.insert_shape``).
- A longer text of up to :data:`MAX_SHAPE_CHARS`, if it is an INSERT of parameters
  (a bulk load's multi-row INSERT, run again and again with new values): its shape only,
  which is all the bulk path needs (a tree of thousands of rows would be megabytes).
- Anything else is parsed each time.
"""

from __future__ import annotations

import contextlib
import functools
from collections import OrderedDict
from dataclasses import dataclass
from typing import Final

from sqlglot.optimizer.normalize_identifiers import normalize_identifiers

from shardwise.sql.dialect import DIALECT
from shardwise.sql.param_insert import InsertShape, insert_shape
from shardwise.sql.parse import ParsedStatement, parse_statement

MAX_CACHED_STATEMENTS: Final = 1024
"""Distinct short statement texts kept (least recently used first out)."""

MAX_CACHED_CHARS: Final = 4096
"""Longest text whose tree is kept: with MAX_CACHED_STATEMENTS, bounds those to a few
MiB."""

MAX_CACHED_SHAPES: Final = 16
"""Distinct long INSERT texts kept by their shape."""

MAX_SHAPE_CHARS: Final = 256 << 10
"""Longest INSERT text kept by its shape (the text is the key: 16 of them, 4 MiB)."""


@dataclass(frozen=True, slots=True)
class Kept:
    parsed: ParsedStatement | None
    """None for a long INSERT kept by its shape alone (:func:`parse` gives the tree)."""
    insert: InsertShape | None
    """The statement's shape if it is a plain INSERT of parameters (not under EXPLAIN)."""


def kept(sql: str) -> Kept:
    """What is known of ``sql`` from its text: from the cache when it was parsed before.
    Errors are raised each time (never kept)."""
    if len(sql) <= MAX_CACHED_CHARS:
        return _cached(sql)
    if len(sql) > MAX_SHAPE_CHARS:
        return _parse(sql)
    shape = _shapes.get(sql)
    if shape is not None:
        with contextlib.suppress(KeyError):  # (dropped meanwhile by another thread)
            _shapes.move_to_end(sql)
        return Kept(None, shape)
    found = _parse(sql)
    if found.insert is not None:
        _shapes[sql] = found.insert
        while len(_shapes) > MAX_CACHED_SHAPES:
            with contextlib.suppress(KeyError):  # (emptied meanwhile by another thread)
                _shapes.popitem(last=False)
    return found


def parse(sql: str) -> ParsedStatement:
    """``sql`` parsed, its identifiers normalized: the tree :func:`kept` may leave out."""
    found = kept(sql).parsed or _parse(sql).parsed
    assert found is not None  # (a parse always gives a tree)
    return found


def _parse(sql: str) -> Kept:
    statement = parse_statement(sql)
    tree = normalize_identifiers(statement.statement, dialect=DIALECT)
    parsed = ParsedStatement(
        tree, statement.explain, statement.text, statement.select_heads, statement.analyze
    )
    return Kept(parsed, None if statement.explain else insert_shape(tree))


_cached = functools.lru_cache(maxsize=MAX_CACHED_STATEMENTS)(_parse)
_shapes: OrderedDict[str, InsertShape] = OrderedDict()


def cache_counts() -> tuple[int, int]:
    """Hits and misses so far of the short texts' cache (for tests and benchmarks)."""
    info = _cached.cache_info()
    return info.hits, info.misses
