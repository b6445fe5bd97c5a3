"""The seams between the coordinator and the cluster: what a cluster must provide.

:class:`ShardExecutor` runs fragments on shards: a read on the shard's SQLite file after a
linearizable read barrier (ReadIndex), a write batch through the shard's group log as one
entry applied in one SQLite transaction, and the batches of a write to several shards
together, as one transaction. :class:`CatalogStore` reads and changes the
controller's catalog. :class:`~shardwise.sql.local.LocalShards` is the in-process
implementation of both (tests, the in-process cluster).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Protocol

from shardwise.model.config import ShardId
from shardwise.sql.catalog import Catalog
from shardwise.sql.plans import CatalogOp, Fragment, ShardBatch
from shardwise.sql.values import SqlValue

if TYPE_CHECKING:
    from shardwise.sql.index_tables import IndexMaintenance

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

    async def read_snapshot(
        self, keyspace: str, shards: Sequence[int], fragment: Fragment, max_rows: int
    ) -> list[list[Row]]:
        """:meth:`read_shards`, every shard's rows as of one moment (the shards of a
        lookup through a global index: a row whose entry moves between two of them must
        be seen once, neither twice nor never)."""
        ...

    async def write(
        self,
        keyspace: str,
        batches: Sequence[ShardBatch],
        maintenance: IndexMaintenance | None = None,
    ) -> int:
        """Apply every batch (its statements, on its shard of ``keyspace``) atomically:
        all of them or none, across shards too, and return the number of rows they
        changed. A failure raises the error of the batch that failed (a
        :class:`~shardwise.errors.SqlExecutionError` naming its shard, a limit).

        With ``maintenance`` (the table has global indexes), the rows the batches change
        are recorded as they run (``maintenance.capture``) and the index entries
        ``maintenance.batches`` makes of them are written in the same transaction."""
        ...

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
        """Read ``read`` on ``shard``, then write each batch of ``entries(rows)``, each
        on its own, at most ``in_flight`` at once (not atomically, outside any
        transaction the executor is part of): a step of a global index's build, whose
        entry writes are idempotent and need no validation
        (``index_tables.backfill_statements``). The rows read."""
        ...


class CatalogStore(Protocol):
    async def catalog(self) -> Catalog:
        """The catalog as of the latest configuration this node knows."""
        ...

    async def change(self, op: CatalogOp) -> Catalog:
        """Commit ``op`` through the controller; return the catalog that includes it once
        the keyspace's shards have created the schema it implies."""
        ...
