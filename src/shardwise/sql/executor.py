"""The seams between the coordinator and the cluster: what a cluster must provide.

:class:`ShardExecutor` runs fragments on shards: a read on the shard's SQLite file after a
linearizable read barrier (ReadIndex), a write batch through the shard's group log as one
entry applied in one SQLite transaction, and the batches of a write to several shards
together, as one transaction. :class:`CatalogStore` reads and changes the
controller's catalog. :class:`~shardwise.sql.local.LocalShards` is the in-process
implementation of both (tests, the in-process cluster).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from shardwise.model.config import ShardId
from shardwise.sql.catalog import Catalog
from shardwise.sql.plans import CatalogOp, Fragment, ShardBatch
from shardwise.sql.values import SqlValue

Row = tuple[SqlValue, ...]


class ShardExecutor(Protocol):
    async def read(self, shard: ShardId, fragment: Fragment, max_rows: int) -> list[Row]:
        """The rows of ``fragment`` on ``shard``, linearizable for that shard.

        More than ``max_rows`` rows: raise :class:`~shardwise.errors.SqlLimitError`
        (stop reading, do not ship them). A SQLite error: raise
        :class:`~shardwise.errors.SqlExecutionError` naming the shard.
        """
        ...

    async def read_shards(
        self, keyspace: str, shards: Sequence[int], fragment: Fragment, max_rows: int
    ) -> list[list[Row]]:
        """:meth:`read` on each of ``shards`` of ``keyspace`` (their rows in that order),
        in as few rounds as the executor can."""
        ...

    async def write(self, keyspace: str, batches: Sequence[ShardBatch]) -> int:
        """Apply every batch (its statements, on its shard of ``keyspace``) atomically:
        all of them or none, across shards too, and return the number of rows they
        changed. A failure raises the error of the batch that failed (a
        :class:`~shardwise.errors.SqlExecutionError` naming its shard, a limit)."""
        ...


class CatalogStore(Protocol):
    async def catalog(self) -> Catalog:
        """The catalog as of the latest configuration this node knows."""
        ...

    async def change(self, op: CatalogOp) -> Catalog:
        """Commit ``op`` through the controller; return the catalog that includes it once
        the keyspace's shards have created the schema it implies."""
        ...
