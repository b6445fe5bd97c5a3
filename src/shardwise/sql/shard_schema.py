"""The SQLite schema of distributed tables inside each shard file, derived from the catalog.

A shard does not receive DDL statements: it derives its tables from the catalog in the
configuration it applies (:func:`schema_changes` from the previous catalog to the next), so
a shard created or moved later gets the same tables, and every replica runs the same DDL
at the same log index. Unique constraints are unique indexes, never ``PRIMARY KEY`` in the
table (an ``INTEGER PRIMARY KEY`` would alias SQLite's rowid and change its meaning).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import msgspec

from shardwise.model.config import Column, IndexDef, Table, column_type_problem
from shardwise.sql.catalog import ColumnSpec, physical_name
from shardwise.sql.identifiers import quote_identifier
from shardwise.sql.index_tables import (
    base_local_index,
    global_indexes,
    index_table,
    index_table_name,
    tombstone_table,
    tombstone_table_name,
)


def _column_sql(spec: ColumnSpec) -> str:
    declaration = spec.declaration().strip()
    return f"{quote_identifier(spec.name)} {declaration}".rstrip()


def _local_index_ddl(table: str, index: IndexDef) -> str:
    unique = "UNIQUE " if index.unique else ""
    name = quote_identifier(f"{physical_name(table)}__{index.name}")
    columns = ", ".join(quote_identifier(c) for c in index.columns)
    on = quote_identifier(physical_name(table))
    return f"CREATE {unique}INDEX IF NOT EXISTS {name} ON {on} ({columns})"


def index_ddl(table: Table, index: IndexDef) -> list[str]:
    """A local index: a SQLite index in each shard file. A global one: its hidden table
    (:mod:`shardwise.sql.index_tables`) and the base table's local index for it."""
    if not index.is_global:
        return [_local_index_ddl(table.name, index)]
    statements = [
        *create_table_ddl(index_table(table, index)),
        _local_index_ddl(table.name, base_local_index(index)),
    ]
    if index.state == "building":
        statements.extend(create_table_ddl(tombstone_table(table, index)))
    return statements


def drop_index_ddl(table: Table, index: IndexDef) -> list[str]:
    local = base_local_index(index) if index.is_global else index
    statements = [
        f"DROP INDEX IF EXISTS {quote_identifier(f'{physical_name(table.name)}__{local.name}')}"
    ]
    if index.is_global:
        statements.append(drop_table_ddl(index_table_name(index)))
        statements.append(drop_table_ddl(tombstone_table_name(index)))
    return statements


def add_column_ddl(table: str, spec: ColumnSpec) -> str:
    return f"ALTER TABLE {quote_identifier(physical_name(table))} ADD COLUMN {_column_sql(spec)}"


def _same_table(before: Table, after: Table) -> bool:
    """Whether ``after`` is ``before`` changed in place (else: dropped, made anew). A
    table created again under its name has another ``created_at``; 0 is unknown (a
    table recorded before the field existed, or a test's catalog), where only the
    distribution column tells."""
    known = before.created_at and after.created_at
    return (
        not known or before.created_at == after.created_at
    ) and before.distribution_column == after.distribution_column


def _problem(columns: Iterable[Column]) -> bool:
    return any(column_type_problem(c.type) for c in columns)


def create_table_ddl(table: Table) -> list[str]:
    columns = ", ".join(_column_sql(ColumnSpec.from_model(c)) for c in table.columns)
    statements = [
        f"CREATE TABLE IF NOT EXISTS {quote_identifier(physical_name(table.name))} ({columns})"
    ]
    for index in table.indexes:
        statements.extend(index_ddl(table, index))
    return statements


def drop_table_ddl(name: str) -> str:
    return f"DROP TABLE IF EXISTS {quote_identifier(physical_name(name))}"


def schema_changes(old: Mapping[str, Table], new: Mapping[str, Table], keyspace: str) -> list[str]:
    """The DDL that takes a shard of ``keyspace`` from catalog ``old`` to catalog ``new``
    (in a deterministic order: every replica runs the same statements)."""
    before = {n: t for n, t in old.items() if t.keyspace == keyspace}
    # A table or column whose declaration the controller would refuse (in a catalog an
    # older controller made) is not created, where its DDL might have made replicas
    # differ: a write to it fails alike everywhere. One that exists is never dropped
    # for it.
    after = {
        n: t
        for n, t in new.items()
        if t.keyspace == keyspace and (n in before or not _problem(t.columns))
    }
    statements: list[str] = []
    for name in sorted(before):
        if name not in after or not _same_table(before[name], after[name]):
            for hidden in global_indexes(before[name]):
                statements.append(drop_table_ddl(index_table_name(hidden)))
                statements.append(drop_table_ddl(tombstone_table_name(hidden)))
            statements.append(drop_table_ddl(name))
    for name in sorted(after):
        table = after[name]
        previous = before.get(name)
        if previous is None or not _same_table(previous, table):
            statements.extend(create_table_ddl(table))
            continue
        known = {c.name for c in previous.columns}
        for column in table.columns:
            if column.name not in known and not _problem((column,)):
                statements.append(add_column_ddl(name, ColumnSpec.from_model(column)))
        now = {i.name: i for i in table.indexes}
        kept: set[str] = set()
        for index in previous.indexes:
            later = now.get(index.name)
            if later is None or not _same_index(index, later):
                statements.extend(drop_index_ddl(previous, index))
                continue
            kept.add(index.name)
            if index.state == "building" and later.state == "public":
                statements.append(drop_table_ddl(tombstone_table_name(index)))  # (built)
        for index in table.indexes:
            if index.name not in kept:
                statements.extend(index_ddl(table, index))
    return statements


def _same_index(before: IndexDef, after: IndexDef) -> bool:
    """Whether ``after`` is ``before``, built since at most (else: dropped, made anew,
    perhaps under the same name: a shard that meets both changes at once, one installed
    from an older configuration, must not keep the old one's tables)."""
    return msgspec.structs.replace(before, state=after.state) == after and not (
        before.state == "public" and after.state == "building"
    )
