"""The catalog as the planner sees it: the controller's tables and keyspaces, read-only.

The controller replicates the catalog (:class:`~shardwise.model.config.Table`); the
planner only reads it. Two conventions live here, shared by the planner and the shards:

* **Physical names.** A table ``t`` is stored in every shard file of its keyspace as
  ``sql_t`` (:func:`physical_name`), so user tables never collide with a shard's own
  tables (``kv``, ``sessions``, ``meta``) nor with ones added later.
* **Column declarations.** ``Column.type`` holds the SQLite declaration after the name:
  the type, then `` NOT NULL``, then `` DEFAULT <literal>`` (:class:`ColumnSpec`), always
  in that order because only this module writes it.
"""

from __future__ import annotations

import contextlib
import re
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final, Literal, TypeAlias

from shardwise.errors import SqlCatalogError
from shardwise.model.config import Column, Configuration, Keyspace, Table, TableStats

PHYSICAL_PREFIX: Final = "sql_"
RESERVED_PREFIX: Final = "_sw_"
"""Names the planner gives its own columns (``_sw_g0``, ``_sw_k1``, ...); users may not."""

MAX_COLUMNS: Final = 1000
"""Columns per table; SQLite's own default cap is 2000."""

Affinity: TypeAlias = Literal["INTEGER", "TEXT", "BLOB", "REAL", "NUMERIC"]

_DECL: Final = re.compile(r"^(?P<type>.*?)(?P<nn> NOT NULL)?(?: DEFAULT (?P<default>.*))?$", re.S)


def affinity(type_name: str) -> Affinity:
    """SQLite's type affinity of a declared type (the rules of its section 3.1, in order)."""
    upper = type_name.upper()
    if "INT" in upper:
        return "INTEGER"
    if any(word in upper for word in ("CHAR", "CLOB", "TEXT")):
        return "TEXT"
    if "BLOB" in upper or not upper.strip():
        return "BLOB"
    if any(word in upper for word in ("REAL", "FLOA", "DOUB")):
        return "REAL"
    return "NUMERIC"


@dataclass(frozen=True, slots=True)
class ColumnSpec:
    """A column with its declaration taken apart."""

    name: str
    type_name: str
    not_null: bool = False
    default_sql: str | None = None

    @property
    def affinity(self) -> Affinity:
        return affinity(self.type_name)

    def declaration(self) -> str:
        parts = [self.type_name]
        if self.not_null:
            parts.append("NOT NULL")
        if self.default_sql is not None:
            parts.append(f"DEFAULT {self.default_sql}")
        return " ".join(parts)

    def to_model(self) -> Column:
        return Column(self.name, self.declaration())

    @classmethod
    def from_model(cls, column: Column) -> ColumnSpec:
        match = _DECL.match(column.type)
        assert match is not None  # the pattern matches any text
        return cls(column.name, match["type"], bool(match["nn"]), match["default"])


def physical_name(table: str) -> str:
    """The table's name inside a shard's SQLite file."""
    return PHYSICAL_PREFIX + table


def logical_names(message: str, tables: Iterable[str]) -> str:
    """``message`` (SQLite's, from a shard) with the physical name of each of ``tables``
    made the user's again: ``UNIQUE constraint failed: sql_users.id`` becomes ``...:
    users.id``. Only a whole name, not after a dot, is a table (``users.sql_x`` is a
    column); names compare without regard to case, as SQLite compares them."""
    names = sorted(set(tables), key=len, reverse=True)  # the longest of two prefixes first
    if not names:
        return message
    alternatives = "|".join(re.escape(name) for name in names)
    physical = re.compile(
        rf"(?<![\w.]){re.escape(PHYSICAL_PREFIX)}({alternatives})(?!\w)", re.IGNORECASE
    )
    return physical.sub(lambda match: match[1], message)


def check_name(name: str, what: str) -> None:
    """Refuse names that would clash with the planner's own or confuse SQLite (which
    compares identifiers without regard to case)."""
    if not name or len(name) > 128:
        raise SqlCatalogError(f"a {what} name has 1 to 128 characters")
    if name.lower().startswith(RESERVED_PREFIX) or "\x00" in name:
        raise SqlCatalogError(
            f"{what} name {name!r}: names starting {RESERVED_PREFIX} are reserved"
        )


@dataclass(frozen=True, slots=True)
class Catalog:
    """Tables and keyspaces, as of one configuration of the controller."""

    tables: Mapping[str, Table] = field(default_factory=dict)
    keyspaces: Mapping[str, Keyspace] = field(default_factory=dict)
    stats: Mapping[str, TableStats] = field(default_factory=dict)
    """Row counts as of each table's latest ``ANALYZE`` (:mod:`shardwise.sql.stats`)."""
    index_builds: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    """Global indexes being built -> the base shards done (``Configuration.index_builds``)."""

    @classmethod
    def from_configuration(cls, config: Configuration) -> Catalog:
        return cls(
            dict(config.tables),
            dict(config.keyspaces),
            dict(config.stats),
            dict(config.index_builds),
        )

    def expected_rows(self, table: Table, shards_read: int, shard_count: int) -> int | None:
        """The rows of ``table`` a stage reading ``shards_read`` of its keyspace's
        ``shard_count`` shards expects to read, from ``ANALYZE``'s count (rows spread
        evenly; each shard visited reads its whole copy of a reference table); None:
        never analyzed."""
        stats = self.stats.get(table.name)
        if stats is None:
            return None
        if table.is_reference:
            return stats.rows * shards_read
        return -(-stats.rows * shards_read // max(1, shard_count))  # (exact: no floats)

    def table(self, name: str) -> Table:
        table = self.tables.get(name)
        if table is None:
            raise SqlCatalogError(f"there is no table {name!r}")
        return table

    def keyspace(self, table: Table) -> Keyspace:
        keyspace = self.keyspaces.get(table.keyspace)
        if keyspace is None:
            raise SqlCatalogError(f"table {table.name!r} names a missing keyspace")
        return keyspace

    def columns(self, table: Table) -> list[ColumnSpec]:
        return [ColumnSpec.from_model(c) for c in table.columns]

    def column(self, table: Table, name: str) -> ColumnSpec:
        for column in table.columns:
            if column.name == name:
                return ColumnSpec.from_model(column)
        raise SqlCatalogError(f"table {table.name!r} has no column {name!r}")


MAX_KEPT_CATALOGS: Final = 8
"""Configurations whose catalog is kept (several clients of one process, each with its
own cluster or view of it)."""

_catalogs: OrderedDict[int, tuple[Configuration, Catalog]] = OrderedDict()


def catalog_of(config: Configuration) -> Catalog:
    """The catalog of ``config``: the same object each time for the same configuration,
    which is what keeps the planner's plans (``sql/plan_cache.py``) until it changes."""
    kept = _catalogs.get(id(config))
    if kept is not None and kept[0] is config:
        return kept[1]
    catalog = Catalog.from_configuration(config)
    _catalogs[id(config)] = (config, catalog)  # (holding it: its id stays its own)
    while len(_catalogs) > MAX_KEPT_CATALOGS:
        with contextlib.suppress(KeyError):  # (emptied meanwhile by another thread)
            _catalogs.popitem(last=False)
    return catalog
