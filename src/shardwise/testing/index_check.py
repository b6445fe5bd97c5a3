"""The global index consistency check: every global index equal to the index rebuilt
from its table, each entry on the shard its value places it on, and a UNIQUE index
without duplicates.

An index's entries (``shardwise.sql.index_tables``) must be, as a multiset, exactly one
``(indexed columns, distribution value, included columns, rowid)`` per row of the table
whose first indexed column is not NULL: a missing entry hides a row from a lookup, a
dangling one names a row that is gone (or is stale, with old values). Values compare
with their storage classes (``1`` and ``1.0`` differ), as SQLite stores them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from shardwise.model.config import Configuration, IndexDef, Table
from shardwise.sql.catalog import ColumnSpec, physical_name
from shardwise.sql.distribution import Router
from shardwise.sql.identifiers import quote_identifier
from shardwise.sql.index_tables import (
    ROW_COLUMN,
    entry_columns,
    entry_key,
    global_indexes,
    index_table,
    index_table_name,
    row_name,
)

ReadEveryShard = Callable[[str, str], Awaitable[list[list[tuple[Any, ...]]]]]
"""``(keyspace, sql) -> each shard's rows``, in shard order."""


def _typed(row: Sequence[Any]) -> tuple[tuple[str, Any], ...]:
    return tuple((type(v).__name__, v) for v in row)


async def index_problems(config: Configuration, read: ReadEveryShard) -> list[str]:
    """What is wrong with the public global indexes of ``config``'s tables (empty: all
    consistent), read through ``read``. Run it while nothing writes."""
    problems: list[str] = []
    for table in sorted(config.tables.values(), key=lambda t: t.name):
        for index in global_indexes(table, public=True):
            problems.extend(await _check(config, table, index, read))
    return problems


async def _check(
    config: Configuration, table: Table, index: IndexDef, read: ReadEveryShard
) -> list[str]:
    names = entry_columns(table, index)
    row = row_name(table)
    assert row is not None
    columns = ", ".join(quote_identifier(c) for c in names)
    base = await read(
        table.keyspace,
        f"SELECT {columns}, {row} FROM {quote_identifier(physical_name(table.name))}",
    )
    hidden = index_table(table, index)
    stored = ", ".join(quote_identifier(c.name) for c in hidden.columns)
    entries = await read(
        table.keyspace,
        f"SELECT {stored} FROM {quote_identifier(physical_name(index_table_name(index)))}",
    )
    expected: Counter[tuple[tuple[str, Any], ...]] = Counter(
        _typed(r) for rows in base for r in rows if r[0] is not None
    )
    actual: Counter[tuple[tuple[str, Any], ...]] = Counter()
    problems: list[str] = []
    router = Router(config.keyspaces[table.keyspace])
    key_affinity = ColumnSpec.from_model(
        next(c for c in table.columns if c.name == index.columns[0])
    ).affinity
    what = f"index {index.name} of {table.name}"
    for shard, rows in enumerate(entries):
        for entry in rows:
            actual[_typed(entry)] += 1
            key = entry_key(entry[0], key_affinity, ordered=router.ordered)
            home = None if key is None else router.shard_of(key)
            if home != shard:
                problems.append(f"{what}: entry {entry!r} on shard {shard}, belongs on {home}")
    missing, dangling = expected - actual, actual - expected
    problems.extend(
        f"{what}: missing entry {tuple(v for _, v in e)!r} ({', '.join((*names, ROW_COLUMN))})"
        for e in sorted(missing, key=repr)
    )
    problems.extend(
        f"{what}: dangling entry {tuple(v for _, v in e)!r}" for e in sorted(dangling, key=repr)
    )
    if index.unique:
        width = len(index.columns)
        keys = Counter(
            e[:width] for e in actual.elements() if all(v is not None for _, v in e[:width])
        )
        problems.extend(f"{what}: duplicate key {k!r}" for k, n in keys.items() if n > 1)
    return problems
