"""A SELECT taken apart and bound: outputs, filters, groups, order and limits resolved.

PostgreSQL's rules for names decide what ``ORDER BY x`` and ``GROUP BY x`` mean: a
number is a select-list position; in ORDER BY a bare name is an output column first,
in GROUP BY an input column first; ``SELECT DISTINCT`` may only be ordered by what it
selects. Everything else is a column of the table.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from sqlglot import exp

from shardwise.errors import SqlSemanticError
from shardwise.sql.bind import Scope, check_select_clauses, check_supported, has_aggregate
from shardwise.sql.catalog import Catalog
from shardwise.sql.colnames import column_name
from shardwise.sql.params import NOT_CONSTANT, constant
from shardwise.sql.values import SqlValue


@dataclass(frozen=True, slots=True)
class OrderTerm:
    expression: exp.Expr
    descending: bool
    nulls_first: bool


@dataclass(frozen=True, slots=True)
class BoundSelect:
    scope: Scope | None
    outputs: tuple[exp.Expr, ...]
    names: tuple[str, ...]
    distinct: bool
    where: exp.Expr | None
    group: tuple[exp.Expr, ...]
    having: exp.Expr | None
    order: tuple[OrderTerm, ...]
    limit: int | None
    offset: int

    @property
    def aggregated(self) -> bool:
        return bool(
            self.group
            or self.having is not None
            or any(has_aggregate(o) for o in self.outputs)
            or any(has_aggregate(t.expression) for t in self.order)
        )

    def output_index(self, node: exp.Expr) -> int | None:
        for i, output in enumerate(self.outputs):
            if output == node:
                return i
        return None


def bind_select(
    select: exp.Select,
    catalog: Catalog,
    values: Mapping[str, SqlValue],
    *,
    heads: Sequence[str] = (),
    written: exp.Select | None = None,
    scope: Scope | None = None,
) -> BoundSelect:
    """``select`` bound. Result columns are named as PostgreSQL names them, from
    ``written`` (the SELECT before time and randomness became parameters) and ``heads``
    (each item's first word as written, see :mod:`shardwise.sql.colnames`). ``scope``:
    what the FROM clause reads, when it is not the one table it names (a co-located
    join)."""
    check_select_clauses(select)
    source = select.args.get("from_")
    if scope is None and isinstance(source, exp.From):
        scope = Scope.of(catalog, source.this)
    outputs, names = _outputs(select, scope, heads, written)
    where = select.args.get("where")
    bound_where = _bind(scope, where.this, False, "in WHERE") if where is not None else None
    group_node = select.args.get("group")
    group: list[exp.Expr] = []
    if isinstance(group_node, exp.Group):
        for item in group_node.expressions:
            check_supported(item)
            key = _group_key(item, scope, outputs, names)
            if has_aggregate(key):
                raise SqlSemanticError("aggregate functions are not allowed in GROUP BY")
            if key not in group:
                group.append(key)
    having = select.args.get("having")
    bound_having = _bind(scope, having.this, True, "in HAVING") if having is not None else None
    distinct = bool(select.args.get("distinct"))
    order = _order(select, scope, outputs, names)
    if distinct:
        for term in order:
            if term.expression not in outputs:
                raise SqlSemanticError(
                    "for SELECT DISTINCT, ORDER BY expressions must appear in the select list"
                )
    limit = count(select.args.get("limit"), values, "LIMIT")
    offset = count(select.args.get("offset"), values, "OFFSET") or 0
    return BoundSelect(
        scope,
        tuple(outputs),
        tuple(names),
        distinct,
        bound_where,
        tuple(group),
        bound_having,
        tuple(order),
        limit,
        offset,
    )


def _bind(scope: Scope | None, node: exp.Expr, aggregates: bool, where: str) -> exp.Expr:
    if scope is None:
        check_supported(node)
        column = next(node.find_all(exp.Column), None)
        if column is not None:
            raise SqlSemanticError(f"column {column.name!r} named without a FROM clause")
        return node.copy()
    return scope.bind(node, aggregates=aggregates, where=where)


def _outputs(
    select: exp.Select, scope: Scope | None, heads: Sequence[str], written: exp.Select | None
) -> tuple[list[exp.Expr], list[str]]:
    outputs: list[exp.Expr] = []
    names: list[str] = []
    items = select.expressions
    as_written = written.expressions if written is not None else items
    if len(as_written) != len(items):
        as_written = items
    if len(heads) != len(items):
        heads = [""] * len(items)
    for item, original, head in zip(items, as_written, heads, strict=True):
        alias = item.alias if isinstance(item, exp.Alias) else ""
        node = item.this if isinstance(item, exp.Alias) else item
        if _is_star(node, scope):
            if scope is None:
                raise SqlSemanticError("SELECT * needs a FROM clause")
            outputs.extend(scope.star())
            names.extend(scope.names)
            continue
        bound = _bind(scope, node, True, "in the select list")
        outputs.append(bound)
        shown = original.this if isinstance(original, exp.Alias) else original
        names.append(column_name(shown, alias, head))
    return outputs, names


def _is_star(node: exp.Expr, scope: Scope | None) -> bool:
    if isinstance(node, exp.Star):
        return True
    if isinstance(node, exp.Column) and isinstance(node.this, exp.Star):
        if scope is not None and node.table not in (scope.alias, scope.table.name):
            raise SqlSemanticError(f"there is no table {node.table!r} in this statement")
        return True
    return False


def _position(node: exp.Expr, outputs: list[exp.Expr], clause: str) -> int | None:
    if isinstance(node, exp.Literal) and not node.is_string:
        text = str(node.this)
        if not text.isdigit() or not 1 <= int(text) <= len(outputs):
            raise SqlSemanticError(f"{clause} position {text} is not in the select list")
        return int(text) - 1
    return None


def _group_key(
    node: exp.Expr, scope: Scope | None, outputs: list[exp.Expr], names: list[str]
) -> exp.Expr:
    position = _position(node, outputs, "GROUP BY")
    if position is not None:
        return outputs[position]
    if (
        isinstance(node, exp.Column)
        and not node.table
        and scope is not None
        and node.name not in scope.names
        and node.name in names
    ):
        return outputs[names.index(node.name)]
    return _bind(scope, node, False, "in GROUP BY")


def _order(
    select: exp.Select, scope: Scope | None, outputs: list[exp.Expr], names: list[str]
) -> list[OrderTerm]:
    order = select.args.get("order")
    if not isinstance(order, exp.Order):
        return []
    terms: list[OrderTerm] = []
    for item in order.expressions:
        assert isinstance(item, exp.Ordered)
        node = item.this
        position = _position(node, outputs, "ORDER BY")
        if position is not None:
            bound = outputs[position]
        elif isinstance(node, exp.Column) and not node.table and node.name in names:
            bound = outputs[names.index(node.name)]
        else:
            bound = _bind(scope, node, True, "in ORDER BY")
        descending = bool(item.args.get("desc"))
        nulls_first = bool(item.args.get("nulls_first"))
        terms.append(OrderTerm(bound, descending, nulls_first))
    return terms


def count(node: exp.Expr | None, values: Mapping[str, SqlValue], clause: str) -> int | None:
    if node is None:
        return None
    inner = node.args.get("expression") or node.this
    if not isinstance(inner, exp.Expr):
        raise SqlSemanticError(f"{clause} needs a value")
    if isinstance(inner, exp.Var) and inner.name.upper() == "ALL":
        return None
    value = constant(inner, values)
    if value is None:
        return None  # LIMIT NULL / LIMIT ALL: no limit, as in PostgreSQL
    if value is NOT_CONSTANT or not isinstance(value, int) or value < 0:
        raise SqlSemanticError(f"{clause} takes a non-negative integer (a literal or a parameter)")
    return value
