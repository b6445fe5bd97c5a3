"""Hostile tests: SQL transactions for a user whose grants name tables (``read:ks.t``,
``write:ks.t``), not whole keyspaces. Such a user may run every statement of a
transaction, one by one, yet the transaction's *commit* asks for a grant on the whole
keyspace (``txn/handlers.py``: ``_parts_denied`` for a part that only read SQL, and
``_sql`` for a visit that runs nothing, which is how a read-only transaction validates
its SQL versions: ``client/txn.py`` ``_validate_reads`` -> ``TxnProtocol.sql_version``).

So ``BEGIN; SELECT ... FROM t; COMMIT`` fails with "may not read keyspace" for a user
allowed to read ``t``; and through the DB-API (autocommit off by default, so every
``SELECT`` is in a transaction) every ``conn.commit()`` after a read fails.

Found by a hostile review; each test here failed before its fix (the docstrings
describe the bug as it was found: ``git log`` has the fix)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from shardwise.model.access import AccessCatalog, Role, User, parse_grant
from shardwise.model.config import Column, ShardId, Table
from shardwise.model.scram import make_verifier
from shardwise.model.sql import SqlStatement
from shardwise.model.txn import TxnPart, TxnSql
from shardwise.net.rpc import CallContext
from shardwise.net.wire import PeerRole
from shardwise.shardserver.access import AccessGuard
from shardwise.shardserver.protocol import SqlReply, TxnSqlRequest
from shardwise.shardserver.txn.handlers import TxnHandlers

TABLES = {
    "acct": Table("acct", "default", "id", (Column("id", "INTEGER"), Column("balance", "INTEGER"))),
}
SHARD = ShardId("default", 0)


class _PastTheDoorError(Exception):
    """The request got past every check and would now run."""


def _handlers() -> tuple[Any, CallContext]:
    guard = AccessGuard()
    role = Role("acct_rw", (parse_grant("read:default.acct"), parse_grant("write:default.acct")))
    tess = User("tess", make_verifier("pw", salt=b"s" * 16), ("acct_rw",))
    guard.update(AccessCatalog(1, {"tess": tess}, {"acct_rw": role}))

    def sql_denied(
        context: CallContext,
        shard: ShardId,
        statements: Any,
        *,
        writing: bool = False,
        shipped: Any = (),
    ) -> SqlReply | None:
        why = guard.sql_denied(
            context, shard.keyspace, TABLES, 1, statements, writing=writing, shipped=shipped
        )
        return SqlReply("ok", error=why, denied=True) if why else None

    def read(*_: object) -> None:
        raise _PastTheDoorError

    handlers: Any = TxnHandlers.__new__(TxnHandlers)
    handlers._access = guard
    handlers._keyspace_denied = guard.kv_denied
    handlers._sql_denied = sql_denied
    handlers._max_steps = 1000
    handlers._max_seconds = 0.25
    handlers.host = SimpleNamespace(
        state_machine=SimpleNamespace(
            refused_sql=lambda *_: "", config=SimpleNamespace(tables=TABLES)
        ),
        read=read,
    )
    return handlers, CallContext("tess-client", PeerRole.CLIENT, 0.0, "tess")


def test_the_table_grant_user_may_read_and_write_acct_statement_by_statement() -> None:
    """(Control: each statement's visit passes the door.)"""
    handlers, tess = _handlers()
    select = SqlStatement('SELECT "balance" FROM "sql_acct" WHERE "id" = :id', {"id": 1})
    update = SqlStatement('UPDATE "sql_acct" SET "balance" = 0 WHERE "id" = :id', {"id": 1})
    for request in (TxnSqlRequest(SHARD, read=select), TxnSqlRequest(SHARD, statements=(update,))):
        with pytest.raises(_PastTheDoorError):
            asyncio.run(handlers._sql(request, tess))
    part = TxnPart(SHARD, sql=TxnSql(7, (update,)))
    assert handlers._parts_denied(tess, (part,)) is None


def test_a_read_only_sql_transaction_commits_for_a_user_who_may_read_its_table() -> None:
    """``BEGIN; SELECT balance FROM acct WHERE id = 1; COMMIT``: the SELECT's visit passes
    (a grant to read ``acct``); the COMMIT validates the shard's SQL version with a visit
    that runs nothing, and the door (``TxnHandlers._sql``: ``elif not writes and
    self._denied(context, Privilege.READ, r.shard)``) wants read on keyspace ``default``
    -> ``RequestRefusedError`` at COMMIT. Through the DB-API (autocommit off) every read
    followed by ``conn.commit()`` fails this way.

    Cause: ``src/shardwise/shardserver/txn/handlers.py`` ``_sql`` (the last ``elif``)."""
    handlers, tess = _handlers()
    reply = None
    try:
        reply = asyncio.run(handlers._sql(TxnSqlRequest(SHARD), tess))
    except _PastTheDoorError:
        return
    pytest.fail(f"the version visit was refused: {reply}")


def test_a_transaction_that_read_acct_on_one_shard_may_prepare_there() -> None:
    """``BEGIN; SELECT ... FROM acct WHERE id = a; UPDATE acct ... WHERE id = b; COMMIT``
    with ``a`` and ``b`` on different shards: the part for ``a``'s shard only read
    (``TxnSql(version, ())``) and ``_parts_denied`` asks for read on the keyspace
    (``if part.writes or part.reads or not statements``), not on the tables read -- which
    the part does not even say. The COMMIT is refused for a user who ran every statement.

    Cause: ``src/shardwise/shardserver/txn/handlers.py`` ``_parts_denied``."""
    handlers, tess = _handlers()
    only_read = TxnPart(SHARD, sql=TxnSql(7, ()))
    assert handlers._parts_denied(tess, (only_read,)) is None
