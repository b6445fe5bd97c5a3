"""Which global index a single-table read uses, and how.

A read of table ``t`` uses public global index ``i`` (:mod:`shardwise.sql.index_tables`)
when its WHERE pins ``i``'s first column (``col = v``, ``col IN (...)``: the leaves that
prune a distribution column, :mod:`shardwise.sql.pruning`) and the distribution column
does not already pin as few shards. Then:

* **covering**: every column the statement names is in the index's entries and the
  values pinned are on one index shard: the statement is planned over the index's table
  instead of ``t`` (same column names,
  types and alias; distributed by the indexed column, so it prunes to the index shards
  of the values). Only rows whose first indexed column is not NULL have entries, and a
  WHERE that pins the column matches no other row.
* **lookup**: first the distinct distribution values of the entries that may match
  (the WHERE's conjuncts that read only entry columns, on the index shards), then the
  statement on the shards of those values only (``ReadPlan.lookup``, run by the
  coordinator, which reads several index shards as of one moment,
  ``ShardExecutor.read_snapshot``: a row whose value moves between two of them is found
  once, never twice or not at all). The statement still applies its whole WHERE there,
  so the index only narrows the shards; each base shard reads by its local index.

Among several indexes, the one that reads the fewest index shards, covering first.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final

from sqlglot import exp

from shardwise.model.config import IndexDef, Table
from shardwise.sql.bind import Scope
from shardwise.sql.catalog import Catalog, physical_name
from shardwise.sql.distribution import Router
from shardwise.sql.index_tables import ROW_COLUMN, entry_columns, global_indexes, index_table
from shardwise.sql.pruning import Pruner
from shardwise.sql.select_bind import BoundSelect
from shardwise.sql.values import SqlValue

MAX_INDEX_MATCHES: Final = 10_000
"""Distribution values a lookup may return; past them the read goes to every shard it
would have read without the index (a value so common is no use to narrow by)."""


@dataclass(frozen=True, slots=True)
class IndexChoice:
    index: IndexDef
    shards: frozenset[int]
    """The index shards it reads."""
    covering: BoundSelect | None = None
    """The statement over the index's table (a covering read)."""
    lookup: BoundSelect | None = None
    """The read of the distribution values (a lookup)."""


def choose(
    bound: BoundSelect,
    catalog: Catalog,
    values: Mapping[str, SqlValue],
    router: Router,
    pruned: frozenset[int] | set[int] | None,
) -> IndexChoice | None:
    """The global index ``bound`` (a read of one table) should use, if any."""
    scope = bound.scope
    if scope is None or scope.source is not None or bound.where is None:
        return None
    table = scope.table
    named = _columns(bound)
    best: IndexChoice | None = None
    for index in global_indexes(table, public=True):
        entries = set(entry_columns(table, index))
        over = _scope(table, index, scope, catalog)
        first = over.spec(index.columns[0])
        shards = Pruner(first.name, first.affinity, router, values).shards(bound.where)
        if named <= entries and shards is not None and len(shards) <= 1:
            # Covering, on one index shard (on several, read at different moments, an
            # entry moving between them could be counted twice or missed: a lookup
            # reads them as of one moment instead).
            choice = IndexChoice(index, shards, covering=dataclasses.replace(bound, scope=over))
        else:
            narrow = _conjuncts_over(bound.where, entries)
            if narrow is None:
                continue
            shards = Pruner(first.name, first.affinity, router, values).shards(narrow)
            if shards is None:
                continue
            distribution = exp.column(table.distribution_column, quoted=True)
            lookup = BoundSelect(
                scope=over,
                outputs=(distribution,),
                names=(table.distribution_column,),
                distinct=True,
                where=narrow,
                group=(),
                having=None,
                order=(),
                limit=None,
                offset=0,
            )
            choice = IndexChoice(index, shards, lookup=lookup)
        if best is None or _better(choice, best):
            best = choice
    if best is None or (pruned is not None and len(pruned) <= len(best.shards)):
        return None
    return best


def _better(choice: IndexChoice, than: IndexChoice) -> bool:
    mine = (choice.covering is None, len(choice.shards), choice.index.name)
    theirs = (than.covering is None, len(than.shards), than.index.name)
    return mine < theirs


def _scope(table: Table, index: IndexDef, scope: Scope, catalog: Catalog) -> Scope:
    """The index's table as the statement's table: its alias, the base columns' types."""
    hidden = index_table(table, index)
    columns = tuple(c for c in catalog.columns(hidden) if c.name != ROW_COLUMN)
    source = exp.Table(
        this=exp.to_identifier(physical_name(hidden.name), quoted=True),
        alias=exp.TableAlias(this=exp.to_identifier(scope.alias, quoted=True)),
    )
    return Scope(hidden, scope.alias, columns, source, label=f"{table.name} (index {index.name})")


def _columns(bound: BoundSelect) -> set[str]:
    nodes: list[exp.Expr | None] = [
        *bound.outputs,
        bound.where,
        *bound.group,
        bound.having,
        *(term.expression for term in bound.order),
    ]
    return {c.name for node in nodes if node is not None for c in node.find_all(exp.Column)}


def _conjuncts_over(where: exp.Expr, columns: Iterable[str]) -> exp.Expr | None:
    """The AND of ``where``'s top-level conjuncts that read only ``columns`` (None if
    none does): a narrowing of the rows that keeps every row ``where`` keeps."""
    allowed = set(columns)
    kept = [
        part
        for part in _flatten(where)
        if not any(isinstance(n, exp.Query) for n in part.walk())
        and {c.name for c in part.find_all(exp.Column)} <= allowed
    ]
    if not kept:
        return None
    return exp.and_(*(k.copy() for k in kept)) if len(kept) > 1 else kept[0].copy()


def _flatten(node: exp.Expr) -> list[exp.Expr]:
    if isinstance(node, exp.Paren):
        return _flatten(node.this)
    if isinstance(node, exp.And):
        return [*_flatten(node.left), *_flatten(node.right)]
    return [node]
