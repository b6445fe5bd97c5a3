"""The catalog a cluster client plans SQL with: :class:`ClusterCatalog`, a
:class:`~shardwise.sql.executor.CatalogStore` that reads the router's cached
configuration and changes it through the controller (see ``client/sql.py`` for how a
statement's requests carry the configuration it was planned with)."""

from __future__ import annotations

import asyncio
from typing import Final

from shardwise.client.router import ShardRouter
from shardwise.errors import (
    CatalogError,
    ClientTimeoutError,
    SqlCatalogError,
    UnknownKeyspaceError,
)
from shardwise.model.config import NO_GROUP, Configuration, CreateTable, DropTable, SetStats
from shardwise.net.leader import CallDeadline
from shardwise.net.loop import gather_or_cancel
from shardwise.shardserver.protocol import SQL_SCHEMA, SqlSchemaRequest, schema_digest
from shardwise.sql import Catalog
from shardwise.sql.catalog import catalog_of
from shardwise.sql.plans import CatalogOp

DDL_POLL_S: Final = 0.05
"""Pause between looks at whether a group has applied a DDL statement's configuration."""


class ClusterCatalog:
    """The catalog of the router's configuration; changes through the controller."""

    def __init__(self, router: ShardRouter, call: CallDeadline) -> None:
        self._router = router
        self._call = call
        self._planned: Configuration | None = None
        self._digests: dict[str, int] = {}

    async def catalog(self) -> Catalog:
        config = await self._router.configuration_at_least(-1, self._call)
        if self._planned is None or config.num != self._planned.num:
            self._digests.clear()  # (asked again during a statement: an index build)
        self._planned = config
        return catalog_of(config)

    @property
    def planned_num(self) -> int | None:
        """The configuration the statement was planned with (None: not planned yet)."""
        return None if self._planned is None else self._planned.num

    def table_names(self) -> list[str]:
        """The tables of the catalog the statement was planned with (a shard's error names
        them by their physical names, which the user never wrote)."""
        return [] if self._planned is None else list(self._planned.tables)

    def planned(self, keyspace: str) -> tuple[int, int]:
        """The configuration the statement was planned with, and the digest of
        ``keyspace``'s tables in it: what every request of the statement carries."""
        config = self._planned
        assert config is not None, "a statement is planned before it runs"
        digest = self._digests.get(keyspace)
        if digest is None:
            digest = self._digests[keyspace] = schema_digest(config.tables, keyspace)
        return config.num, digest

    async def change(self, op: CatalogOp) -> Catalog:
        router, call = self._router, self._call
        keyspace = self._keyspace_of(op)
        remaining = call.remaining()
        if remaining <= 0:
            raise call.timed_out()
        try:
            result = await router.controller.change(op, deadline_s=remaining)
        except (CatalogError, UnknownKeyspaceError) as exc:
            # Another client changed the catalog since ours was read (e.g. created the
            # same table first): the controller's check is the one that counts.
            raise SqlCatalogError(str(exc)) from None
        config = await router.configuration_at_least(result.num, call)
        if isinstance(op, SetStats):
            return catalog_of(config)  # (no shard changes anything)
        owners = config.owners.get(keyspace, ())
        gids = sorted({gid for gid in owners if gid != NO_GROUP})
        await gather_or_cancel([self._applied_by(gid, result.num, keyspace) for gid in gids])
        return catalog_of(config)

    def _keyspace_of(self, op: CatalogOp) -> str:
        if isinstance(op, CreateTable):
            return op.table.keyspace
        if isinstance(op, SetStats):
            return ""
        name = op.name if isinstance(op, DropTable) else op.table
        assert self._planned is not None
        table = self._planned.tables.get(name)
        if table is None:
            raise SqlCatalogError(f"there is no table {name!r}")
        return table.keyspace

    async def _applied_by(self, gid: int, num: int, keyspace: str) -> None:
        """Return once group ``gid`` has applied configuration ``num`` (a ReadIndex read
        on its leader: applied there means committed in the group's log, so every later
        read or write of the group comes after it)."""
        router, call = self._router, self._call
        request = SqlSchemaRequest(keyspace)
        while True:
            router.check_running()
            if not router.knows_group(gid):
                return  # the group left in a newer configuration: nothing to wait for
            reply = await router.call_group(gid, SQL_SCHEMA, request, call)
            if reply is not None and reply.status == "ok" and reply.config_num >= num:
                return
            remaining = call.remaining()
            if remaining <= 0:
                raise ClientTimeoutError(
                    f"{call.what} was committed (configuration {num}), but group {gid} had "
                    f"not applied it within {call.budget_s} s; statements on its shards "
                    "wait until it has"
                )
            call.why = f"group {gid} has yet to apply configuration {num}"
            await asyncio.sleep(min(DDL_POLL_S, remaining))
