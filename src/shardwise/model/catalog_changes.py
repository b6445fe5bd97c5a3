"""The SQL catalog's changes (the DDL commands) applied to a catalog: the controller's
rules, pure, so the in-process executor (``shardwise.sql.local``) applies them alike.

Each function takes the tables (and what else it reads) and returns the new ones, or
raises :class:`~shardwise.errors.CatalogError` with what is wrong; nothing is changed in
place.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

import msgspec

from shardwise.errors import CatalogError, ControllerError, UnknownKeyspaceError
from shardwise.model.config import (
    MAX_NAME_LENGTH,
    MAX_TABLES,
    AddColumn,
    Column,
    CreateIndex,
    CreateTable,
    DropIndex,
    DropTable,
    IndexDef,
    Keyspace,
    SetIndexState,
    Table,
    column_type_problem,
)

TableOp = CreateTable | DropTable | AddColumn | CreateIndex | DropIndex


RESERVED_PREFIX: Final = "_sw_"
"""Names of the catalog's own (the hidden tables of global indexes): no table or index
of a user's may take one."""


def check_name(name: str, what: str) -> None:
    if not name or len(name) > MAX_NAME_LENGTH or "/" in name:
        raise ControllerError(f"a {what} name is 1-{MAX_NAME_LENGTH} characters without '/'")
    if what in ("table", "index") and name.lower().startswith(RESERVED_PREFIX):
        raise CatalogError(f"{what} name {name!r}: names starting {RESERVED_PREFIX} are reserved")


def changed_tables(
    tables: Mapping[str, Table], keyspaces: Mapping[str, Keyspace], op: TableOp, num: int
) -> dict[str, Table]:
    """``tables`` after ``op``, made by configuration ``num`` (a new table's
    ``created_at``)."""
    new = dict(tables)
    if isinstance(op, CreateTable):
        table = op.table
        check_name(table.name, "table")
        if table.name.lower() in {name.lower() for name in new}:  # (SQLite ignores case)
            raise CatalogError(f"table {table.name!r} exists")
        if table.keyspace not in keyspaces:
            raise UnknownKeyspaceError(f"there is no keyspace {table.keyspace!r}")
        names = [c.name for c in table.columns]
        if len(set(names)) != len(names) or table.distribution_column not in [*names, ""]:
            raise CatalogError("columns must be unique and include the distribution column")
        check_columns(table.columns)
        if len(new) >= MAX_TABLES:
            raise CatalogError(f"at most {MAX_TABLES} tables")
        for index in table.indexes:
            _check_index(new, table, index)
        indexes = tuple(msgspec.structs.replace(i, created_at=num) for i in table.indexes)
        new[table.name] = msgspec.structs.replace(table, created_at=num, indexes=indexes)
    elif isinstance(op, DropTable):
        if new.pop(op.name, None) is None:
            raise CatalogError(f"there is no table {op.name!r}")
    elif isinstance(op, AddColumn):
        table = table_named(new, op.table)
        if any(c.name == op.column.name for c in table.columns):
            raise CatalogError(f"table {op.table!r} already has a column {op.column.name!r}")
        check_columns((op.column,))
        widened = msgspec.structs.replace(table, columns=(*table.columns, op.column))
        if any(i.is_global for i in table.indexes) and not _row_named(widened):
            raise CatalogError(f"a column {op.column.name!r} would hide the rowid of {op.table!r}")
        new[op.table] = widened
    elif isinstance(op, CreateIndex):
        table = table_named(new, op.table)
        if any(i.name == op.index.name for i in table.indexes):
            raise CatalogError(f"index {op.index.name!r} exists")
        _check_index(new, table, op.index)
        index = msgspec.structs.replace(op.index, created_at=num)
        new[op.table] = msgspec.structs.replace(table, indexes=(*table.indexes, index))
    else:
        table = table_named(new, op.table)
        kept = tuple(i for i in table.indexes if i.name != op.name)
        if len(kept) == len(table.indexes):
            raise CatalogError(f"table {op.table!r} has no index {op.name!r}")
        new[op.table] = msgspec.structs.replace(table, indexes=kept)
    return new


def _check_index(tables: Mapping[str, Table], table: Table, index: IndexDef) -> None:
    """Columns the table has, each once. A global index's name names its hidden table
    in every shard file of the keyspace: unique in the catalog (SQLite ignores case); a
    reference table needs none (every shard holds every row)."""
    check_name(index.name, "index")
    columns = {c.name for c in table.columns}
    named = (*index.columns, *index.include)
    if not index.columns or not set(named) <= columns or len(set(named)) != len(named):
        raise CatalogError(f"index {index.name!r} names no column, a missing one or one twice")
    if not index.is_global:
        if index.include or index.state != "public":
            raise CatalogError(f"local index {index.name!r}: INCLUDE and builds are global's")
        return
    if table.is_reference:
        raise CatalogError(f"reference table {table.name!r} needs no global index")
    if not _row_named(table):
        raise CatalogError(f"table {table.name!r} hides its rowid: no global index")
    others = {i.name.lower() for t in tables.values() if t.name != table.name for i in t.indexes}
    if index.name.lower() in others:
        raise CatalogError(f"there is an index named {index.name!r} already")


def _row_named(table: Table) -> bool:
    """Whether a name of the rowid (rowid, _rowid_, oid) is free of columns: a global
    index names each row by it."""
    taken = {c.name.lower() for c in table.columns}
    return bool({"rowid", "_rowid_", "oid"} - taken)


def building(
    tables: Mapping[str, Table], builds: Mapping[str, tuple[int, ...]]
) -> dict[str, tuple[int, ...]]:
    """The entries of ``builds`` whose index is still being built in ``tables``."""
    being_built = {i.name for t in tables.values() for i in t.indexes if i.state == "building"}
    return {name: done for name, done in builds.items() if name in being_built}


def index_state(
    tables: Mapping[str, Table],
    keyspaces: Mapping[str, Keyspace],
    builds: Mapping[str, tuple[int, ...]],
    op: SetIndexState,
) -> tuple[dict[str, Table], dict[str, tuple[int, ...]]]:
    """A global index's build recorded: base shards done, or the index made public."""
    new = dict(tables)
    table = table_named(new, op.table)
    if table.created_at != op.created_at:
        raise CatalogError(f"table {op.table!r} was dropped and created again during the build")
    index = next((i for i in table.indexes if i.name == op.name), None)
    if index is None or index.state != "building" or index.created_at != op.index_created_at:
        raise CatalogError(
            f"table {op.table!r} has no index {op.name!r} being built (it was dropped, or "
            "dropped and made again)"
        )
    shards = keyspaces[table.keyspace].scheme.shards
    if len(op.done) > shards or any(not 0 <= s < shards for s in op.done):
        raise CatalogError(f"an index build names shards outside 0..{shards - 1}")
    progress = dict(builds)
    if op.state == "building":
        progress[op.name] = tuple(sorted(set(progress.get(op.name, ())) | set(op.done)))
        return new, progress
    progress.pop(op.name, None)
    public = msgspec.structs.replace(index, state="public")
    indexes = tuple(public if i.name == op.name else i for i in table.indexes)
    new[op.table] = msgspec.structs.replace(table, indexes=indexes)
    return new, progress


def check_columns(columns: tuple[Column, ...]) -> None:
    """Refuse a declaration a shard could not paste into its DDL safely (a computed
    default, a constraint): ``column_type_problem``."""
    for column in columns:
        problem = column_type_problem(column.type)
        if problem:
            raise CatalogError(problem)


def table_named(tables: Mapping[str, Table], name: str) -> Table:
    if name not in tables:
        raise CatalogError(f"there is no table {name!r}")
    return tables[name]
