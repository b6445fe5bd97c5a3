"""SELECT: prune shards, choose what to push down, describe the merge.

Four strategies, from the most work on the shards to the least:

1. **single-shard**: the WHERE clause pins one shard; the whole query runs there.
2. **grouped-by-distribution**: GROUP BY includes the distribution column, so every group
   lives on one shard; shards run the whole aggregation (HAVING too) and the coordinator
   only merges rows, as for (3).
3. **scatter-rows**: no aggregation. Shards filter and project (``DISTINCT`` too); with
   ORDER BY each sends its rows sorted, at most LIMIT+OFFSET of them, and the coordinator
   k-way merges the sorted streams.
4. **partial-aggregates**: shards group and compute partial states
   (:mod:`shardwise.sql.aggregates`); the coordinator combines them per group, then runs
   the rest of the query (expressions over aggregates, HAVING, DISTINCT, ORDER BY, LIMIT)
   over the merged groups in its own SQLite, so those follow SQLite's semantics exactly.
   LIMIT is not pushed down here: a shard cannot know which groups will make the cut.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from sqlglot import exp

from shardwise.errors import SqlSemanticError
from shardwise.sql import index_plan
from shardwise.sql.aggregates import (
    Aggregate,
    classify,
    is_aggregate,
    partials,
    shard_function,
)
from shardwise.sql.bind import Scope, has_aggregate
from shardwise.sql.catalog import Catalog, affinity, physical_name
from shardwise.sql.dialect import to_sqlite, to_text
from shardwise.sql.distribution import Router
from shardwise.sql.index_tables import INDEX_TABLE_PREFIX
from shardwise.sql.ordering import SortKey
from shardwise.sql.plans import (
    AggregateMerge,
    Fragment,
    IndexLookup,
    LocalEval,
    Merge,
    PartialAggregate,
    ReadPlan,
    RowMerge,
    Strategy,
)
from shardwise.sql.pruning import Pruner
from shardwise.sql.select_bind import BoundSelect, OrderTerm
from shardwise.sql.values import INT64_MAX, SqlValue

MERGED_TABLE = "_sw_merged"
REFERENCE_COPY = 0
"""The shard whose copy of a reference table a read of it alone reads (each holds all)."""
LIMIT_PARAM = "sw_limit"
OFFSET_PARAM = "sw_offset"


def plan_select(bound: BoundSelect, catalog: Catalog, values: Mapping[str, SqlValue]) -> ReadPlan:
    scope = bound.scope
    if scope is None:
        query = _assemble(bound, list(bound.outputs), None, values, with_limit=True)
        return ReadPlan(bound.names, "local", LocalEval(query))
    if bound.aggregated:
        _check_grouping(bound)
    if bound.limit == 0:
        # SQLite reads nothing for LIMIT 0 (so not even an overflowing SUM fails).
        nothing = ", ".join("NULL" for _ in bound.names) or "NULL"
        return ReadPlan(bound.names, "local", LocalEval(Fragment(f"SELECT {nothing} LIMIT 0")))
    keyspace = catalog.keyspace(scope.table)
    router = Router(keyspace)
    pruned, why = _pruned(bound, router, values)
    choice = index_plan.choose(bound, catalog, values, router, pruned)
    if choice is not None and choice.covering is not None:
        covering = plan_select(choice.covering, catalog, values)
        return dataclasses.replace(covering, index=choice.index.name)
    shards = sorted(router.all_shards() if pruned is None else pruned)
    if not shards:
        shards = [0]  # a contradiction: any one shard answers (with no rows) as well
    expected: tuple[tuple[str, int | None], ...] = ()  # (a co-located join: colocated.py's)
    if scope.source is None:
        rows = catalog.expected_rows(scope.table, len(shards), router.shard_count)
        expected = ((scope.table.name, rows),)

    lookup = None
    if choice is not None and choice.lookup is not None:
        lookup = IndexLookup(
            choice.index.name,
            plan_select(choice.lookup, catalog, values),
            keyspace,
            scope.spec(scope.table.distribution_column).affinity,
            index_plan.MAX_INDEX_MATCHES,
        )

    def read(strategy: Strategy, merge: Merge, fragment: Fragment) -> ReadPlan:
        return ReadPlan(
            bound.names,
            strategy,
            merge,
            table=scope.label or scope.table.name,
            keyspace=keyspace.name,
            shards=tuple(shards),
            shard_count=router.shard_count,
            fragment=fragment,
            pruned_by=why,
            expected=expected,
            lookup=lookup,
        )

    if len(shards) == 1:
        fragment = _assemble(bound, list(bound.outputs), scope, values, with_limit=True)
        return read("single-shard", RowMerge(width=len(bound.names)), fragment)
    key = scope.table.distribution_column
    grouped_by_key = any(isinstance(g, exp.Column) and g.name == key for g in bound.group)
    if not bound.aggregated or grouped_by_key:
        fragment, merge = _scatter_rows(bound, scope, values)
        return read(
            "grouped-by-distribution" if bound.aggregated else "scatter-rows", merge, fragment
        )
    fragment, aggregate_merge = _partial_aggregates(bound, scope, values)
    return read("partial-aggregates", aggregate_merge, fragment)


def _pruned(
    bound: BoundSelect, router: Router, values: Mapping[str, SqlValue]
) -> tuple[frozenset[int] | set[int] | None, str]:
    """The shards that can hold matching rows (None: all of them), and why."""
    scope = bound.scope
    assert scope is not None
    if scope.table.is_reference:
        return {REFERENCE_COPY}, "a reference table: one copy holds every row"
    column = scope.spec(scope.table.distribution_column)
    pruned = Pruner(column.name, column.affinity, router, values).shards(bound.where)
    kind = "indexed" if scope.table.name.startswith(INDEX_TABLE_PREFIX) else "distribution"
    why = "" if pruned is None else f"WHERE on {kind} column {column.name}"
    for alike in scope.distributed_alike:  # (a co-located join's other tables)
        spec = scope.spec(alike)
        narrower = Pruner(alike, spec.affinity, router, values).shards(bound.where)
        if narrower is not None:
            pruned = narrower if pruned is None else pruned & narrower
            why = f"{why}{', ' if why else 'WHERE on distribution column '}{alike}"
    return pruned, why


# --- assembling SQL --------------------------------------------------------------------


def _source(scope: Scope) -> exp.Expr:
    if scope.source is not None:
        return scope.source.copy()
    return exp.Table(
        this=exp.to_identifier(physical_name(scope.table.name), quoted=True),
        alias=exp.TableAlias(this=exp.to_identifier(scope.alias, quoted=True)),
    )


def fragment(
    tree: exp.Expr, values: Mapping[str, SqlValue], *, backticks: bool = False
) -> Fragment:
    """``tree`` as SQLite text with the parameters it uses (``backticks``: see
    :func:`~shardwise.sql.dialect.to_sqlite`)."""
    used = {str(p.this) for p in tree.find_all(exp.Placeholder) if p.this}
    return Fragment(to_sqlite(tree, backticks=backticks), {k: values[k] for k in sorted(used)})


def _assemble(
    bound: BoundSelect,
    columns: list[exp.Expr],
    scope: Scope | None,
    values: Mapping[str, SqlValue],
    *,
    with_limit: bool,
    limit: int | None = None,
    group: bool = True,
    order: list[exp.Expr] | None = None,
) -> Fragment:
    """One SELECT for shards (or the coordinator) over the bound parts."""
    select = exp.Select(expressions=[shard_function(c) for c in columns])
    if bound.distinct:
        select.set("distinct", exp.Distinct())
    if scope is not None:
        select.set("from_", exp.From(this=_source(scope)))
    if bound.where is not None:
        select.set("where", exp.Where(this=shard_function(bound.where)))
    if group and bound.group:
        select.set("group", exp.Group(expressions=[g.copy() for g in bound.group]))
    if group and bound.having is not None:
        select.set("having", exp.Having(this=shard_function(bound.having)))
    terms = order if order is not None else _order_by(bound.order, bound)
    if terms:
        select.set("order", exp.Order(expressions=terms))
    params = dict(values)
    count = limit if limit is not None else (bound.limit if with_limit else None)
    if count is not None:
        params[LIMIT_PARAM] = count
        select.set("limit", exp.Limit(expression=exp.Placeholder(this=LIMIT_PARAM)))
    if with_limit and limit is None and bound.offset:
        if count is None:
            params[LIMIT_PARAM] = -1  # SQLite: OFFSET needs a LIMIT; -1 is none
            select.set("limit", exp.Limit(expression=exp.Placeholder(this=LIMIT_PARAM)))
        params[OFFSET_PARAM] = bound.offset
        select.set("offset", exp.Offset(expression=exp.Placeholder(this=OFFSET_PARAM)))
    return fragment(select, params)


def _ordered(node: exp.Expr, term: OrderTerm) -> exp.Ordered:
    return exp.Ordered(this=node, desc=term.descending, nulls_first=term.nulls_first)


def _order_by(terms: tuple[OrderTerm, ...], bound: BoundSelect) -> list[exp.Expr]:
    """ORDER BY items: a select-list position when the term is an output (exact, and an
    output that is an integer literal is not mistaken for a position), else the term."""
    items: list[exp.Expr] = []
    for term in terms:
        index = bound.output_index(term.expression)
        node = (
            exp.Literal.number(index + 1) if index is not None else shard_function(term.expression)
        )
        items.append(_ordered(node, term))
    return items


# --- scatter rows ----------------------------------------------------------------------


def _scatter_rows(
    bound: BoundSelect, scope: Scope, values: Mapping[str, SqlValue]
) -> tuple[Fragment, RowMerge]:
    columns = list(bound.outputs)
    keys: list[SortKey] = []
    order: list[exp.Expr] = []
    for term in bound.order:
        index = bound.output_index(term.expression)
        if index is None:  # a hidden column carries the sort key to the coordinator
            index = len(columns)
            columns.append(
                exp.Alias(this=term.expression.copy(), alias=exp.to_identifier(f"_sw_k{index}"))
            )
        keys.append(SortKey(index, term.descending, term.nulls_first))
        order.append(_ordered(exp.Literal.number(index + 1), term))
    # LIMIT + OFFSET can pass 64 bits; a shard holds fewer rows than INT64_MAX anyway.
    wanted = None if bound.limit is None else min(bound.limit + bound.offset, INT64_MAX)
    fragment = _assemble(bound, columns, scope, values, with_limit=False, limit=wanted, order=order)
    merge = RowMerge(
        width=len(bound.outputs),
        sort=tuple(keys),
        distinct=bound.distinct,
        offset=bound.offset,
        limit=bound.limit,
    )
    return fragment, merge


# --- partial aggregates ----------------------------------------------------------------


def _check_grouping(bound: BoundSelect) -> None:
    rewrite = _Rewriter(bound.group, [])
    for node in (*bound.outputs, *(t.expression for t in bound.order)):
        rewrite.check(node)
    if bound.having is not None:
        rewrite.check(bound.having)


class _Rewriter:
    """Rewrites expressions over groups into expressions over the merged table: a group
    key becomes ``_sw_g<i>``, an aggregate ``_sw_a<j>``; a column that is neither is an
    error, as in PostgreSQL."""

    def __init__(self, group: tuple[exp.Expr, ...], aggregates: list[Aggregate]) -> None:
        self.group = group
        self.aggregates = aggregates

    def aggregate_index(self, node: exp.Expr) -> int:
        for i, known in enumerate(self.aggregates):
            if known.node == node:
                return i
        self.aggregates.append(classify(node))
        return len(self.aggregates) - 1

    def check(self, node: exp.Expr) -> None:
        self.rewrite(node)

    def rewrite(self, node: exp.Expr) -> exp.Expr:
        for i, key in enumerate(self.group):
            if node == key:
                return exp.column(f"_sw_g{i}")
        if is_aggregate(node):
            return exp.column(f"_sw_a{self.aggregate_index(node)}")
        if isinstance(node, exp.Column):
            raise SqlSemanticError(
                f"column {node.name!r} must appear in the GROUP BY clause or be used in an "
                "aggregate function"
            )
        copy = node.copy()
        for arg, value in node.args.items():
            if isinstance(value, exp.Expr):
                copy.set(arg, self.rewrite(value))
            elif isinstance(value, list):
                copy.set(
                    arg,
                    [self.rewrite(v) if isinstance(v, exp.Expr) else v for v in value],
                )
        return copy


def _partial_aggregates(
    bound: BoundSelect, scope: Scope, values: Mapping[str, SqlValue]
) -> tuple[Fragment, AggregateMerge]:
    rewriter = _Rewriter(bound.group, [])
    final_outputs: list[exp.Expr] = [
        exp.Alias(this=rewriter.rewrite(o), alias=exp.to_identifier(f"_sw_o{i}"))
        for i, o in enumerate(bound.outputs)
    ]
    final_having = rewriter.rewrite(bound.having) if bound.having is not None else None
    final_order: list[exp.Expr] = []
    for term in bound.order:
        index = bound.output_index(term.expression)
        node = (
            exp.Literal.number(index + 1)
            if index is not None
            else rewriter.rewrite(term.expression)
        )
        final_order.append(_ordered(node, term))
    columns: list[exp.Expr] = [
        exp.Alias(this=g.copy(), alias=exp.to_identifier(f"_sw_g{i}"))
        for i, g in enumerate(bound.group)
    ]
    specs: list[PartialAggregate] = []
    for aggregate in rewriter.aggregates:
        first = len(columns)
        for expression in partials(aggregate):
            columns.append(
                exp.Alias(this=expression, alias=exp.to_identifier(f"_sw_p{len(columns)}"))
            )
        label = to_text(aggregate.node)
        specs.append(PartialAggregate(aggregate.kind, tuple(range(first, len(columns))), label))
    shard_bound = BoundSelect(
        bound.scope,
        bound.outputs,
        bound.names,
        False,
        _with_key_filters(bound.where, bound.having),
        bound.group,
        None,
        (),
        None,
        0,
    )
    fragment = _assemble(shard_bound, columns, scope, values, with_limit=False)
    final = _final_query(bound, final_outputs, final_having, final_order, values)
    types = tuple(_declared_type(g, scope) for g in bound.group)
    merge = AggregateMerge(
        len(bound.group), tuple(specs), final, scalar=not bound.group, group_types=types
    )
    return fragment, merge


def _declared_type(key: exp.Expr, scope: Scope) -> str:
    """A type that gives the merged column ``key``'s affinity: a column's, or a CAST's
    (SQLite gives every other expression none). A BLOB affinity is no declared type."""
    if isinstance(key, exp.Column):
        kind = scope.spec(key.name).affinity
    elif isinstance(key, exp.Cast):
        kind = affinity(to_sqlite(key.to))
    else:
        return ""
    return "" if kind == "BLOB" else kind


def _with_key_filters(where: exp.Expr | None, having: exp.Expr | None) -> exp.Expr | None:
    """WHERE with the HAVING conditions that read no aggregate (only group keys) added,
    as SQLite itself moves them: a group they drop is never aggregated, so its SUM
    cannot overflow (and the final query still applies the whole HAVING)."""
    if having is None:
        return where
    terms = (
        [t for t in having.flatten() if not has_aggregate(t)]
        if isinstance(having, exp.And)
        else ([having] if not has_aggregate(having) else [])
    )
    if not terms:
        return where
    parts = ([where] if where is not None else []) + terms
    return exp.and_(*(exp.paren(p.copy()) for p in parts))


def _final_query(
    bound: BoundSelect,
    outputs: list[exp.Expr],
    having: exp.Expr | None,
    order: list[exp.Expr],
    values: Mapping[str, SqlValue],
) -> Fragment:
    select = exp.Select(expressions=outputs)
    select.set("from_", exp.From(this=exp.to_table(MERGED_TABLE)))
    if bound.distinct:
        select.set("distinct", exp.Distinct())
    if having is not None:
        select.set("where", exp.Where(this=having))
    if order:
        select.set("order", exp.Order(expressions=order))
    params = dict(values)
    if bound.limit is not None or bound.offset:
        params[LIMIT_PARAM] = -1 if bound.limit is None else bound.limit
        select.set("limit", exp.Limit(expression=exp.Placeholder(this=LIMIT_PARAM)))
    if bound.offset:
        params[OFFSET_PARAM] = bound.offset
        select.set("offset", exp.Offset(expression=exp.Placeholder(this=OFFSET_PARAM)))
    return fragment(select, params)
