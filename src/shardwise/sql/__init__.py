"""Distributed SQL over shardwise's shards: a pure planner and a coordinator.

* :func:`plan` (pure): SQL text and parameters against a :class:`Catalog` -> a plan
  (:class:`ReadPlan`, :class:`WritePlan`, :class:`CatalogPlan`); :func:`explain` prints it.
* :class:`Coordinator`: ``await execute(sql, params) -> Result`` over a
  :class:`ShardExecutor` and a :class:`CatalogStore` (the cluster's, or
  :class:`LocalShards` in process).
* :func:`register_functions`: the SQL functions every shard's SQLite needs.

``docs/sql.md`` is the user guide; ``DESIGN.md`` here explains the planner.
"""

from shardwise.sql.catalog import Catalog, ColumnSpec, physical_name
from shardwise.sql.coordinator import EXPLAIN_COLUMN, Coordinator, Result
from shardwise.sql.determinism import StatementContext
from shardwise.sql.executor import CatalogStore, ShardExecutor
from shardwise.sql.explain import explain
from shardwise.sql.functions import register as register_functions
from shardwise.sql.local import LocalShards
from shardwise.sql.merge import MergeLimits
from shardwise.sql.plan import (
    CatalogOp,
    CatalogPlan,
    Fragment,
    Plan,
    ReadPlan,
    ShardBatch,
    WritePlan,
)
from shardwise.sql.planner import Planned, plan
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
