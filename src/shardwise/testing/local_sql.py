"""SQL on the in-process cluster next to one SQLite database holding the same rows: the
harness of the tests that compare answers statement by statement and look at each
shard's copy of a table (reference tables)."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from datetime import UTC, datetime

from shardwise.model.config import ShardId
from shardwise.sql import Coordinator, LocalShards
from shardwise.sql.determinism import StatementContext
from shardwise.sql.functions import register
from shardwise.sql.planner import plan
from shardwise.sql.plans import JoinPlan, ReadPlan
from shardwise.sql.values import SqlValue

Row = tuple[SqlValue, ...]


class LocalSql:
    """``local`` (its ``keyspace`` has ``shards`` shards) through a coordinator, and
    ``sqlite``, one database, for the expected answers."""

    def __init__(self, local: LocalShards, shards: int, keyspace: str = "default") -> None:
        self.local = local
        self.shards = shards
        self.keyspace = keyspace
        self.coordinator = Coordinator(local, local)
        self.sqlite = sqlite3.connect(":memory:", isolation_level=None)
        register(self.sqlite)

    async def run(self, sql: str, params: Sequence[SqlValue] = ()) -> list[Row]:
        return [tuple(r) for r in (await self.coordinator.execute(sql, list(params))).rows]

    async def both(self, sql: str, params: Sequence[SqlValue] = ()) -> int:
        """``sql`` on the cluster and on the single SQLite database; the rows changed."""
        result = await self.coordinator.execute(sql, list(params))
        self.sqlite.execute(sql, list(params))
        return result.rowcount

    def copies(self, table: str) -> list[list[Row]]:
        """Every shard's rows of ``table``, each sorted."""
        return [
            sorted(
                self.local.connection(ShardId(self.keyspace, i)).execute(
                    f'SELECT * FROM "sql_{table}"'
                ),
                key=repr,
            )
            for i in range(self.shards)
        ]

    def assert_identical(self, table: str) -> list[Row]:
        """Every shard holds the same rows of ``table``; those rows."""
        copies = self.copies(table)
        assert all(c == copies[0] for c in copies), copies
        return copies[0]

    async def plan(self, sql: str) -> ReadPlan | JoinPlan:
        context = StatementContext(datetime(2026, 1, 1, tzinfo=UTC), 0)
        planned = plan(sql, [], await self.local.catalog(), context).plan
        assert isinstance(planned, ReadPlan | JoinPlan)
        return planned

    async def same(self, sql: str, want_sql: str | None = None) -> None:
        """``sql`` answers on the cluster what ``want_sql`` (else ``sql``) answers on
        the single database, in any order."""
        want = sorted(self.sqlite.execute(want_sql or sql).fetchall(), key=repr)
        assert sorted(await self.run(sql), key=repr) == want, sql
