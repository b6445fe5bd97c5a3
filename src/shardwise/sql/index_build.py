"""Building a global index on a table that holds rows, online.

``CREATE INDEX ... WITH (scope = 'global')`` commits the index in state ``building``
(``IndexDef.state``): from the configuration that holds it, every shard of the keyspace
has the index's table and a tombstone table, and every write to the base table keeps
the index (a write planned before it is refused by the shards that hold it: its schema
digest differs, and it is planned again); a write that deletes an entry (a row deleted,
or its indexed values changed) also leaves a tombstone of the row on that entry's index
shard. No read uses the index yet. Once every group has applied that configuration (the
catalog store waits for it), each base shard's rows are read in steps of
:data:`BUILD_STEP_ROWS` in rowid order, and each row's entry is written to its index
shard unless the row has an entry (a write made it) or a tombstone there
(``index_tables.backfill_statements``; ``ShardExecutor.fill``). So no step needs a
transaction, and none holds up the writes: a row the step read is either unchanged
(its entry is right), or a write changed it after the read, and then the write either
came first on the index shard (its tombstone stops the stale entry) or second (it
deletes the entry the step made). The steps are paced so that a build leaves most of
the groups' capacity to the clients' load (:data:`BUILD_WRITES_IN_FLIGHT`,
:data:`BUILD_BUSY_SHARE`). The base shards done are recorded every
:data:`PROGRESS_EVERY_S` (``SetIndexState``, ``Configuration.index_builds``), so an
interrupted build (its client gone, its deadline passed) resumes about where it was
when the same ``CREATE INDEX`` runs again; ``DROP INDEX`` drops it instead. When every
shard is done the index becomes ``public`` and the tombstones are dropped.

Why not F1's four states: F1 needs ``delete-only`` because servers on the old schema
still write while others use the new one. Here a shard refuses any statement planned on
another schema than its own, so no shard ever takes a write that ignores an index it
holds: ``building`` is F1's ``write-only``, entered by each shard at one log index.

A UNIQUE index whose rows hold a duplicate fails its build: the index is dropped and the
error names the index.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Final

from shardwise.errors import (
    SqlCatalogError,
    SqlConstraintError,
    SqlLimitError,
    SqlSchemaChangedError,
)
from shardwise.model.config import DropIndex, IndexDef, IndexState, SetIndexState, Table
from shardwise.sql.catalog import Catalog
from shardwise.sql.executor import CatalogStore, Row, ShardExecutor
from shardwise.sql.index_tables import backfill_read, backfill_statements
from shardwise.sql.plans import Fragment, ShardBatch
from shardwise.sql.values import INT64_MIN

PROGRESS_EVERY_S: Final = 2.0
"""How often a build records the base shards it has done (each record is a new
configuration every group applies; a resumed build redoes at most this much)."""

MAX_BUILD_REPLANS: Final = 20
"""Times a build goes on after other DDL in its keyspace changed the tables under it."""

BUILD_STEP_ROWS: Final = 8_000
"""Rows one step of a build reads and indexes: a read, then one write per index shard
(each of about ``BUILD_STEP_ROWS / shards`` entries: large enough that the groups'
cost per entry, not per request, dominates)."""

BUILD_WRITES_IN_FLIGHT: Final = 2
"""Entry writes of a step in flight at once: the step's writes queue behind each other,
not in front of every other client's requests at the groups' leaders."""

BUILD_BUSY_SHARE: Final = 0.3
"""Share of its time a build spends on its steps: after a step that took ``t`` seconds
it rests ``t * (1 / BUILD_BUSY_SHARE - 1)``. The rest follows the groups' load: under a
heavy write load the steps slow down, and the build rests longer, so the load keeps
most of the groups' capacity (the build of 1M rows under 8 writers, measured in
``docs/benchmarks.md``)."""


async def build_index(
    shards: ShardExecutor,
    store: CatalogStore,
    table_name: str,
    index_name: str,
    note: Callable[[str], None] = lambda _: None,
) -> int:
    """Fill in the entries of global index ``index_name`` (being built) and make it
    public; the rows indexed. ``note`` hears of each shard done."""
    catalog = await store.catalog()
    table = catalog.table(table_name)
    index = _index(table, index_name)
    keyspace = catalog.keyspace(table)
    done = set(catalog.index_builds.get(index.name, ()))

    def entries(found: list[Row]) -> list[ShardBatch]:
        return backfill_statements(table, index, keyspace, found)

    def state(name: IndexState, shards: tuple[int, ...] = ()) -> SetIndexState:
        return SetIndexState(
            table.name, index.name, name, table.created_at, shards, index.created_at
        )

    rows = replans = 0
    step_rows = BUILD_STEP_ROWS
    clock = asyncio.get_running_loop().time
    recorded = clock()
    unrecorded: list[int] = []
    for shard in range(keyspace.scheme.shards):
        if shard in done:
            continue
        after = INT64_MIN
        while True:
            read = backfill_read(table, index, after, step_rows)
            if read is None:
                raise SqlCatalogError(f"table {table.name!r} hides its rowid: no global index")
            try:
                step = await _paced_fill(
                    shards, keyspace.name, shard, read, step_rows, entries=entries
                )
            except SqlLimitError:
                if step_rows == 1:
                    raise
                step_rows = max(1, step_rows // 8)  # (wide rows: fewer per step)
                continue
            except SqlSchemaChangedError:
                # Other DDL in the keyspace: go on with the new tables, unless it dropped
                # the index (even if it made another of the name) or its table.
                replans += 1
                latest = await store.catalog()
                table = latest.tables.get(table_name, table)
                if replans > MAX_BUILD_REPLANS or not _building(latest, table_name, index):
                    raise SqlCatalogError(
                        f"index {index_name!r} was dropped, or its table changed, during its build"
                    ) from None
                continue
            except SqlConstraintError as exc:
                await store.change(DropIndex(table.name, index.name))
                raise SqlConstraintError(
                    f"could not create unique index {index.name!r}: table {table.name!r} "
                    f"holds rows with equal {', '.join(index.columns)} (the index was dropped)",
                    exc.shard,
                ) from None
            rows += len(step)
            if len(step) < step_rows:
                break
            last = step[-1][0]
            assert isinstance(last, int)
            after = last
        note(f"index {index.name!r}: shard {shard} of {keyspace.scheme.shards} indexed")
        unrecorded.append(shard)
        if clock() - recorded >= PROGRESS_EVERY_S:
            await store.change(state("building", tuple(unrecorded)))
            recorded, unrecorded = clock(), []
    await store.change(state("public"))
    return rows


async def _paced_fill(
    shards: ShardExecutor,
    keyspace: str,
    shard: int,
    read: Fragment,
    step_rows: int,
    *,
    entries: Callable[[list[Row]], list[ShardBatch]],
) -> list[Row]:
    """One step, then its rest (:data:`BUILD_BUSY_SHARE`)."""
    clock = asyncio.get_running_loop().time
    began = clock()
    step = await shards.fill(
        keyspace, shard, read, step_rows, entries, in_flight=BUILD_WRITES_IN_FLIGHT
    )
    await asyncio.sleep((clock() - began) * (1 / BUILD_BUSY_SHARE - 1))
    return step


def _building(catalog: Catalog, table_name: str, index: IndexDef) -> bool:
    """Whether ``index`` itself (not another made since under its name) is still being
    built."""
    table = catalog.tables.get(table_name)
    now = next((i for i in table.indexes if i.name == index.name), None) if table else None
    return now is not None and now.state == "building" and now.created_at == index.created_at


def _index(table: Table, name: str) -> IndexDef:
    for index in table.indexes:
        if index.name == name:
            return index
    raise SqlCatalogError(f"table {table.name!r} has no index {name!r}")
