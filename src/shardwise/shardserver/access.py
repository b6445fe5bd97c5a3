"""Who may do what on this server: the users the controller keeps, checked at the door.

A :class:`AccessGuard` holds the latest access catalog (``model/access.py``), which it
follows by watching the controller. The transport asks it for a user's verifier when a
client logs in (:meth:`find_user`); the request handlers ask it whether the logged-in
user may do what a request asks (:meth:`kv_denied`, :meth:`sql_denied`) before anything
reaches the Raft log. A caller that proved the cluster secret (``context.user is None``:
a node, or an operator's client) is never checked.

The checks run on the leader, at the door, never while applying: a log entry must apply
the same on every replica, and replicas may hold different versions of the catalog for
a moment. So a revoked grant stops new requests as soon as this server has the new
catalog (a watch: normally within a round trip of the change), while a request already
admitted finishes.

**Which tables a SQL statement touches** is decided by SQLite itself, not by parsing:
each statement is prepared (``EXPLAIN``, which compiles but does not run it) on a scratch
in-memory database holding the keyspace's tables, under an authorizer that records every
table read and written. Whatever SQLite would touch is what is checked.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

from shardwise.errors import NetError, ShardwiseError
from shardwise.model.access import AccessCatalog, Privilege
from shardwise.model.config import Table
from shardwise.model.scram import ScramVerifier
from shardwise.net.rpc import CallContext
from shardwise.sql.catalog import physical_name
from shardwise.sql.index_tables import hidden_tables
from shardwise.sql.shard_schema import create_table_ddl
from shardwise.sql.shipped import ShippedTable, is_shipped, shipped_tables

logger = logging.getLogger(__name__)

WATCH_S: Final = 10.0
"""How long one watch of the access catalog waits at the controller."""

RETRY_S: Final = 1.0
"""Pause after a failed watch (the controller unreachable) before the next."""

MAX_SCRATCH_SCHEMAS: Final = 16
"""Scratch databases kept (one per keyspace and catalog version in use)."""

_READS: Final = frozenset({sqlite3.SQLITE_READ, sqlite3.SQLITE_SELECT})
_WRITES: Final = {
    sqlite3.SQLITE_INSERT: "INSERT",
    sqlite3.SQLITE_UPDATE: "UPDATE",
    sqlite3.SQLITE_DELETE: "DELETE",
}


class AccessGuard:
    def __init__(self) -> None:
        self.catalog = AccessCatalog()
        self._scratch: OrderedDict[tuple[str, int], _Scratch] = OrderedDict()

    # --- following the controller ----------------------------------------------------

    def find_user(self, name: str) -> ScramVerifier | None:
        user = self.catalog.user(name)
        return user.verifier if user is not None else None

    def update(self, catalog: AccessCatalog) -> None:
        if catalog.version > self.catalog.version:
            self.catalog = catalog

    async def follow(self, controller: Any) -> None:
        """Keep :attr:`catalog` up to date with the controller's (``controller`` is a
        ``ControllerClient``); runs until cancelled."""
        while True:
            try:
                self.update(await controller.access(self.catalog.version, wait_s=WATCH_S))
            except (NetError, ShardwiseError) as exc:
                logger.debug("watching the access catalog failed: %r", exc)
                await asyncio.sleep(RETRY_S)

    # --- checks ------------------------------------------------------------------------

    def kv_denied(self, context: CallContext, need: Privilege, keyspace: str) -> str:
        """Why the caller may not do ``need`` on ``keyspace``'s keys (empty: it may)."""
        user = context.user
        if user is None or self.catalog.allows(user, need, keyspace):
            return ""
        return f"user {user!r} may not {need.name.lower()} the keys of keyspace {keyspace!r}"

    def sql_read_denied(
        self, context: CallContext, keyspace: str, tables: Mapping[str, Table]
    ) -> str:
        """Why the caller may not read any SQL table of ``keyspace`` (empty: it may read
        one, or the whole keyspace): what a transaction needs to validate, and hold a
        shared lock on, a shard's tables it read."""
        user = context.user
        if user is None or self.catalog.allows(user, Privilege.READ, keyspace):
            return ""
        for name, table in tables.items():
            if table.keyspace == keyspace and self.catalog.allows(
                user, Privilege.READ, keyspace, name
            ):
                return ""
        return f"user {user!r} may not read any table of keyspace {keyspace!r}"

    def sql_denied(
        self,
        context: CallContext,
        keyspace: str,
        tables: Mapping[str, Table],
        catalog_num: int,
        statements: Iterable[tuple[str, Mapping[str, Any] | Sequence[Any]]],
        *,
        writing: bool = False,
        shipped: Sequence[ShippedTable] = (),
    ) -> str:
        """Why the caller may not run ``statements`` (empty: it may). ``tables`` is the
        catalog the server holds (numbered ``catalog_num``): what SQLite will see.

        Every table a statement touches needs its grant. A read that touches no table
        (``SELECT 1``) still runs on the shard, so it needs read on the whole keyspace;
        in a write batch (``writing``), which goes into the group's log, every statement
        must write a table. ``shipped`` are the tables a read fragment is sent with (a
        broadcast join's rows, checked already: ``shipped.refusal``): reading them needs
        no grant, as they hold only what the caller sent."""
        user = context.user
        if user is None:
            return ""
        scratch = self._scratch_for(keyspace, tables, catalog_num)
        for sql, params in statements:
            touched = scratch.touched(sql, params, shipped)
            if isinstance(touched, str):
                return f"user {user!r}: the statement cannot be checked: {touched}"
            if writing and not any(need is Privilege.WRITE for need, _ in touched):
                return f"user {user!r}: a write batch holds only statements that write a table"
            if not touched and not self.catalog.allows(user, Privilege.READ, keyspace):
                return f"user {user!r} may not read keyspace {keyspace!r}"
            for need, table in touched:
                if not self.catalog.allows(user, need, keyspace, table):
                    verb = "write" if need is Privilege.WRITE else "read"
                    return f"user {user!r} may not {verb} table {table!r}"
        return ""

    def _scratch_for(
        self, keyspace: str, tables: Mapping[str, Table], catalog_num: int
    ) -> _Scratch:
        key = (keyspace, catalog_num)
        scratch = self._scratch.get(key)
        if scratch is None:
            mine = {name: t for name, t in tables.items() if t.keyspace == keyspace}
            scratch = _Scratch(mine)
            self._scratch[key] = scratch
            while len(self._scratch) > MAX_SCRATCH_SCHEMAS:
                _, old = self._scratch.popitem(last=False)
                old.close()
        else:
            self._scratch.move_to_end(key)
        return scratch

    def close(self) -> None:
        for scratch in self._scratch.values():
            scratch.close()
        self._scratch.clear()


class _Scratch:
    """An in-memory database with a keyspace's tables, to ask SQLite what a statement
    touches."""

    def __init__(self, tables: Mapping[str, Table]) -> None:
        # A global index's hidden table is its table's, for grants.
        self._logical = {physical_name(name): name for name in tables} | hidden_tables(tables)
        # No statement cache: SQLite calls the authorizer when it compiles a statement,
        # and a cached one is not compiled again, so its tables would go unrecorded.
        self._db = sqlite3.connect(":memory:", check_same_thread=False, cached_statements=0)
        # shardwise's own SQL functions, so a statement using them compiles here as on
        # the shard (imported late: they bring numpy, which a server loads only for SQL).
        from shardwise.sql.functions import register  # noqa: PLC0415

        register(self._db)
        for table in tables.values():
            for ddl in create_table_ddl(table):
                self._db.execute(ddl)
        self._seen: list[tuple[Privilege, str]] = []
        self._db.set_authorizer(self._record)

    def _record(
        self, action: int, arg1: str | None, _arg2: str | None, database: str | None, *_: object
    ) -> int:
        if action in _READS and is_shipped(arg1, database):
            return sqlite3.SQLITE_OK  # (what the caller sent along: see sql_denied)
        if arg1 is not None and (action in _READS or action in _WRITES):
            need = Privilege.WRITE if action in _WRITES else Privilege.READ
            # A table the catalog does not have (an internal one) keeps its physical
            # name: no grant names it, so it is refused.
            self._seen.append((need, self._logical.get(arg1, arg1)))
        return sqlite3.SQLITE_OK

    def touched(
        self,
        sql: str,
        params: Mapping[str, Any] | Sequence[Any],
        shipped: Sequence[ShippedTable] = (),
    ) -> list[tuple[Privilege, str]] | str:
        """The tables ``sql`` reads and writes, as SQLite compiles it (beside the empty
        ``shipped`` tables); or, if it does not compile, why (a user's statement that
        cannot be checked is not run)."""
        empty = [ShippedTable(t.name, t.columns, ()) for t in shipped]
        try:
            with shipped_tables(self._db, empty):
                self._seen = []  # (not the making of the shipped tables)
                bound = dict(params) if isinstance(params, Mapping) else tuple(params)
                self._db.execute("EXPLAIN " + sql, bound).fetchall()
        except (sqlite3.Error, ValueError, OverflowError, TypeError) as exc:
            return str(exc) or type(exc).__name__
        return list(dict.fromkeys(self._seen))

    def close(self) -> None:
        self._db.close()
