"""CREATE TABLE, DROP TABLE, ALTER TABLE ... ADD COLUMN and CREATE INDEX as catalog changes.

The syntax for a distributed table is PostgreSQL's storage parameters::

    CREATE TABLE orders (
        customer_id INTEGER NOT NULL,
        order_id INTEGER,
        total REAL DEFAULT 0,
        PRIMARY KEY (customer_id, order_id)
    ) WITH (distribution = 'customer_id', keyspace = 'default')

``distribution`` names the distribution column; ``keyspace`` defaults to ``default``. A
PRIMARY KEY or UNIQUE constraint becomes a unique index: local (on every shard) if it
includes the distribution column, else global (:mod:`shardwise.sql.index_tables`), so
it holds across the whole table either way.

``CREATE [UNIQUE] INDEX name ON t (cols) [INCLUDE (cols)] [WITH (scope = 'global')]``:
local by default (each shard indexes its rows), global with the option (or when UNIQUE
without the distribution column); a global index is built online
(``shardwise.sql.index_build``). ``DROP INDEX [IF EXISTS] name``.

A **reference table** (``WITH (reference = true)``, PostgreSQL's boolean storage
parameter, instead of ``distribution``) has no distribution column: every shard of its
keyspace holds a full copy, written by every write at once (one atomic write to all the
shards), so a join with it runs inside each shard, and any constraint holds table-wide.

Defaults are literals: a default such as ``CURRENT_TIMESTAMP`` would differ between
replicas. The result is a controller command; every shard of the keyspace then creates the
table from the catalog (:mod:`shardwise.sql.shard_schema`), including shards made later.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

import msgspec
from sqlglot import exp

from shardwise.errors import (
    NondeterministicSqlError,
    SqlCatalogError,
    UnsupportedSqlError,
)
from shardwise.model.config import (
    DEFAULT_KEYSPACE,
    AddColumn,
    CreateIndex,
    CreateTable,
    DropIndex,
    DropTable,
    IndexDef,
    IndexScope,
    IndexState,
    Table,
)
from shardwise.model.txn import MAX_TXN_PARTICIPANTS
from shardwise.sql.catalog import MAX_COLUMNS, Catalog, ColumnSpec, check_name
from shardwise.sql.dialect import to_sqlite
from shardwise.sql.distribution import DISTRIBUTABLE, check_distribution_column
from shardwise.sql.index_tables import (
    MAX_CAPTURED_COLUMNS,
    entry_columns,
    global_indexes,
    row_name,
)
from shardwise.sql.params import NOT_CONSTANT, constant
from shardwise.sql.plans import CatalogPlan
from shardwise.sql.shard_schema import (
    add_column_ddl,
    create_table_ddl,
    drop_index_ddl,
    drop_table_ddl,
    index_ddl,
)

MAX_INDEXES_PER_TABLE: Final = 64
_PROPERTIES: Final = frozenset({"distribution", "keyspace", "reference"})
_TRUE: Final = frozenset({"true", "on", "yes", "1"})
_FALSE: Final = frozenset({"false", "off", "no", "0"})


def plan_ddl(statement: exp.Expr, catalog: Catalog) -> CatalogPlan:
    if isinstance(statement, exp.Create):
        kind = str(statement.args.get("kind") or "").upper()
        if kind == "TABLE":
            return _create_table(statement, catalog)
        if kind == "INDEX":
            return _create_index(statement, catalog)
        raise UnsupportedSqlError(f"CREATE {kind}")
    if isinstance(statement, exp.Drop):
        return _drop(statement, catalog)
    if isinstance(statement, exp.Alter):
        return _alter(statement, catalog)
    raise UnsupportedSqlError(type(statement).__name__.upper())


# --- CREATE TABLE ----------------------------------------------------------------------


def _create_table(statement: exp.Create, catalog: Catalog) -> CatalogPlan:
    for key in ("replace", "expression", "unique", "clone", "refresh", "concurrently"):
        if statement.args.get(key):
            raise UnsupportedSqlError(
                "CREATE TABLE ... AS" if key == "expression" else f"CREATE TABLE ({key})"
            )
    schema = statement.this
    if not isinstance(schema, exp.Schema) or not isinstance(schema.this, exp.Table):
        raise UnsupportedSqlError("this form of CREATE TABLE")
    name = schema.this.name
    check_name(name, "table")
    properties = _properties(statement)
    keyspace_name = properties.get("keyspace", DEFAULT_KEYSPACE)
    reference = _is_reference(properties)
    if reference == ("distribution" in properties):
        raise SqlCatalogError(
            f"table {name!r} needs a distribution column, or to be a reference table "
            "(a copy in every shard), and not both: CREATE TABLE ... "
            "WITH (distribution = 'column') or WITH (reference = true)"
        )
    columns: list[ColumnSpec] = []
    unique: list[tuple[str, tuple[str, ...]]] = []
    for item in schema.expressions:
        if isinstance(item, exp.Identifier):  # a column with no type
            columns.append(ColumnSpec(item.name, ""))
        elif isinstance(item, exp.ColumnDef):
            spec, constraint = _column(item)
            columns.append(spec)
            if constraint:
                unique.append((constraint, (spec.name,)))
        elif isinstance(item, exp.PrimaryKey):
            unique.append(("pkey", tuple(e.name for e in item.expressions)))
        elif isinstance(item, exp.UniqueColumnConstraint) and isinstance(item.this, exp.Schema):
            unique.append(("key", tuple(e.name for e in item.this.expressions)))
        else:
            raise UnsupportedSqlError(f"the table constraint {item.sql()}")
    names = [c.name for c in columns]
    if not columns or len(columns) > MAX_COLUMNS:
        raise SqlCatalogError(f"a table has 1 to {MAX_COLUMNS} columns")
    for column in names:
        check_name(column, "column")
    if len({n.lower() for n in names}) != len(names):
        raise SqlCatalogError("column names must differ (SQLite ignores case in names)")
    distribution = properties.get("distribution", "")
    if not reference and distribution not in names:
        raise SqlCatalogError(f"the distribution column {distribution!r} is not a column")
    keyspace = catalog.keyspaces.get(keyspace_name)
    if keyspace is None:
        raise SqlCatalogError(f"there is no keyspace {keyspace_name!r}")
    if not reference:
        check_distribution_column(columns[names.index(distribution)].affinity, keyspace)
    elif keyspace.scheme.shards > MAX_TXN_PARTICIPANTS:
        raise SqlCatalogError(
            f"a reference table's keyspace has at most {MAX_TXN_PARTICIPANTS} shards (a write "
            f"to it is one transaction over every shard); {keyspace_name!r} has "
            f"{keyspace.scheme.shards}"
        )
    table = Table(
        name,
        keyspace_name,
        distribution,
        tuple(c.to_model() for c in columns),
        tuple(_unique_indexes(name, unique, names, distribution)),
    )
    with_table = Catalog({**catalog.tables, name: table}, catalog.keyspaces)
    for index in global_indexes(table):
        _check_global(table, index, with_table)
    exists = name in catalog.tables
    if exists and not statement.args.get("exists"):
        raise SqlCatalogError(f"table {name!r} already exists")
    _check_case_apart(name, catalog.tables, "table")
    return CatalogPlan(CreateTable(table), skip=exists, shard_ddl=tuple(create_table_ddl(table)))


def _check_case_apart(name: str, names: Iterable[str], what: str) -> None:
    """Refuse ``name`` where another differs from it only in case: SQLite, which holds
    them on the shards, takes them for one (the second would share the first's rows)."""
    twin = next((n for n in names if n != name and n.lower() == name.lower()), None)
    if twin is not None:
        raise SqlCatalogError(
            f"{what} {name!r} differs from {twin!r} only in case, which SQLite ignores in "
            "names: choose another name"
        )


def _properties(statement: exp.Create) -> dict[str, str]:
    found: dict[str, str] = {}
    node = statement.args.get("properties")
    for prop in node.expressions if isinstance(node, exp.Properties) else []:
        if not isinstance(prop, exp.Property):
            raise UnsupportedSqlError(f"the table option {prop.sql()}")
        key = prop.name.lower()
        value = prop.args.get("value")
        if key not in _PROPERTIES or not isinstance(value, exp.Expr):
            raise UnsupportedSqlError(
                f"the table option {key!r}", "use distribution, reference, keyspace"
            )
        found[key] = str(value.this).lower() if isinstance(value, exp.Boolean) else value.name
    return found


def _is_reference(properties: dict[str, str]) -> bool:
    value = properties.get("reference", "false").lower()
    if value not in _TRUE | _FALSE:
        raise SqlCatalogError(f"reference = {value!r}: write true or false")
    return value in _TRUE


def _column(node: exp.ColumnDef) -> tuple[ColumnSpec, str]:
    kind = node.args.get("kind")
    type_name = to_sqlite(kind) if isinstance(kind, exp.DataType) else ""
    not_null = False
    default: str | None = None
    unique = ""
    for constraint in node.constraints:
        inner = constraint.args.get("kind")
        if isinstance(inner, exp.NotNullColumnConstraint) and not inner.args.get("allow_null"):
            not_null = True
        elif isinstance(inner, exp.DefaultColumnConstraint):
            default = _default(inner.this)
        elif isinstance(inner, exp.PrimaryKeyColumnConstraint):
            unique, not_null = "pkey", True
        elif isinstance(inner, exp.UniqueColumnConstraint):
            unique = unique or "key"
        else:
            raise UnsupportedSqlError(f"the column constraint {constraint.sql()}")
    return ColumnSpec(node.name, type_name, not_null, default), unique


def _default(node: exp.Expr) -> str:
    if constant(node, {}) is NOT_CONSTANT:
        raise NondeterministicSqlError(
            f"the default {node.sql()}: a default must be a literal (a computed one could "
            "differ between replicas)"
        )
    return to_sqlite(node)


def _unique_indexes(
    table: str,
    unique: list[tuple[str, tuple[str, ...]]],
    names: list[str],
    distribution: str,
) -> list[IndexDef]:
    """The table's PRIMARY KEY and UNIQUE constraints as unique indexes: local where they
    include the distribution column (every duplicate is then in one shard), global
    otherwise (checked across the whole table)."""
    indexes: list[IndexDef] = []
    if sum(1 for kind, _ in unique if kind == "pkey") > 1:
        raise SqlCatalogError(f"table {table!r} has more than one primary key")
    for kind, columns in unique:
        for column in columns:
            if column not in names:
                raise SqlCatalogError(f"a constraint names a missing column {column!r}")
        scope: IndexScope = "global" if distribution and distribution not in columns else "local"
        name = f"{table}_pkey" if kind == "pkey" else f"{table}_{'_'.join(columns)}_key"
        if all(i.name != name for i in indexes):
            indexes.append(IndexDef(name, columns, unique=True, scope=scope))
    return indexes


def _check_global(table: Table, index: IndexDef, catalog: Catalog) -> None:
    """What a global index needs: a table with a distribution column, a first column
    whose values place as a distribution column's do, a rowid name, a unique name."""
    if table.is_reference:
        raise SqlCatalogError(
            f"{table.name!r} is a reference table: every shard holds all its rows, so a "
            "local index serves (and a UNIQUE one holds table-wide)"
        )
    captured = {c for i in (*global_indexes(table), index) for c in entry_columns(table, i)}
    if len(captured) > MAX_CAPTURED_COLUMNS:
        raise SqlCatalogError(
            f"the global indexes of {table.name!r} would hold {len(captured)} columns, over "
            f"{MAX_CAPTURED_COLUMNS}: each write records them all for its rows"
        )
    first = catalog.column(table, index.columns[0])
    if first.affinity not in DISTRIBUTABLE:
        raise SqlCatalogError(
            f"a global index is distributed by its first column, which must be INTEGER, "
            f"TEXT or BLOB: {first.name!r} is {first.affinity}"
        )
    check_distribution_column(first.affinity, catalog.keyspace(table))
    if row_name(table) is None:
        raise SqlCatalogError(
            f"table {table.name!r} has columns named rowid, _rowid_ and oid: a global index "
            "names each row by its rowid"
        )
    others = [i.name for t in catalog.tables.values() for i in t.indexes if t is not table]
    _check_case_apart(index.name, [*others, *(i.name for i in table.indexes)], "index")
    if index.name.lower() in {n.lower() for n in others}:
        raise SqlCatalogError(
            f"there is an index {index.name!r} on another table: a global index's name is "
            "unique in the catalog"
        )


# --- CREATE INDEX, DROP TABLE, ALTER TABLE ---------------------------------------------


def _create_index(statement: exp.Create, catalog: Catalog) -> CatalogPlan:
    index = statement.this
    if not isinstance(index, exp.Index) or not isinstance(index.args.get("table"), exp.Table):
        raise UnsupportedSqlError("this form of CREATE INDEX")
    if statement.args.get("concurrently"):
        raise UnsupportedSqlError(
            "CREATE INDEX CONCURRENTLY",
            "a global index is always built online; a local one is built by each shard at once",
        )
    table = catalog.table(index.args["table"].name)
    name = index.name
    if not name:
        raise UnsupportedSqlError("CREATE INDEX without a name")
    check_name(name, "index")
    params = index.args.get("params")
    if not isinstance(params, exp.IndexParameters):
        params = exp.IndexParameters()
    for key, value in params.args.items():
        if value and key not in ("columns", "include", "with_storage"):
            raise UnsupportedSqlError(f"CREATE INDEX ({key})")
    columns: list[str] = []
    for item in params.args.get("columns") or []:
        node = item.this if isinstance(item, exp.Ordered) else item
        if isinstance(item, exp.Ordered) and item.args.get("desc"):
            raise UnsupportedSqlError("DESC in an index")
        if not isinstance(node, exp.Column):
            raise UnsupportedSqlError("an index on an expression")
        columns.append(node.name)
    include = [node.name for node in params.args.get("include") or []]
    known = {c.name for c in table.columns}
    for column in (*columns, *include):
        if column not in known:
            raise SqlCatalogError(f"table {table.name!r} has no column {column!r}")
    if not columns:
        raise SqlCatalogError("an index names at least one column")
    if len(set(columns) | set(include)) != len(columns) + len(include):
        raise SqlCatalogError("an index names a column twice")
    unique = bool(statement.args.get("unique"))
    scope = _index_scope(params, table, columns, unique)
    if include and scope != "global":
        raise SqlCatalogError("INCLUDE is for global indexes: WITH (scope = 'global')")
    state: IndexState = "building" if scope == "global" else "public"
    definition = IndexDef(name, tuple(columns), unique, scope, tuple(include), state)
    existing = next((i for i in table.indexes if i.name == name), None)
    exists = existing is not None
    # The same CREATE INDEX again resumes the build of its index (IF NOT EXISTS too).
    resumes = (
        existing is not None
        and existing.state == "building"
        and (msgspec.structs.replace(existing, created_at=0) == definition)
    )
    if exists and not (statement.args.get("exists") or resumes):
        raise SqlCatalogError(f"index {name!r} already exists on {table.name!r}")
    _check_case_apart(name, (i.name for i in table.indexes), "index")
    elsewhere = [i.name for t in catalog.tables.values() if t is not table for i in t.indexes]
    if not exists and name.lower() in {n.lower() for n in elsewhere}:
        raise SqlCatalogError(
            f"there is an index {name!r} on another table: choose another name (DROP INDEX "
            "names an index by its name alone)"
        )
    if len(table.indexes) >= MAX_INDEXES_PER_TABLE:
        raise SqlCatalogError(f"at most {MAX_INDEXES_PER_TABLE} indexes per table")
    if scope == "global" and not exists:
        _check_global(table, definition, catalog)
    return CatalogPlan(
        CreateIndex(table.name, definition),
        skip=exists,
        shard_ddl=tuple(index_ddl(table, definition)),
    )


def _index_scope(
    params: exp.IndexParameters, table: Table, columns: list[str], unique: bool
) -> IndexScope:
    """``WITH (scope = 'global' | 'local')``; without it, local, except a UNIQUE index
    without the distribution column, which only a global index can check."""
    scope = ""
    for prop in params.args.get("with_storage") or []:
        value = prop.args.get("value") if isinstance(prop, exp.Property) else None
        if not isinstance(prop, exp.Property) or prop.name.lower() != "scope" or value is None:
            raise UnsupportedSqlError(f"the index option {prop.sql()}", "use scope")
        scope = value.name.lower()
        if scope not in ("global", "local"):
            raise SqlCatalogError(f"scope = {value.name!r}: write 'global' or 'local'")
    local_unique = table.is_reference or table.distribution_column in columns
    if not scope:
        scope = "global" if unique and not local_unique else "local"
    if scope == "local" and unique and not local_unique:
        raise SqlCatalogError(
            f"a local UNIQUE index on {table.name!r} must include the distribution column "
            f"{table.distribution_column!r} (each shard checks only its own rows): make it "
            "global, WITH (scope = 'global'), to check the whole table"
        )
    return "global" if scope == "global" else "local"


def _drop(statement: exp.Drop, catalog: Catalog) -> CatalogPlan:
    kind = str(statement.args.get("kind") or "").upper()
    if kind == "INDEX":
        return _drop_index(statement, catalog)
    if kind != "TABLE":
        raise UnsupportedSqlError(f"DROP {kind}")
    tables = statement.args.get("tables") or []
    if len(tables) != 1:
        raise UnsupportedSqlError("DROP TABLE of several tables", "drop them one by one")
    if statement.args.get("cascade"):
        raise UnsupportedSqlError("DROP TABLE ... CASCADE")
    name = tables[0].name
    exists = name in catalog.tables
    if not exists and not statement.args.get("exists"):
        raise SqlCatalogError(f"there is no table {name!r}")
    return CatalogPlan(DropTable(name), skip=not exists, shard_ddl=(drop_table_ddl(name),))


def _drop_index(statement: exp.Drop, catalog: Catalog) -> CatalogPlan:
    """``DROP INDEX [IF EXISTS] name``: the index of that name on whichever table has
    it (a name two tables' local indexes share must be dropped with the table)."""
    tables = statement.args.get("tables") or []
    if len(tables) != 1:
        raise UnsupportedSqlError("DROP INDEX of several indexes", "drop them one by one")
    if statement.args.get("cascade") or statement.args.get("concurrently"):
        raise UnsupportedSqlError("DROP INDEX ... CASCADE or CONCURRENTLY")
    name = tables[0].name
    found = [(t, i) for t in catalog.tables.values() for i in t.indexes if i.name == name]
    if not found:
        if statement.args.get("exists"):
            return CatalogPlan(DropIndex("", name), skip=True)
        raise SqlCatalogError(f"there is no index {name!r}")
    if len(found) > 1:
        raise SqlCatalogError(
            f"index name {name!r} is on {len(found)} tables "
            f"({', '.join(sorted(t.name for t, _ in found))}): it cannot say which"
        )
    table, index = found[0]
    if index.name in {i.name for i in _constraint_indexes(table)}:
        raise SqlCatalogError(
            f"index {name!r} is {table.name!r}'s PRIMARY KEY or UNIQUE constraint"
        )
    return CatalogPlan(DropIndex(table.name, name), shard_ddl=tuple(drop_index_ddl(table, index)))


def _constraint_indexes(table: Table) -> list[IndexDef]:
    """The indexes ``CREATE TABLE`` made for the table's constraints (by their names)."""
    return [
        i
        for i in table.indexes
        if i.unique
        and (i.name == f"{table.name}_pkey" or i.name == f"{table.name}_{'_'.join(i.columns)}_key")
    ]


def _alter(statement: exp.Alter, catalog: Catalog) -> CatalogPlan:
    if str(statement.args.get("kind") or "").upper() != "TABLE":
        raise UnsupportedSqlError("this ALTER")
    table = catalog.table(statement.this.name)
    actions = statement.args.get("actions") or []
    if len(actions) != 1 or not isinstance(actions[0], exp.ColumnDef):
        raise UnsupportedSqlError(
            "this ALTER TABLE action", "only ALTER TABLE ... ADD COLUMN, one column at a time"
        )
    spec, unique = _column(actions[0])
    if unique:
        raise UnsupportedSqlError("a UNIQUE or PRIMARY KEY column added by ALTER TABLE")
    check_name(spec.name, "column")
    exists = any(c.name.lower() == spec.name.lower() for c in table.columns)
    widened = msgspec.structs.replace(table, columns=(*table.columns, spec.to_model()))
    if global_indexes(table) and not exists and row_name(widened) is None:
        raise SqlCatalogError(
            f"table {table.name!r} has global indexes, which name each row by its rowid: "
            f"a column {spec.name!r} would hide the last name of the rowid"
        )
    if exists and not actions[0].args.get("exists"):
        raise SqlCatalogError(f"table {table.name!r} already has a column {spec.name!r}")
    if spec.not_null and spec.default_sql is None:
        raise SqlCatalogError("a NOT NULL column added to a table needs a DEFAULT")
    if len(table.columns) >= MAX_COLUMNS:
        raise SqlCatalogError(f"a table has at most {MAX_COLUMNS} columns")
    return CatalogPlan(
        AddColumn(table.name, spec.to_model()),
        skip=exists,
        shard_ddl=(add_column_ddl(table.name, spec),),
    )
