"""Distributed SQL over shardwise's shards: a pure planner and a coordinator.

* :func:`plan` (pure): SQL text and parameters against a :class:`Catalog` -> a plan
  (:class:`ReadPlan`, :class:`WritePlan`, :class:`CatalogPlan`); :func:`explain` prints it.
* :class:`Coordinator`: ``await execute(sql, params) -> Result`` over a
  :class:`ShardExecutor` and a :class:`CatalogStore` (the cluster's, or
  :class:`LocalShards` in process).
* :func:`register_functions`: the SQL functions every shard's SQLite needs.

``docs/sql.md`` is the user guide; ``DESIGN.md`` here explains the planner.

The names are imported on first use, so that a module of this package (the shard side
imports ``values``, ``catalog`` and ``shard_schema``) loads without the parser.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from shardwise.sql.catalog import Catalog, ColumnSpec, physical_name
    from shardwise.sql.coordinator import EXPLAIN_COLUMN, Coordinator, Result
    from shardwise.sql.determinism import StatementContext
    from shardwise.sql.executor import CatalogStore, ShardExecutor
    from shardwise.sql.functions import register as register_functions
    from shardwise.sql.local import LocalShards
    from shardwise.sql.merge import MergeLimits
    from shardwise.sql.plan_text import explain
    from shardwise.sql.planner import Planned, plan
    from shardwise.sql.plans import (
        CatalogOp,
        CatalogPlan,
        Fragment,
        Plan,
        ReadPlan,
        ShardBatch,
        WritePlan,
    )
    from shardwise.sql.shard_schema import create_table_ddl, schema_changes

__all__ = [
    "EXPLAIN_COLUMN",
    "Catalog",
    "CatalogOp",
    "CatalogPlan",
    "CatalogStore",
    "ColumnSpec",
    "Coordinator",
    "Fragment",
    "LocalShards",
    "MergeLimits",
    "Plan",
    "Planned",
    "ReadPlan",
    "Result",
    "ShardBatch",
    "ShardExecutor",
    "StatementContext",
    "WritePlan",
    "create_table_ddl",
    "explain",
    "physical_name",
    "plan",
    "register_functions",
    "schema_changes",
]

_LAZY: dict[str, tuple[str, str]] = {
    "Catalog": ("shardwise.sql.catalog", "Catalog"),
    "CatalogOp": ("shardwise.sql.plans", "CatalogOp"),
    "CatalogPlan": ("shardwise.sql.plans", "CatalogPlan"),
    "CatalogStore": ("shardwise.sql.executor", "CatalogStore"),
    "ColumnSpec": ("shardwise.sql.catalog", "ColumnSpec"),
    "Coordinator": ("shardwise.sql.coordinator", "Coordinator"),
    "EXPLAIN_COLUMN": ("shardwise.sql.coordinator", "EXPLAIN_COLUMN"),
    "Fragment": ("shardwise.sql.plans", "Fragment"),
    "LocalShards": ("shardwise.sql.local", "LocalShards"),
    "MergeLimits": ("shardwise.sql.merge", "MergeLimits"),
    "Plan": ("shardwise.sql.plans", "Plan"),
    "Planned": ("shardwise.sql.planner", "Planned"),
    "ReadPlan": ("shardwise.sql.plans", "ReadPlan"),
    "Result": ("shardwise.sql.coordinator", "Result"),
    "ShardBatch": ("shardwise.sql.plans", "ShardBatch"),
    "ShardExecutor": ("shardwise.sql.executor", "ShardExecutor"),
    "StatementContext": ("shardwise.sql.determinism", "StatementContext"),
    "WritePlan": ("shardwise.sql.plans", "WritePlan"),
    "create_table_ddl": ("shardwise.sql.shard_schema", "create_table_ddl"),
    "explain": ("shardwise.sql.plan_text", "explain"),
    "physical_name": ("shardwise.sql.catalog", "physical_name"),
    "plan": ("shardwise.sql.planner", "plan"),
    "register_functions": ("shardwise.sql.functions", "register"),
    "schema_changes": ("shardwise.sql.shard_schema", "schema_changes"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module, attribute = _LAZY[name]
        value = getattr(importlib.import_module(module), attribute)
        globals()[name] = value  # once loaded, a plain attribute
        return value
    raise AttributeError(f"module 'shardwise.sql' has no attribute {name!r}")
