"""A SQLAlchemy dialect over :mod:`shardwise.dbapi`, so SQLAlchemy Core and pandas
(``read_sql``, ``read_sql_table``, ``to_sql``) work with a cluster::

    import pandas, sqlalchemy

    engine = sqlalchemy.create_engine("shardwise:///.shardwise")   # a cluster directory
    frame.to_sql("readings", engine, if_exists="append")
    pandas.read_sql("SELECT * FROM readings WHERE sensor = ?", engine, params=(7,))

Installed with ``pip install 'shardwise[pandas]'`` (SQLAlchemy and pandas are not
dependencies of shardwise itself); registered as the ``shardwise`` dialect through the
``sqlalchemy.dialects`` entry point. ``docs/sql.md`` is the user guide.

**URLs.** ``shardwise://`` is the cluster of ``$SHARDWISE_CLUSTER_DIR`` or
``./.shardwise``; ``shardwise:///DIR`` a cluster directory (relative; four slashes for an
absolute path, as SQLite's URLs); ``shardwise:///PATH/cluster.toml`` a description file.
Query options go to the client: ``?deadline_s=30``. A host in the URL is refused: the
controllers, their ids and the secret come from the description.

**What it emits.** Statements as SQLAlchemy's generic compiler writes them (``?``
parameters, double-quoted names), which the planner reads. ``CREATE TABLE`` gets the
``WITH (distribution = ..., keyspace = ...)`` shardwise requires: the table's
``shardwise_distribution`` / ``shardwise_keyspace`` options, else the first column of
the primary key, else the first column that can distribute rows (INTEGER, TEXT or BLOB
affinity), so a DataFrame written with its index is distributed by the index;
``shardwise_reference=True`` makes a reference table instead (``WITH (reference =
true)``). Types are SQLite's: dates and times are stored as ISO 8601 text (an aware
datetime in UTC, with its ``+00:00``), booleans as 0 and 1. Reflection reads the catalog
(what ``\\d`` shows), never ``sqlite_master``.

**Transactions** are the DB-API's (``shardwise.dbapi``): serializable, across shards;
``commit()`` commits and ``rollback()`` drops. A DDL statement takes effect at once, on
its own, and is refused in a transaction that has already written (commit first).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable
from decimal import Decimal
from types import ModuleType
from typing import Any, Final

from sqlalchemy import Table as SaTable
from sqlalchemy import exc, types
from sqlalchemy.dialects.postgresql.base import RESERVED_WORDS as POSTGRES_RESERVED
from sqlalchemy.dialects.sqlite.base import SQLiteIdentifierPreparer
from sqlalchemy.engine import URL, Connection, default, reflection
from sqlalchemy.engine.interfaces import Dialect
from sqlalchemy.sql import compiler
from sqlalchemy.sql.schema import ForeignKeyConstraint

from shardwise.model.config import DEFAULT_KEYSPACE, MAX_NAME_LENGTH
from shardwise.model.config import Table as CatalogTable
from shardwise.sql.catalog import ColumnSpec, affinity

DISTRIBUTING_AFFINITIES: Final = frozenset({"INTEGER", "TEXT", "BLOB"})
"""Affinities a distribution column may have (docs/sql.md, "Tables")."""

URL_OPTIONS: Final = {"deadline_s": float, "client_id": str}
"""Query options of a ``shardwise://`` URL, and their types, passed to the client."""


# --- values: dates and times as ISO 8601 text --------------------------------------------


class _DateTime(types.DateTime):
    def bind_processor(self, dialect: Any) -> Callable[[Any], Any]:
        def process(value: Any) -> Any:
            if isinstance(value, dt.datetime):
                if value.tzinfo is not None:
                    value = value.astimezone(dt.UTC)
                return value.isoformat(sep=" ")
            return value

        return process

    def result_processor(self, dialect: Any, coltype: object) -> Callable[[Any], Any]:
        def process(value: Any) -> Any:
            return dt.datetime.fromisoformat(value) if isinstance(value, str) else value

        return process


class _Date(types.Date):
    def bind_processor(self, dialect: Any) -> Callable[[Any], Any]:
        def process(value: Any) -> Any:
            if isinstance(value, dt.datetime):
                value = value.date()
            return value.isoformat() if isinstance(value, dt.date) else value

        return process

    def result_processor(self, dialect: Any, coltype: object) -> Callable[[Any], Any]:
        def process(value: Any) -> Any:
            return dt.date.fromisoformat(value) if isinstance(value, str) else value

        return process


class _Time(types.Time):
    def bind_processor(self, dialect: Any) -> Callable[[Any], Any]:
        def process(value: Any) -> Any:
            return value.isoformat() if isinstance(value, dt.time) else value

        return process

    def result_processor(self, dialect: Any, coltype: object) -> Callable[[Any], Any]:
        def process(value: Any) -> Any:
            return dt.time.fromisoformat(value) if isinstance(value, str) else value

        return process


class _Numeric(types.Numeric):  # type: ignore[type-arg]
    """There is no exact decimal type (NUMERIC affinity): a ``Decimal`` is stored as the
    number SQLite would make of it."""

    def bind_processor(self, dialect: Any) -> Callable[[Any], Any]:
        def process(value: Any) -> Any:
            if isinstance(value, Decimal):
                return int(value) if value == value.to_integral_value() else float(value)
            return value

        return process


# --- compilers ---------------------------------------------------------------------------


class ShardwiseCompiler(compiler.SQLCompiler):
    def limit_clause(self, select: Any, **kw: Any) -> str:
        # PostgreSQL's OFFSET without LIMIT, not SQLite's "LIMIT -1".
        text = ""
        if select._limit_clause is not None:
            text += "\n LIMIT " + self.process(select._limit_clause, **kw)
        if select._offset_clause is not None:
            text += "\n OFFSET " + self.process(select._offset_clause, **kw)
        return text


class ShardwiseTypeCompiler(compiler.GenericTypeCompiler):
    """Type names the planner reads and whose SQLite affinity is the type's."""

    def visit_float(self, type_: Any, **kw: Any) -> str:
        return "REAL"

    def visit_double(self, type_: Any, **kw: Any) -> str:
        return "REAL"

    def visit_large_binary(self, type_: Any, **kw: Any) -> str:
        return "BLOB"

    def visit_datetime(self, type_: Any, **kw: Any) -> str:
        return "TIMESTAMP"

    def visit_uuid(self, type_: Any, **kw: Any) -> str:
        return "TEXT"


class ShardwiseDDLCompiler(compiler.DDLCompiler):
    def post_create_table(self, table: SaTable) -> str:
        options = table.dialect_options["shardwise"]
        keyspace = options["keyspace"] or DEFAULT_KEYSPACE
        if options["reference"]:
            return f" WITH (reference = true, keyspace = {_literal(keyspace)})"
        column = options["distribution"] or distribution_column(table, self.dialect)
        return f" WITH (distribution = {_literal(column)}, keyspace = {_literal(keyspace)})"

    def visit_foreign_key_constraint(self, constraint: ForeignKeyConstraint, **kw: Any) -> str:
        raise exc.CompileError(
            f"foreign keys are not supported by shardwise (table {constraint.table.name!r})"
        )


def distribution_column(table: SaTable, dialect: Dialect) -> str:
    """The column a table without a ``shardwise_distribution`` option is distributed by:
    the first of its primary key, else the first whose type can distribute rows."""
    if table.primary_key.columns:
        return str(next(iter(table.primary_key.columns)).name)
    for column in table.columns:
        declared = dialect.type_compiler_instance.process(column.type)
        if affinity(declared) in DISTRIBUTING_AFFINITIES:
            return str(column.name)
    raise exc.CompileError(
        f"table {table.name!r} has no column that can distribute its rows (INTEGER, TEXT "
        "or BLOB): give one, or name it with Table(..., shardwise_distribution='column')"
    )


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


class ShardwiseIdentifierPreparer(compiler.IdentifierPreparer):
    # Quote what either reads as a keyword: the planner reads PostgreSQL, shards run SQLite.
    reserved_words = (
        compiler.RESERVED_WORDS | POSTGRES_RESERVED | SQLiteIdentifierPreparer.reserved_words
    )


# --- the dialect -------------------------------------------------------------------------


class ShardwiseDialect(default.DefaultDialect):
    name = "shardwise"
    driver = "dbapi"
    default_paramstyle = "qmark"
    supports_statement_cache = True
    statement_compiler = ShardwiseCompiler
    ddl_compiler = ShardwiseDDLCompiler
    type_compiler_cls = ShardwiseTypeCompiler
    preparer = ShardwiseIdentifierPreparer
    colspecs = {  # noqa: RUF012 - SQLAlchemy's own attribute
        types.DateTime: _DateTime,
        types.Date: _Date,
        types.Time: _Time,
        types.Numeric: _Numeric,
    }
    construct_arguments = [  # noqa: RUF012
        (SaTable, {"distribution": None, "keyspace": None, "reference": False})
    ]
    """``Table(..., shardwise_distribution="id", shardwise_keyspace="events")``, or
    ``shardwise_reference=True`` for a reference table (a copy on every shard)."""

    max_identifier_length = MAX_NAME_LENGTH
    supports_native_boolean = False
    supports_native_decimal = False
    supports_native_enum = False
    supports_sequences = False
    supports_identity_columns = False
    supports_alter = False
    supports_comments = False
    supports_schemas = False
    supports_server_side_cursors = False
    supports_default_values = False
    supports_default_metavalue = False
    supports_empty_insert = False
    supports_multivalues_insert = True
    supports_sane_rowcount = True
    supports_sane_multi_rowcount = True
    postfetch_lastrowid = False
    insert_returning = False
    update_returning = False
    delete_returning = False
    returns_native_bytes = True
    requires_name_normalize = False

    @classmethod
    def import_dbapi(cls) -> ModuleType:
        from shardwise import dbapi  # noqa: PLC0415 - the DB-API is loaded when used

        return dbapi

    def create_connect_args(self, url: URL) -> tuple[list[Any], dict[str, Any]]:
        if url.host or url.port or url.username or url.password:
            raise exc.ArgumentError(
                f"a shardwise URL names a cluster directory or description, not a host: "
                f"shardwise:///DIRECTORY (got {url.render_as_string(hide_password=True)!r})"
            )
        options: dict[str, Any] = {}
        for key, value in url.query.items():
            kind = URL_OPTIONS.get(key)
            if kind is None or not isinstance(value, str):
                raise exc.ArgumentError(
                    f"unknown shardwise URL option {key!r} (known: {', '.join(URL_OPTIONS)})"
                )
            options[key] = kind(value)
        return [url.database or None], options

    def get_isolation_level(self, dbapi_connection: Any) -> Any:
        return "SERIALIZABLE"  # (the only one: docs/sql.md, "Transactions")

    # --- reflection: the catalog ----------------------------------------------------------

    @reflection.cache  # type: ignore[untyped-decorator,unused-ignore]
    def _catalog(self, connection: Connection, **kw: Any) -> dict[str, CatalogTable]:
        tables: dict[str, CatalogTable] = connection.connection.dbapi_connection.tables()  # type: ignore[union-attr]
        return tables

    def _table(
        self, connection: Connection, table_name: str, schema: str | None, **kw: Any
    ) -> CatalogTable:
        table = None if schema else self._catalog(connection, **kw).get(table_name)
        if table is None:
            raise exc.NoSuchTableError(table_name)
        return table

    def has_table(
        self, connection: Connection, table_name: str, schema: str | None = None, **kw: Any
    ) -> bool:
        return not schema and table_name in self._catalog(connection, **kw)

    def get_table_names(
        self, connection: Connection, schema: str | None = None, **kw: Any
    ) -> list[str]:
        return [] if schema else sorted(self._catalog(connection, **kw))

    def get_view_names(
        self, connection: Connection, schema: str | None = None, **kw: Any
    ) -> list[str]:
        return []

    def get_columns(  # type: ignore[override]
        self, connection: Connection, table_name: str, schema: str | None = None, **kw: Any
    ) -> list[dict[str, Any]]:
        table = self._table(connection, table_name, schema, **kw)
        columns = []
        for column in table.columns:
            spec = ColumnSpec.from_model(column)
            columns.append(
                {
                    "name": spec.name,
                    "type": reflected_type(spec.type_name),
                    "nullable": not spec.not_null,
                    "default": spec.default_sql,
                    "autoincrement": False,
                }
            )
        return columns

    def get_pk_constraint(  # type: ignore[override]
        self, connection: Connection, table_name: str, schema: str | None = None, **kw: Any
    ) -> dict[str, Any]:
        table = self._table(connection, table_name, schema, **kw)
        primary = f"{table.name}_pkey"  # the name the planner gives a PRIMARY KEY's index
        for index in table.indexes:
            if index.name == primary:
                return {"name": primary, "constrained_columns": list(index.columns)}
        return {"name": None, "constrained_columns": []}

    def get_foreign_keys(  # type: ignore[override]
        self, connection: Connection, table_name: str, schema: str | None = None, **kw: Any
    ) -> list[dict[str, Any]]:
        self._table(connection, table_name, schema, **kw)
        return []

    def get_indexes(  # type: ignore[override]
        self, connection: Connection, table_name: str, schema: str | None = None, **kw: Any
    ) -> list[dict[str, Any]]:
        table = self._table(connection, table_name, schema, **kw)
        primary = f"{table.name}_pkey"
        return [
            {"name": i.name, "column_names": list(i.columns), "unique": i.unique}
            for i in table.indexes
            if i.name != primary
        ]

    def get_unique_constraints(  # type: ignore[override]
        self, connection: Connection, table_name: str, schema: str | None = None, **kw: Any
    ) -> list[dict[str, Any]]:
        self._table(connection, table_name, schema, **kw)
        return []  # a UNIQUE constraint is a unique index (get_indexes)

    def get_check_constraints(  # type: ignore[override]
        self, connection: Connection, table_name: str, schema: str | None = None, **kw: Any
    ) -> list[dict[str, Any]]:
        self._table(connection, table_name, schema, **kw)
        return []


_NAMED_TYPES: Final[dict[str, type[types.TypeEngine[Any]]]] = {
    "INTEGER": types.INTEGER,
    "INT": types.INTEGER,
    "BIGINT": types.BIGINT,
    "SMALLINT": types.SMALLINT,
    "TEXT": types.TEXT,
    "VARCHAR": types.VARCHAR,
    "CHAR": types.CHAR,
    "REAL": types.REAL,
    "FLOAT": types.FLOAT,
    "DOUBLE": types.DOUBLE,
    "DOUBLE PRECISION": types.DOUBLE_PRECISION,
    "NUMERIC": types.NUMERIC,
    "DECIMAL": types.DECIMAL,
    "BLOB": types.BLOB,
    "BOOLEAN": types.BOOLEAN,
    "DATE": types.DATE,
    "TIME": types.TIME,
    "TIMESTAMP": types.TIMESTAMP,
    "DATETIME": types.DATETIME,
}
_BY_AFFINITY: Final[dict[str, type[types.TypeEngine[Any]]]] = {
    "INTEGER": types.INTEGER,
    "TEXT": types.TEXT,
    "BLOB": types.BLOB,
    "REAL": types.REAL,
    "NUMERIC": types.NUMERIC,
}
_DECLARED: Final = re.compile(r"^\s*([A-Za-z_ ]*?)\s*(?:\(\s*(\d+)\s*(?:,\s*\d+\s*)?\))?\s*$")


def reflected_type(type_name: str) -> types.TypeEngine[Any]:
    """The SQLAlchemy type of a catalog column's declared type (the catalog keeps SQLite's
    spelling: ``BIGINT`` and ``BOOLEAN`` columns read back as ``INTEGER``); an unknown
    name by its SQLite affinity, no type at all as ``NullType``."""
    if not type_name.strip():
        return types.NullType()
    match = _DECLARED.match(type_name)
    name = " ".join(match[1].upper().split()) if match else ""
    kind = _NAMED_TYPES.get(name)
    if kind is None:
        return _BY_AFFINITY[affinity(type_name)]()
    if match and match[2] and kind in (types.TEXT, types.VARCHAR, types.CHAR):
        return kind(int(match[2]))
    return kind()


dialect = ShardwiseDialect
