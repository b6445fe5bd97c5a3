"""The planner's front door: SQL text and parameters in, a plan out. Pure: no I/O, no
clock, no randomness except what the :class:`StatementContext` carries."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from sqlglot import exp

from shardwise.errors import SqlLimitError, SqlSemanticError, UnsupportedSqlError
from shardwise.sql import plan_cache, statement_cache
from shardwise.sql.broadcast import plan_broadcast
from shardwise.sql.catalog import Catalog
from shardwise.sql.colocated import plan_colocated
from shardwise.sql.ddl import plan_ddl
from shardwise.sql.determinism import Determinizer, StatementContext
from shardwise.sql.join_plan import is_multi_table, plan_multi
from shardwise.sql.param_insert import plan_shaped_insert
from shardwise.sql.params import Params, bind
from shardwise.sql.parse import MAX_NESTING_DEPTH
from shardwise.sql.plans import InsertSelectPlan, JoinPlan, Plan, ReadPlan
from shardwise.sql.repartition import plan_repartition
from shardwise.sql.select_bind import bind_select
from shardwise.sql.select_plan import plan_select
from shardwise.sql.stats import plan_analyze
from shardwise.sql.values import SqlValue
from shardwise.sql.writes import insert_target, plan_insert, plan_update_delete

_STATEMENT_NAMES: Final[dict[str, str]] = {
    "TruncateTable": "TRUNCATE",
    "Union": "UNION",
    "Except": "EXCEPT",
    "Intersect": "INTERSECT",
    "Merge": "MERGE",
    "Transaction": "this form of BEGIN (write BEGIN alone, in a session)",
    "Commit": "this form of COMMIT (write COMMIT alone, in a session)",
    "Rollback": "this form of ROLLBACK (write ROLLBACK alone, in a session)",
    "Use": "USE",
    "Set": "SET",
    "Pragma": "PRAGMA",
}


@dataclass(frozen=True, slots=True)
class Planned:
    plan: Plan
    explain: bool
    analyze: bool = False


def plan(
    sql: str,
    params: Params | None,
    catalog: Catalog,
    context: StatementContext,
) -> Planned:
    try:
        return plan_cache.PLANS.plan(
            sql, params, catalog, lambda: _plan(sql, params, catalog, context)
        )
    except RecursionError:
        # MAX_NESTING_DEPTH bounds parentheses and CASE; long chains of unary operators
        # nest too, and reach Python's recursion limit first: the same refusal.
        raise SqlLimitError(
            "MAX_NESTING_DEPTH", MAX_NESTING_DEPTH, "the statement nests too deeply"
        ) from None


def _plan(
    sql: str,
    params: Params | None,
    catalog: Catalog,
    context: StatementContext,
) -> Planned:
    known = statement_cache.kept(sql)
    if known.insert is not None:  # (the bulk path: no tree copied or walked per row)
        placed = plan_shaped_insert(known.insert, params, catalog)
        if placed is not None:
            return Planned(placed, explain=False)
    parsed = known.parsed or statement_cache.parse(sql)
    bound = bind(parsed.statement, params)
    statement, values = bound.statement, bound.values
    fixer = Determinizer(context)
    result: Plan
    if isinstance(statement, exp.Select):
        result = _plan_read(statement, catalog, values, fixer, parsed.select_heads)
    elif isinstance(statement, exp.Insert) and isinstance(statement.expression, exp.Select):
        scope, columns = insert_target(statement, catalog)
        read = _plan_read(statement.expression, catalog, values, fixer, ())
        if None not in read.columns and len(read.columns) != len(columns):
            raise SqlSemanticError(
                f"the SELECT gives {len(read.columns)} columns for {len(columns)} in the INSERT"
            )
        result = InsertSelectPlan(
            scope.table.name, tuple(columns), read, reference=scope.table.is_reference
        )
    elif isinstance(statement, exp.Insert):
        result = plan_insert(statement, catalog, values, fixer)
    elif isinstance(statement, exp.Update | exp.Delete):
        result = plan_update_delete(statement, catalog, values, fixer)
    elif isinstance(statement, exp.Create | exp.Drop | exp.Alter):
        if values:
            raise UnsupportedSqlError("parameters in DDL")
        result = plan_ddl(statement, catalog)
    elif isinstance(statement, exp.Analyze):
        result = plan_analyze(statement, catalog)
    else:
        name = type(statement).__name__
        raise UnsupportedSqlError(_STATEMENT_NAMES.get(name, name.upper()))
    if parsed.analyze and not isinstance(result, ReadPlan | JoinPlan):
        raise UnsupportedSqlError(
            "EXPLAIN ANALYZE of anything but a SELECT", "it runs the statement: use EXPLAIN"
        )
    return Planned(result, parsed.explain, parsed.analyze)


def _plan_read(
    statement: exp.Select,
    catalog: Catalog,
    values: dict[str, SqlValue],
    fixer: Determinizer,
    heads: Sequence[str],
) -> ReadPlan | JoinPlan:
    fixed = fixer.fix(statement, "read")
    values.update(fixer.values)
    assert isinstance(fixed, exp.Select)
    if is_multi_table(fixed):
        colocated = plan_colocated(fixed, catalog, values, heads=heads, written=statement)
        if colocated is not None:
            return colocated
        join = plan_multi(fixed, catalog, values, heads=heads, written=statement)
        broadcast = plan_broadcast(fixed, catalog, values, join, heads=heads, written=statement)
        parts = plan_repartition(fixed, catalog, values, join, heads=heads, written=statement)
        if broadcast is not None:  # (too many rows to ship: the repartition join, if any)
            return dataclasses.replace(
                join, strategy="broadcast", broadcast=broadcast, repartition=parts
            )
        if parts is not None:
            return dataclasses.replace(join, strategy="repartition", repartition=parts)
        return join
    bound_select = bind_select(fixed, catalog, values, heads=heads, written=statement)
    return plan_select(bound_select, catalog, values)
