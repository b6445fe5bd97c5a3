"""shardwise.dbapi: PEP 249's surface over a statement runner, here the in-process shards
(the cluster's runner is checked in ``tests/sql/test_cluster_processes.py``)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from shardwise import dbapi
from shardwise.client.sqltxn import control_word
from shardwise.errors import ShardwiseError, SqlConstraintError, SqlSyntaxError
from shardwise.model.config import Keyspace, Scheme
from shardwise.sql import Coordinator, LocalShards, Result


class _LocalRunner:
    """A SyncClient's ``sql`` and ``close`` over LocalShards."""

    def __init__(self) -> None:
        self.shards = LocalShards([Keyspace("default", Scheme(shards=4))])
        self.coordinator = Coordinator(self.shards, self.shards)
        self.closed = False
        self.control: list[str] = []
        """Transaction control the connection sent (LocalShards has no transactions)."""

    def sql(self, query: str, params: Any = None) -> Result:
        if control_word(query) is not None:
            self.control.append(query)
            return Result(())
        return asyncio.run(self.coordinator.execute(query, params))

    def close(self) -> None:
        self.closed = True
        self.shards.close()


@pytest.fixture
def conn() -> Iterator[dbapi.Connection]:
    connection = dbapi.Connection(_LocalRunner())
    cursor = connection.cursor()
    cursor.execute(
        "CREATE TABLE people (id INTEGER PRIMARY KEY, name TEXT, age INTEGER) "
        "WITH (distribution = 'id')"
    )
    yield connection
    connection.close()


def _read_sql(connection: dbapi.Connection, sql: str, params: Any = None) -> dict[str, list[Any]]:
    """What ``pandas.read_sql`` does with a DB-API connection that is not SQLAlchemy's:
    a cursor, ``execute(sql, params)``, column names from ``description``, the rows by
    ``fetchall`` (or ``fetchmany`` in chunks), ``close``; a ``rollback`` on error."""
    cursor = connection.cursor()
    try:
        cursor.execute(sql, params)
    except dbapi.Error:
        connection.rollback()
        raise
    columns = [column[0] for column in cursor.description or ()]
    rows = list(cursor.fetchmany(2))
    while chunk := cursor.fetchmany(2):
        rows.extend(chunk)
    cursor.close()
    return {name: [row[i] for row in rows] for i, name in enumerate(columns)}


def test_module_globals() -> None:
    assert dbapi.apilevel == "2.0"
    assert dbapi.threadsafety == 2
    assert dbapi.paramstyle == "qmark"
    for name in ("Warning", "Error", "InterfaceError", "DatabaseError", "DataError",
                 "OperationalError", "IntegrityError", "InternalError", "ProgrammingError",
                 "NotSupportedError"):  # fmt: skip
        kind = getattr(dbapi, name)
        assert issubclass(kind, Exception) and issubclass(kind, ShardwiseError)
        assert getattr(dbapi.Connection, name) is kind
    assert issubclass(dbapi.IntegrityError, dbapi.DatabaseError)
    assert issubclass(dbapi.DatabaseError, dbapi.Error)


def test_execute_and_fetch(conn: dbapi.Connection) -> None:
    cursor = conn.cursor()
    assert cursor.description is None and cursor.rowcount == -1 and cursor.arraysize == 1
    people = [(1, "ada", 36), (2, "alan", 41), (3, "grace", 85), (4, "edsger", None)]
    cursor.executemany("INSERT INTO people VALUES (?, ?, ?)", people)
    assert cursor.rowcount == 4 and cursor.description is None
    cursor.execute("UPDATE people SET age = age + 1 WHERE age > ?", [40])
    assert cursor.rowcount == 2
    cursor.execute("SELECT id, name AS who, age FROM people ORDER BY id")
    description = cursor.description
    assert description is not None
    assert [d[0] for d in description] == ["id", "who", "age"]
    assert all(len(d) == 7 for d in description)
    assert cursor.rowcount == -1
    assert cursor.fetchone() == (1, "ada", 36)
    assert cursor.fetchmany() == [(2, "alan", 42)]
    assert cursor.fetchmany(5) == [(3, "grace", 86), (4, "edsger", None)]
    assert cursor.fetchone() is None and cursor.fetchall() == []
    cursor.execute("SELECT name FROM people WHERE id IN (:a, :b) ORDER BY 1", {"a": 1, "b": 3})
    assert list(cursor) == [("ada",), ("grace",)]
    conn.commit()
    conn.rollback()


def test_a_pandas_style_read(conn: dbapi.Connection) -> None:
    cursor = conn.cursor()
    cursor.execute("INSERT INTO people VALUES (1, 'ada', 36), (2, 'alan', 41), (3, 'x', 9)")
    frame = _read_sql(conn, "SELECT name, age FROM people WHERE age > ? ORDER BY age", [10])
    assert frame == {"name": ["ada", "alan"], "age": [36, 41]}
    assert _read_sql(conn, "SELECT count(*) AS n FROM people") == {"n": [3]}


def test_errors_map_onto_pep_249_classes(conn: dbapi.Connection) -> None:
    cursor = conn.cursor()
    with pytest.raises(dbapi.ProgrammingError) as syntax:
        cursor.execute("SELEC 1")
    assert isinstance(syntax.value.__cause__, SqlSyntaxError)
    with pytest.raises(dbapi.ProgrammingError):
        cursor.execute("SELECT * FROM nowhere")
    with pytest.raises(dbapi.ProgrammingError):
        cursor.execute("SELECT * FROM people WHERE id = ?", [1, 2])
    cursor.execute("INSERT INTO people VALUES (1, 'ada', 36)")
    with pytest.raises(dbapi.IntegrityError) as duplicate:
        cursor.execute("INSERT INTO people VALUES (1, 'again', 1)")
    assert isinstance(duplicate.value.__cause__, SqlConstraintError)
    with pytest.raises(dbapi.NotSupportedError):
        cursor.execute("UPDATE people SET age = random()")
    with pytest.raises(dbapi.DataError):
        cursor.execute("INSERT INTO people VALUES (NULL, 'nobody', 1)")
    cursor.execute("DROP TABLE people")
    with pytest.raises(dbapi.InterfaceError):
        cursor.fetchall()  # DDL returns no rows
    cursor.close()
    with pytest.raises(dbapi.InterfaceError):
        cursor.execute("SELECT 1")
    with pytest.raises(dbapi.InterfaceError):
        dbapi.connect({"c1": ("127.0.0.1", 1)})  # no secret


def test_closing_the_connection_closes_its_runner() -> None:
    runner = _LocalRunner()
    with dbapi.Connection(runner) as connection:
        cursor = connection.cursor()
        cursor.execute("SELECT 1 + 1")
        assert cursor.fetchall() == [(2,)]
    assert runner.closed and connection.closed
    with pytest.raises(dbapi.InterfaceError):
        cursor.execute("SELECT 1")
    with pytest.raises(dbapi.InterfaceError):
        connection.cursor().execute("SELECT 1")


def test_executemany_batches_a_one_row_insert(conn: dbapi.Connection) -> None:
    """Issue 19: one planned statement per row made executemany crawl; a one-row INSERT
    now goes as multi-row INSERTs, and anything else still runs row by row."""
    runner = conn._runner()
    assert isinstance(runner, _LocalRunner)
    statements: list[str] = []
    run = runner.sql

    def counting(query: str, params: Any = None) -> Result:
        statements.append(query)
        return run(query, params)

    runner.sql = counting  # type: ignore[method-assign]
    cursor = conn.cursor()
    people = [(i, f"p{i}", i % 90) for i in range(2500)]
    cursor.executemany("INSERT INTO people VALUES (?, ?, ?)", people)
    assert cursor.rowcount == 2500 and len(statements) == 3
    cursor.execute("SELECT count(*), sum(age), max(name) FROM people")
    assert cursor.fetchone() == (2500, sum(p[2] for p in people), "p999")
    statements.clear()
    cursor.executemany("UPDATE people SET age = ? WHERE id = ?", [(1, 1), (2, 2), (3, 3)])
    assert cursor.rowcount == 3 and len(statements) == 3
    with pytest.raises(dbapi.IntegrityError):  # a duplicate key fails its batch
        cursor.executemany("INSERT INTO people VALUES (?, ?, ?)", [(5000, "a", 1), (1, "b", 2)])


def test_statements_run_in_a_transaction_until_commit_unless_autocommit() -> None:
    runner = _LocalRunner()
    connection = dbapi.Connection(runner)
    assert connection.autocommit is False
    cursor = connection.cursor()
    cursor.execute("SELECT 1")
    cursor.execute("SELECT 2")
    assert runner.control == ["BEGIN"]
    connection.commit()
    connection.commit()  # (nothing open: nothing sent)
    cursor.execute("SELECT 3")
    connection.rollback()
    assert runner.control == ["BEGIN", "COMMIT", "BEGIN", "ROLLBACK"]
    connection.autocommit = True
    cursor.execute("SELECT 4")
    connection.commit()
    assert runner.control == ["BEGIN", "COMMIT", "BEGIN", "ROLLBACK"]
    connection.autocommit = False
    cursor.execute("SELECT 5")
    connection.close()  # an open transaction is dropped
    assert runner.control[-2:] == ["BEGIN", "ROLLBACK"]
