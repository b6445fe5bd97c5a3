"""An in-process cluster for the SQL layer: one SQLite database per shard, no Raft.

:class:`LocalShards` is both a :class:`~shardwise.sql.executor.ShardExecutor` and a
:class:`~shardwise.sql.executor.CatalogStore`. Its shards keep their tables in sync with
its catalog exactly as a replicated shard must (:func:`schema_changes` on each catalog
change), and it registers shardwise's SQL functions on every shard connection. Tests use
it; the in-process cluster can too. Work runs on the event loop's thread, one fragment
at a time (SQLite on small test shards is faster than a hop to a worker thread).
"""

from __future__ import annotations

import dataclasses
import os
import sqlite3
from collections.abc import Callable, Iterable, Mapping, Sequence

from shardwise.errors import (
    ControllerError,
    SqlCatalogError,
    SqlConstraintError,
    SqlExecutionError,
    SqlLimitError,
)
from shardwise.model.catalog_changes import building, changed_tables, index_state
from shardwise.model.config import (
    CreateIndex,
    Keyspace,
    SetIndexState,
    SetStats,
    ShardId,
    Table,
    TableStats,
)
from shardwise.sql.capture import capturing
from shardwise.sql.catalog import Catalog
from shardwise.sql.executor import Row
from shardwise.sql.functions import register
from shardwise.sql.index_tables import IndexMaintenance
from shardwise.sql.plans import CatalogOp, Fragment, ShardBatch
from shardwise.sql.shard_schema import schema_changes
from shardwise.sql.shipped import refusal, shipped_tables


class LocalShards:
    """Every shard of ``keyspaces`` as a SQLite database: files under ``directory``, or
    in memory when it is None."""

    def __init__(
        self, keyspaces: Iterable[Keyspace], directory: str | os.PathLike[str] | None = None
    ) -> None:
        spaces = {k.name: k for k in keyspaces}
        self._catalog = Catalog({}, spaces)
        self._conns: dict[ShardId, sqlite3.Connection] = {}
        for keyspace in spaces.values():
            for index in range(keyspace.scheme.shards):
                shard = ShardId(keyspace.name, index)
                path = ":memory:"
                if directory is not None:
                    path = os.path.join(os.fspath(directory), f"{keyspace.name}-{index}.sqlite")
                conn = sqlite3.connect(path, isolation_level=None)
                register(conn)
                self._conns[shard] = conn
        self._num = 0
        """The catalog changes so far (a new table's ``created_at``, as the controller's)."""
        self.reads = 0
        """Fragments read so far (tests check pruning with it)."""

    def close(self) -> None:
        for conn in self._conns.values():
            conn.close()
        self._conns.clear()

    def connection(self, shard: ShardId) -> sqlite3.Connection:
        """The shard's database (tests inspect where rows landed)."""
        return self._conns[shard]

    # --- ShardExecutor ---------------------------------------------------------------

    async def read(self, shard: ShardId, fragment: Fragment, max_rows: int) -> list[Row]:
        self.reads += 1
        conn = self._conns[shard]
        if why := refusal(fragment.shipped):
            raise SqlExecutionError(why, str(shard))
        try:
            with shipped_tables(conn, fragment.shipped):
                cursor = conn.execute(fragment.sql, dict(fragment.params))
                rows = cursor.fetchmany(max_rows + 1)
                cursor.close()
        except sqlite3.Error as exc:
            raise SqlExecutionError(str(exc), str(shard)) from None
        if len(rows) > max_rows:
            raise SqlLimitError("max_rows", max_rows, f"shard {shard} has too many rows")
        return [tuple(r) for r in rows]

    async def read_shards(
        self, keyspace: str, shards: Sequence[int], fragment: Fragment, max_rows: int
    ) -> list[list[Row]]:
        return [await self.read(ShardId(keyspace, i), fragment, max_rows) for i in shards]

    async def read_snapshot(
        self, keyspace: str, shards: Sequence[int], fragment: Fragment, max_rows: int
    ) -> list[list[Row]]:
        return await self.read_shards(keyspace, shards, fragment, max_rows)  # (one thread)

    async def write(
        self,
        keyspace: str,
        batches: Sequence[ShardBatch],
        maintenance: IndexMaintenance | None = None,
    ) -> int:
        """Every batch in a transaction of its shard's database, committed only once all
        ran (all in-process: nothing can fail between the commits but the process); the
        index entries ``maintenance`` makes of the changes, likewise."""
        changed = 0
        begun: dict[ShardId, sqlite3.Connection] = {}
        try:
            captured = []
            for batch in batches:
                conn = self._begin(begun, ShardId(keyspace, batch.shard))
                capture = (maintenance.capture,) if maintenance is not None else ()
                with capturing(conn, capture) as rows:
                    changed += self._run(conn, ShardId(keyspace, batch.shard), batch.statements)
                captured.extend(rows)
            if maintenance is not None:
                for batch in maintenance.batches(captured):
                    shard = ShardId(keyspace, batch.shard)
                    try:
                        self._run(self._begin(begun, shard), shard, batch.statements)
                    except SqlConstraintError as exc:
                        raise maintenance.violation(exc) from None
        except BaseException:
            for conn in begun.values():
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
            raise
        for conn in begun.values():
            conn.execute("COMMIT")
        return changed

    async def fill(
        self,
        keyspace: str,
        shard: int,
        read: Fragment,
        max_rows: int,
        entries: Callable[[list[Row]], list[ShardBatch]],
        *,
        in_flight: int,
    ) -> list[Row]:
        rows = await self.read(ShardId(keyspace, shard), read, max_rows)
        for batch in entries(rows):  # (one at a time: ``in_flight`` is for clusters)
            await self.write(keyspace, [batch])
        return rows

    def _begin(
        self, begun: dict[ShardId, sqlite3.Connection], shard: ShardId
    ) -> sqlite3.Connection:
        conn = begun.get(shard)
        if conn is None:
            conn = begun[shard] = self._conns[shard]
            conn.execute("BEGIN IMMEDIATE")
        return conn

    @staticmethod
    def _run(conn: sqlite3.Connection, shard: ShardId, statements: Sequence[Fragment]) -> int:
        changed = 0
        try:
            for fragment in statements:
                if fragment.rows:
                    changed += conn.executemany(fragment.sql, fragment.rows).rowcount
                else:
                    changed += conn.execute(fragment.sql, dict(fragment.params)).rowcount
        except sqlite3.Error as exc:
            # A broken constraint is told apart, as the cluster's shards do.
            if isinstance(exc, sqlite3.IntegrityError):
                raise SqlConstraintError(str(exc), str(shard)) from None
            raise SqlExecutionError(str(exc), str(shard)) from None
        return changed

    # --- CatalogStore ----------------------------------------------------------------

    async def catalog(self) -> Catalog:
        return self._catalog

    async def change(self, op: CatalogOp) -> Catalog:
        if isinstance(op, SetStats):
            for name in op.rows:
                self._table(self._catalog.tables, name)
            counts = {name: TableStats(rows) for name, rows in op.rows.items()}
            stats = {**self._catalog.stats, **counts}
            self._catalog = dataclasses.replace(self._catalog, stats=stats)
            return self._catalog
        catalog = self._catalog
        old = dict(catalog.tables)
        builds = dict(catalog.index_builds)
        try:
            if isinstance(op, SetIndexState):
                new, builds = index_state(old, catalog.keyspaces, builds, op)
            else:
                self._num += 1
                new = changed_tables(old, catalog.keyspaces, op, self._num)
                builds = building(new, builds)
                if isinstance(op, CreateIndex) and op.index.state == "building":
                    builds[op.index.name] = ()
        except ControllerError as exc:
            raise SqlCatalogError(str(exc)) from None
        for keyspace in catalog.keyspaces:
            statements = schema_changes(old, new, keyspace)
            for shard, conn in self._conns.items():
                if shard.keyspace == keyspace:
                    for statement in statements:
                        conn.execute(statement)
        stats = {name: s for name, s in catalog.stats.items() if name in new}
        self._catalog = Catalog(new, catalog.keyspaces, stats, builds)
        return self._catalog

    @staticmethod
    def _table(tables: Mapping[str, Table], name: str) -> Table:
        if name not in tables:
            raise SqlCatalogError(f"there is no table {name!r}")
        return tables[name]
