"""Table statistics: ``ANALYZE`` and the rows a plan expects to read.

``ANALYZE [t, ...]`` (every table when none is named) counts each table's rows with a
``count(*)`` read, planned as any read (every shard of a distributed table, one copy of
a reference table), and records the counts in the controller's configuration
(:class:`~shardwise.model.config.SetStats`, kept beside the catalog, not in it: a new
count changes no table). As in PostgreSQL, nothing counts rows as they are written; the
counts are as fresh as the last ``ANALYZE``.

Plans carry what they expect from the counts (:meth:`Catalog.expected_rows`): the rows a
stage reads on the shards it visits, assuming a table's rows spread evenly over its
shards. ``EXPLAIN`` prints them next to each stage; ``EXPLAIN ANALYZE`` adds what the
stage did read and send. (Broadcast and repartition joins, not built yet, are to be
chosen by them.)
"""

from __future__ import annotations

from typing import Final

from sqlglot import exp

from shardwise.errors import SqlLimitError, UnsupportedSqlError
from shardwise.sql.bind import check_table
from shardwise.sql.catalog import Catalog
from shardwise.sql.dialect import table_node
from shardwise.sql.plans import AnalyzePlan, ReadPlan
from shardwise.sql.select_bind import bind_select
from shardwise.sql.select_plan import plan_select

MAX_ANALYZE_TABLES: Final = 256
"""Tables one ``ANALYZE`` counts (one read each, run one after another)."""


def plan_analyze(statement: exp.Analyze, catalog: Catalog) -> AnalyzePlan:
    for key, value in statement.args.items():
        if value and key != "tables":
            raise UnsupportedSqlError(f"ANALYZE with {key.upper()}", "write ANALYZE [table, ...]")
    nodes = statement.args.get("tables") or []
    for node in nodes:
        if not isinstance(node, exp.Table) or not isinstance(node.this, exp.Identifier):
            raise UnsupportedSqlError("ANALYZE of anything but tables")
        check_table(node)
    names = list(dict.fromkeys(n.name for n in nodes)) or sorted(catalog.tables)
    if len(names) > MAX_ANALYZE_TABLES:
        raise SqlLimitError(
            "MAX_ANALYZE_TABLES", MAX_ANALYZE_TABLES, "too many tables in one ANALYZE: name them"
        )
    reads: list[ReadPlan] = []
    for name in names:
        catalog.table(name)  # (raises if there is none)
        count = exp.select(exp.Count(this=exp.Star())).from_(table_node(name))
        read = plan_select(bind_select(count, catalog, {}), catalog, {})
        reads.append(read)
    created = tuple(catalog.table(name).created_at for name in names)
    return AnalyzePlan(tuple(names), tuple(reads), created)
