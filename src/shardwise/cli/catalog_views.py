"""What the shell's ``\\d`` commands print: the catalog's tables and one table's
columns and indexes, read from the controller's configuration."""

from __future__ import annotations

from rich import box
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from shardwise.errors import SqlCatalogError
from shardwise.model.config import Configuration
from shardwise.model.config import Table as TableDef
from shardwise.sql.catalog import ColumnSpec


def tables_view(config: Configuration | None) -> RenderableType:
    """``\\d``: every table with its keyspace, distribution column, indexes and rows
    (as of its latest ``ANALYZE``)."""
    tables = sorted((config.tables if config is not None else {}).values(), key=lambda t: t.name)
    if not tables:
        return Text("No tables.")
    stats = config.stats if config is not None else {}
    view = Table(title="Tables", title_justify="left", box=box.SIMPLE_HEAD, show_edge=False)
    for column in ("table", "keyspace", "distributed by", "columns", "indexes", "rows"):
        view.add_column(column, justify="right" if column in ("columns", "rows") else "left")
    for t in tables:
        counted = stats.get(t.name)
        view.add_row(
            Text(t.name),
            Text(t.keyspace),
            Text(t.distribution_column or _REFERENCE),
            str(len(t.columns)),
            Text(", ".join(i.name + (" (global)" if i.is_global else "") for i in t.indexes)),
            f"{counted.rows:,}" if counted is not None else "",
        )
    return view


_REFERENCE = "reference table (a copy on every shard)"


def find_table(config: Configuration | None, name: str) -> TableDef:
    """The table called ``name``, compared as SQLite compares identifiers (ignoring
    case) when no table has exactly that name."""
    tables = config.tables if config is not None else {}
    found = tables.get(name) or next(
        (t for n, t in tables.items() if n.lower() == name.lower()), None
    )
    if found is None:
        raise SqlCatalogError(f"there is no table {name!r} (\\d lists them)")
    return found


def table_view(table: TableDef, config: Configuration | None = None) -> RenderableType:
    """``\\d NAME``: the table's columns (type, NOT NULL, default), its distribution
    column and its indexes (a global one being built: the base shards done so far)."""
    head = Text.assemble(
        ("Table ", "bold"),
        (table.name, "bold"),
        f" · keyspace {table.keyspace} · "
        + (_REFERENCE if table.is_reference else f"distributed by {table.distribution_column}"),
    )
    columns = Table(box=box.SIMPLE_HEAD, show_edge=False)
    for name in ("column", "type", "not null", "default", ""):
        columns.add_column(name)
    for model in table.columns:
        spec = ColumnSpec.from_model(model)
        columns.add_row(
            Text(spec.name),
            Text(spec.type_name),
            "not null" if spec.not_null else "",
            Text(spec.default_sql) if spec.default_sql is not None else "",
            "distribution" if spec.name == table.distribution_column else "",
        )
    parts: list[RenderableType] = [head, columns]
    if table.indexes:
        indexes = Table(title="Indexes", title_justify="left", box=box.SIMPLE_HEAD, show_edge=False)
        for name in ("index", "columns", "unique", "scope", "include", "state"):
            indexes.add_column(name)
        builds = config.index_builds if config is not None else {}
        keyspace = config.keyspaces.get(table.keyspace) if config is not None else None
        shards = keyspace.scheme.shards if keyspace is not None else 0
        for index in table.indexes:
            state: str = index.state
            if index.state == "building" and shards:
                state = f"building: {len(builds.get(index.name, ()))} of {shards} shards done"
            indexes.add_row(
                Text(index.name),
                Text(", ".join(index.columns)),
                "unique" if index.unique else "",
                index.scope,
                Text(", ".join(index.include)),
                state,
            )
        parts.append(indexes)
    return Group(*parts)
