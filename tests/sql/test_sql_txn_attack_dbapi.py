"""Hostile tests: the DB-API connection's idea of "in a transaction" against the SQL
session's (``client/sql.py`` ``ClusterSql``), which the connection's client runs.

Found by a hostile review; each test here failed before its fix (the docstrings
describe the bug as it was found: ``git log`` has the fix)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from shardwise import dbapi
from shardwise.client.sql import ClusterSql
from shardwise.client.sqltxn import control_word
from shardwise.model.txn import TransactionConflictError
from shardwise.sql import Result


class _DoomedTxn:
    """Stands for a ``client/txn.Transaction`` whose commit meets a conflict (another
    session changed what it read)."""

    def __init__(self) -> None:
        self.state = "open"
        self.sql_failure = None

    def set_deadline(self, deadline: float) -> None:
        pass

    def abort(self) -> None:
        self.state = "aborted"

    async def commit(self) -> None:
        self.state = "failed"
        raise TransactionConflictError("the transaction did not commit: a read changed")


class _SessionRunner:
    """A SyncClient's ``sql`` over a real :class:`ClusterSql` session for transaction
    control; any other statement is noted with whether the session had a transaction
    open when it ran (outside one, it would commit on its own at once)."""

    def __init__(self) -> None:
        self.session = ClusterSql(None, None, lambda deadline, ordered: _DoomedTxn())  # type: ignore[arg-type, return-value]
        self.ran: list[tuple[str, bool]] = []

    def sql(self, query: str, params: Any = None) -> Result:
        if control_word(query) is not None:
            return asyncio.run(self._control(query))
        self.ran.append((query, self.session.in_transaction))
        return Result(())

    async def _control(self, query: str) -> Result:
        return await self.session.execute(query, None, asyncio.get_running_loop().time() + 5)

    def close(self) -> None:
        pass


def test_statements_after_a_failed_explicit_commit_do_not_autocommit() -> None:
    """``cursor.execute("COMMIT")`` goes through ``Connection.run``, which sets
    ``_in_transaction = (word == "begin")`` only *after* ``runner.sql`` returns. A COMMIT
    that meets a conflict raises (OperationalError), and the session has already dropped
    its transaction (``ClusterSql._control``: ``tx, self.tx = self.tx, None`` before the
    commit), but the connection still believes one is open: the next statement is sent
    without a BEGIN and so commits on its own, at once, and ``conn.rollback()`` can no
    longer undo it (the session has nothing to roll back). PEP 249 with autocommit off:
    every statement runs inside a transaction that ``rollback()`` drops.

    Cause: ``src/shardwise/dbapi.py`` ``Connection.run`` (the control-word branch)."""
    runner = _SessionRunner()
    conn = dbapi.Connection(runner)
    cursor = conn.cursor()
    cursor.execute("UPDATE acct SET balance = 0 WHERE id = 1")  # (BEGIN sent first)
    assert runner.ran == [("UPDATE acct SET balance = 0 WHERE id = 1", True)]
    with pytest.raises(dbapi.OperationalError):
        cursor.execute("COMMIT")
    cursor.execute("DELETE FROM acct")
    conn.rollback()  # meant to drop the DELETE
    assert runner.ran[-1] == ("DELETE FROM acct", True), "the DELETE ran outside a transaction"
