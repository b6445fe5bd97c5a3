"""A DB-API 2.0 (PEP 249) interface to shardwise's SQL, so tools that speak it (pandas'
``read_sql``, notebooks, report writers) can read from and write to a cluster::

    from shardwise import dbapi

    conn = dbapi.connect({"c1": ("127.0.0.1", 7100)}, secret)   # the controller's servers
    conn = dbapi.connect("./.shardwise")                         # or a cluster directory
    cur = conn.cursor()
    cur.execute("SELECT g, count(*) FROM t WHERE x > ? GROUP BY g ORDER BY 2 DESC", [3])
    print([d[0] for d in cur.description], cur.fetchall())
    # pandas and SQLAlchemy: an engine on shardwise.sqlalchemy_dialect (docs/sql.md)
    pandas.read_sql("SELECT * FROM t", sqlalchemy.create_engine("shardwise:///.shardwise"))

**Statements.** Each ``execute`` is one :meth:`shardwise.client.Client.sql` call: the
statement is planned, run on the shards and its whole result held by the cursor.

**Transactions**, as PEP 249 has them: ``autocommit`` is off by default, so the first
statement begins a transaction (serializable, across shards: ``docs/sql.md``,
"Transactions") that ``commit()`` commits and ``rollback()`` drops; closing a
connection drops an open one. A commit that meets a conflict raises
``OperationalError`` caused by a
:class:`~shardwise.model.txn.TransactionConflictError`: run the transaction again. With
``conn.autocommit = True`` every statement commits on its own (a write to several
shards still all or nothing). A DDL statement always takes effect at once, on its own.

**Parameters.** ``paramstyle`` is ``qmark`` (``?``); ``$1`` (PostgreSQL) and ``:name``
with a mapping work too. Values are bound, never spliced into the text.

**Errors** are PEP 249's classes (``dbapi.Error`` and its subclasses, themselves
:class:`~shardwise.errors.ShardwiseError`\\ s), each raised from the shardwise error it
stands for (its ``__cause__``): :data:`ERROR_MAP` says which. Messages name your tables
and columns (``UNIQUE constraint failed: users.id``); an error that happened on one
shard says which in its ``shard`` attribute (``"default/25"``).

**Threads** (``threadsafety = 2``): threads may share a connection (its client serves
concurrent calls); a cursor belongs to one thread at a time.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Final, Protocol

from shardwise import errors
from shardwise.client import SyncClient
from shardwise.errors import (
    DatabaseError,
    DataError,
    DbapiError,
    DbapiWarning,
    IntegrityError,
    InterfaceError,
    InternalError,
    NotSupportedError,
    OperationalError,
    ProgrammingError,
)
from shardwise.model.config import Table
from shardwise.net.auth import Login
from shardwise.net.links import Address

__all__ = [
    "BINARY",
    "DATETIME",
    "ERROR_MAP",
    "NUMBER",
    "ROWID",
    "STRING",
    "Binary",
    "Connection",
    "Cursor",
    "DataError",
    "DatabaseError",
    "Date",
    "DateFromTicks",
    "Error",
    "IntegrityError",
    "InterfaceError",
    "InternalError",
    "NotSupportedError",
    "OperationalError",
    "ProgrammingError",
    "Time",
    "TimeFromTicks",
    "Timestamp",
    "TimestampFromTicks",
    "Warning",
    "apilevel",
    "connect",
    "paramstyle",
    "threadsafety",
]

apilevel: Final = "2.0"
threadsafety: Final = 2
paramstyle: Final = "qmark"

Error = DbapiError
Warning = DbapiWarning  # PEP 249's name (shadows the builtin here only)

ERROR_MAP: Final[tuple[tuple[type[errors.ShardwiseError], type[DbapiError]], ...]] = (
    # The first match wins: subclasses before their bases.
    (errors.SqlConstraintError, IntegrityError),
    (errors.DistributionValueError, DataError),
    (errors.SqlSyntaxError, ProgrammingError),
    (errors.SqlCatalogError, ProgrammingError),
    (errors.SqlSemanticError, ProgrammingError),
    (errors.SqlParameterError, ProgrammingError),
    (errors.DistributionColumnUpdateError, ProgrammingError),
    (errors.UnsupportedSqlError, NotSupportedError),
    (errors.NondeterministicSqlError, NotSupportedError),
    (errors.SqlLimitError, OperationalError),
    (errors.SqlExecutionError, OperationalError),
    (errors.SqlSchemaChangedError, OperationalError),
    (errors.ClientClosedError, InterfaceError),
    (errors.RequestRefusedError, DataError),
    (errors.ClientTimeoutError, OperationalError),
    (errors.ShardwiseError, OperationalError),
)
"""shardwise error -> the PEP 249 class raised for it."""

# --- PEP 249's type objects and constructors ---------------------------------------------
#
# Values are SQLite's (None, int, float, str, bytes): a binary is ``bytes``, and dates and
# times are ISO 8601 text, as SQLite's date functions and ``now()`` write them.


class _TypeObject(frozenset[str]):
    """A PEP 249 type object: equal to the type codes it stands for (``description``'s
    type codes are ``None``: SQLite types values, not columns)."""

    def __eq__(self, other: object) -> bool:
        return other in self if isinstance(other, str) else frozenset.__eq__(self, other)

    __hash__ = frozenset.__hash__


STRING: Final = _TypeObject({"TEXT"})
BINARY: Final = _TypeObject({"BLOB"})
NUMBER: Final = _TypeObject({"INTEGER", "REAL", "NUMERIC"})
DATETIME: Final = _TypeObject({"TIMESTAMP", "DATE", "TIME"})
ROWID: Final = _TypeObject({"INTEGER"})

Binary = bytes


def Date(year: int, month: int, day: int) -> str:  # noqa: N802 - PEP 249's name
    return dt.date(year, month, day).isoformat()


def Time(hour: int, minute: int, second: int) -> str:  # noqa: N802
    return dt.time(hour, minute, second).isoformat()


def Timestamp(  # noqa: N802, PLR0917 - PEP 249's name and signature
    year: int, month: int, day: int, hour: int, minute: int, second: int
) -> str:
    return dt.datetime(year, month, day, hour, minute, second).isoformat(sep=" ")


def DateFromTicks(ticks: float) -> str:  # noqa: N802
    return dt.datetime.fromtimestamp(ticks, dt.UTC).date().isoformat()


def TimeFromTicks(ticks: float) -> str:  # noqa: N802
    return dt.datetime.fromtimestamp(ticks, dt.UTC).time().isoformat()


def TimestampFromTicks(ticks: float) -> str:  # noqa: N802
    return dt.datetime.fromtimestamp(ticks, dt.UTC).replace(tzinfo=None).isoformat(sep=" ")


DEFAULT_ARRAYSIZE: Final = 1
"""``Cursor.arraysize``: rows ``fetchmany()`` returns by default (PEP 249 says 1)."""


class SqlRunner(Protocol):
    """What a connection runs statements on: a :class:`~shardwise.client.SyncClient`
    (or anything with its ``sql`` and ``close``)."""

    def sql(self, query: str, params: Any = None) -> Any: ...

    def close(self) -> None: ...


def connect(
    controllers: Mapping[str, Address] | str | os.PathLike[str] | None = None,
    secret: bytes | None = None,
    *,
    user: str | None = None,
    password: str | None = None,
    **options: Any,
) -> Connection:
    """A connection to a cluster: by its controller's servers (``{id: (host, port)}``)
    and the cluster's secret, or by a cluster directory (``cluster.toml`` as
    ``shardwise up`` writes it; the default: ``$SHARDWISE_CLUSTER_DIR`` or
    ``./.shardwise``) or the path of a description file itself. ``options`` go to
    :class:`~shardwise.client.SyncClient` (``deadline_s``, ``client_id``, ...). With
    ``user`` and ``password`` it logs in as that user instead of holding the secret."""
    try:
        if isinstance(controllers, Mapping):
            login = Login(user, password or "") if user is not None else None
            if secret is None and login is None:
                raise InterfaceError("connect(controllers, secret): the secret is missing")
            client = SyncClient(controllers, login or secret or b"", **options)
        else:
            from shardwise.clusterfile import connect as connect_cluster  # noqa: PLC0415
            from shardwise.clusterfile import credentials, find_layout  # noqa: PLC0415

            where = None if controllers is None else Path(controllers)
            if where is not None and where.is_file():  # a description, e.g. cluster.toml
                layout = find_layout(None, where)
                options.setdefault("client_ssl", layout.client_ssl())
                proof = credentials(layout, user, password)
                client = SyncClient(layout.controller_addresses, proof, **options)
            else:
                client = connect_cluster(where, user=user, password=password, **options)
        client.start()
    except DbapiError:
        raise
    except errors.ShardwiseError as exc:
        raise _translate(exc) from exc
    return Connection(client)


class Connection:
    """A DB-API connection over one client (which it closes with itself)."""

    Error = DbapiError
    Warning = DbapiWarning
    InterfaceError = InterfaceError
    DatabaseError = DatabaseError
    DataError = DataError
    OperationalError = OperationalError
    IntegrityError = IntegrityError
    InternalError = InternalError
    ProgrammingError = ProgrammingError
    NotSupportedError = NotSupportedError

    def __init__(self, client: SqlRunner) -> None:
        self._client: SqlRunner | None = client
        self.autocommit = False
        """PEP 249's default: statements run in a transaction until :meth:`commit`."""
        self._in_transaction = False

    def close(self) -> None:
        """Close the connection and its client (idempotent); an open transaction is
        dropped (nothing of it was applied)."""
        client, self._client = self._client, None
        if client is not None:
            if self._in_transaction:
                self._in_transaction = False
                with contextlib.suppress(errors.ShardwiseError):  # (nothing was applied)
                    client.sql("ROLLBACK")
            client.close()

    def commit(self) -> None:
        """Commit the open transaction (nothing to do without one)."""
        self._end("COMMIT")

    def rollback(self) -> None:
        """Drop the open transaction: none of its writes apply."""
        self._end("ROLLBACK")

    def _end(self, word: str) -> None:
        runner = self._runner()
        if not self._in_transaction:
            return
        self._in_transaction = False
        try:
            runner.sql(word)
        except errors.ShardwiseError as exc:
            raise _translate(exc) from exc

    def run(self, operation: str, parameters: Any) -> Any:
        """One statement, in the connection's transaction (begun first if autocommit is
        off and none is open); transaction control written as SQL is followed."""
        from shardwise.client.sqltxn import control_word  # noqa: PLC0415 - SQL only

        runner = self._runner()
        word = control_word(operation)
        if word is not None:
            # Whatever happens, a COMMIT or ROLLBACK ends the session's transaction (a
            # failed COMMIT drops it): the next statement begins a new one.
            if word != "begin":
                self._in_transaction = False
            result = runner.sql(operation, parameters)
            self._in_transaction = word == "begin"
            return result
        if not self.autocommit and not self._in_transaction:
            runner.sql("BEGIN")
            self._in_transaction = True
        return runner.sql(operation, parameters)

    def cursor(self) -> Cursor:
        return Cursor(self)

    def tables(self) -> dict[str, Table]:
        """shardwise's extension: the SQL catalog's tables as the controller has them now
        (by name: columns, distribution column, indexes), what ``\\d`` in the shell shows
        and the SQLAlchemy dialect reflects. Not cached: another client's DDL shows."""
        latest = getattr(self._runner(), "latest_configuration", None)
        if latest is None:
            raise NotSupportedError("this connection's client cannot read the catalog")
        try:
            config = latest()
        except errors.ShardwiseError as exc:
            raise _translate(exc) from exc
        return dict(config.tables)

    @property
    def closed(self) -> bool:
        return self._client is None

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _runner(self) -> SqlRunner:
        if self._client is None:
            raise InterfaceError("the connection is closed")
        return self._client


class Cursor:
    """A statement's result, held whole (see the module's docstring)."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self.arraysize = DEFAULT_ARRAYSIZE
        self.description: tuple[tuple[Any, ...], ...] | None = None
        """One 7-tuple per result column: its name, then six ``None`` (types are
        SQLite's, per value, as in ``sqlite3``); ``None`` after a statement with no
        result set."""
        self.rowcount = -1
        """Rows a write changed; -1 after a read or DDL."""
        self.lastrowid = None
        self._rows: list[tuple[Any, ...]] = []
        self._position = 0
        self._closed = False

    # --- statements ----------------------------------------------------------------------

    def execute(
        self, operation: str, parameters: Sequence[Any] | Mapping[str, Any] | None = None
    ) -> Cursor:
        self._runner()
        try:
            result = self.connection.run(operation, parameters)
        except DbapiError:
            raise
        except errors.ShardwiseError as exc:
            self._reset()
            raise _translate(exc) from exc
        self._reset()
        if result.columns:
            self.description = tuple((name, *(None,) * 6) for name in result.columns)
            self._rows = list(result.rows)
        self.rowcount = result.rowcount
        return self

    def executemany(
        self, operation: str, seq_of_parameters: Sequence[Sequence[Any] | Mapping[str, Any]]
    ) -> Cursor:
        """``operation`` once per set of parameters; ``rowcount`` is their total.

        A one-row ``INSERT ... VALUES (?, ...)`` runs as multi-row INSERTs of up to
        ``shardwise.sql.bulk.MAX_BULK_ROWS`` rows each (one batch per shard per
        statement, as a multi-row INSERT you write yourself, planned by the bulk path of
        ``shardwise.sql.param_insert``); each is atomic, and when one fails the ones
        before it stay applied (in autocommit; in a transaction, until it is rolled
        back). ``now()`` is one instant per batch. Any other statement runs once per
        set, in order."""
        from shardwise.sql.bulk import multi_row_inserts  # noqa: PLC0415 - loads the parser

        sets = list(seq_of_parameters)
        statements: list[tuple[str, Any]] | None = None
        if sets and not any(isinstance(p, Mapping | str | bytes) for p in sets):
            statements = multi_row_inserts(operation, sets)
        if statements is None:
            statements = [(operation, parameters) for parameters in sets]
        total = 0
        for sql, parameters in statements:
            self.execute(sql, parameters)
            total += max(0, self.rowcount)
        self.description = None
        self._rows = []
        self.rowcount = total
        return self

    # --- results -------------------------------------------------------------------------

    def fetchone(self) -> tuple[Any, ...] | None:
        self._result()
        if self._position >= len(self._rows):
            return None
        row = self._rows[self._position]
        self._position += 1
        return row

    def fetchmany(self, size: int | None = None) -> list[tuple[Any, ...]]:
        self._result()
        count = self.arraysize if size is None else size
        rows = self._rows[self._position : self._position + max(0, count)]
        self._position += len(rows)
        return rows

    def fetchall(self) -> list[tuple[Any, ...]]:
        self._result()
        rows = self._rows[self._position :]
        self._position = len(self._rows)
        return rows

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        return self

    def __next__(self) -> tuple[Any, ...]:
        row = self.fetchone()
        if row is None:
            raise StopIteration
        return row

    # --- the rest of PEP 249 -------------------------------------------------------------

    def close(self) -> None:
        # The rows go; rowcount stays readable (SQLAlchemy reads it after closing).
        self._closed = True
        self._rows = []
        self._position = 0

    def setinputsizes(self, sizes: object) -> None:
        """Accepted and ignored, as PEP 249 allows."""

    def setoutputsize(self, size: object, column: object = None) -> None:
        """Accepted and ignored, as PEP 249 allows."""

    def __enter__(self) -> Cursor:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- internals -----------------------------------------------------------------------

    def _runner(self) -> SqlRunner:
        if self._closed:
            raise InterfaceError("the cursor is closed")
        return self.connection._runner()

    def _reset(self) -> None:
        self.description = None
        self.rowcount = -1
        self._rows = []
        self._position = 0

    def _result(self) -> None:
        self._runner()
        if self.description is None:
            raise InterfaceError("the last statement returned no rows to fetch")


def _translate(exc: errors.ShardwiseError) -> DbapiError:
    translated: DbapiError = OperationalError(str(exc))
    for kind, dbapi_kind in ERROR_MAP:
        if isinstance(exc, kind):
            translated = dbapi_kind(str(exc))
            break
    if isinstance(exc, errors.SqlExecutionError):
        translated.shard = exc.shard  # a detail: the message names the user's table
    return translated
