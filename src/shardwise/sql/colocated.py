"""Co-located joins: tables of one keyspace joined on their distribution columns run
inside each shard's fragment.

Two rows whose distribution values are equal live on the same shard, so when every join
of a statement requires equal distribution values (a conjunct ``a.k = b.k`` of its
``ON``, ``k`` each table's distribution column), every joined row is made of rows of one
shard, and each shard can join its own rows. The join then becomes the source of a
single-table plan: it is written as a derived table (``FROM (SELECT "a"."x" AS "a.x",
... FROM sql_a AS a JOIN sql_b AS b ON ...) AS _sw_j``), every column of the statement
becomes a column of it, and :func:`~shardwise.sql.select_plan.plan_select` applies every
strategy it has to the joined rows: pruning (an equality on any of the joined tables'
distribution columns), single-shard reads, rows, grouping by the distribution column,
partial aggregates, top-k.

What qualifies (everything else goes to the coordinator join,
:mod:`shardwise.sql.join_plan`): plain tables of one keyspace; ``JOIN`` and ``LEFT
JOIN`` only (then the first distributed table, the *anchor*, is never NULL-extended, so
grouping by its distribution column keeps each group on one shard; a RIGHT or FULL join
may make NULL groups on every shard); distribution columns of the same affinity, INTEGER
or TEXT (an equality between them then implies the same stored value, hence the same
shard: an untyped or REAL column may hold 3 and 3.0, equal but placed apart); no
subquery.

**Reference tables** (a full copy on every shard) join on any condition, or none, by
``JOIN`` or ``LEFT JOIN``: each joined row still holds exactly one row of a distributed
table, of one shard, so each shard makes its own joined rows and no other shard makes
them. The anchor itself must then come by an inner join (``r LEFT JOIN d`` would keep
the rows of ``r`` that match nothing on every shard); a statement of reference tables
alone is the coordinator join's (each read from one copy).

**Shipped tables** (a broadcast join, :mod:`shardwise.sql.broadcast`) are planned the
same way as reference tables: the rows of such a table, read once, travel with the
fragment to every shard and become a table there, so each shard again holds all of them.
They may come from any keyspace.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from sqlglot import exp

from shardwise.errors import SqlCatalogError, SqlSemanticError
from shardwise.model.config import Column, Table
from shardwise.sql.bind import Scope, check_supported, check_table, conjuncts
from shardwise.sql.catalog import Catalog, ColumnSpec, physical_name
from shardwise.sql.colnames import column_name
from shardwise.sql.dialect import to_text
from shardwise.sql.plans import ReadPlan
from shardwise.sql.select_bind import bind_select
from shardwise.sql.select_plan import plan_select
from shardwise.sql.values import SqlValue

JOINED_ALIAS = "_sw_j"
"""The name a co-located join's rows go by in a shard's fragment."""

VIRTUAL_PREFIX = "_sw_c"
"""The joined rows' columns: ``_sw_c0``, ``_sw_c1``, ... (a user's names cannot start
so, so no name of theirs, an output's or a column's, is ever taken for one)."""

_PLACED_BY_VALUE = ("INTEGER", "TEXT")
"""Distribution column affinities for which equal values are stored alike."""


@dataclass(frozen=True, slots=True)
class _Ref:
    alias: str
    table: Table
    columns: tuple[ColumnSpec, ...]
    shipped: str = ""
    """The name its shipped rows go by on each shard ("": it is read in place)."""

    @property
    def everywhere(self) -> bool:
        """Every shard has all its rows: a reference table or shipped rows."""
        return self.table.is_reference or bool(self.shipped)

    def has(self, name: str) -> bool:
        return any(c.name == name for c in self.columns)


def plan_colocated(
    select: exp.Select,
    catalog: Catalog,
    values: Mapping[str, SqlValue],
    *,
    heads: Sequence[str] = (),
    written: exp.Select | None = None,
    shipped: Mapping[str, str] | None = None,
) -> ReadPlan | None:
    """The co-located plan of ``select``, or None when it does not qualify; the tables
    of the aliases in ``shipped`` are read from the shipped tables it names."""
    refs = _refs(select, catalog, shipped or {})
    if refs is None or not _joined_on_distribution(select, refs):
        return None
    resolve = _Resolver(refs)
    expanded, expanded_heads = _expand_stars(select, refs, heads)
    shown, _ = _expand_stars(written, refs, heads) if written is not None else (expanded, [])
    if expanded is None or shown is None:
        return None
    if len(shown.expressions) != len(expanded.expressions):
        shown = expanded
    outputs = _output_names(shown, expanded_heads)
    virtual_names: dict[tuple[str, str], str] = {}
    used: dict[tuple[str, str], ColumnSpec] = {}

    def virtual(ref: _Ref, name: str) -> str:
        key = (ref.alias, name)
        if key not in virtual_names:
            virtual_names[key] = f"{VIRTUAL_PREFIX}{len(virtual_names)}"
            used[key] = _spec(ref, name)
        return virtual_names[key]

    outer = expanded.copy()
    outer.set("joins", None)
    for column in list(outer.find_all(exp.Column)):
        if _names_an_output(column, outputs, resolve):
            continue  # select_bind resolves it to the select item
        ref, spec = resolve(column)
        column.replace(exp.column(virtual(ref, spec.name), quoted=True))
    distributed = [ref for ref in refs if not ref.everywhere]
    keys = [virtual(ref, ref.table.distribution_column) for ref in distributed]  # (they prune)
    source = _derived_table(select, refs, virtual_names, resolve)
    columns = tuple(ColumnSpec(virtual_names[key], spec.type_name) for key, spec in used.items())
    table = Table(
        JOINED_ALIAS,
        distributed[0].table.keyspace,
        keys[0],  # the anchor's
        tuple(Column(c.name, c.type_name) for c in columns),
    )
    label = " ".join(
        [to_text(select.args["from_"].this)]
        + [to_text(join) for join in select.args.get("joins") or ()]
    )
    kind = "broadcast join" if shipped else "co-located join"
    scope = Scope(
        table,
        JOINED_ALIAS,
        columns,
        source=source,
        distributed_alike=tuple(keys[1:]),
        label=f"{kind} {label}",
    )
    outer.set("from_", exp.From(this=exp.to_table(JOINED_ALIAS)))

    def as_written(text: str) -> str:
        for (alias, name), virtual_name in virtual_names.items():
            text = re.sub(rf"\b{virtual_name}\b", f"{alias}.{name}", text)
        return text

    try:
        bound = bind_select(
            outer, catalog, values, heads=expanded_heads, written=shown, scope=scope
        )
        planned = plan_select(bound, catalog, values)
    except (SqlSemanticError, SqlCatalogError) as exc:  # named as the user wrote them
        raise type(exc)(as_written(str(exc))) from None
    expected = tuple(
        (
            ref.table.name if ref.alias == ref.table.name else f"{ref.table.name} AS {ref.alias}",
            catalog.expected_rows(ref.table, len(planned.shards), planned.shard_count),
        )
        for ref in refs
        if not ref.shipped  # (read by its own scan: see broadcast.py)
    )
    return dataclasses.replace(planned, pruned_by=as_written(planned.pruned_by), expected=expected)


def _output_names(shown: exp.Select, heads: Sequence[str]) -> set[str]:
    """The result names (PostgreSQL's) that name one select item each."""
    names: list[str] = []
    for item, head in zip(shown.expressions, heads, strict=True):
        alias = item.alias if isinstance(item, exp.Alias) else ""
        names.append(column_name(item.this if isinstance(item, exp.Alias) else item, alias, head))
    return {n for n in names if names.count(n) == 1}


def _names_an_output(column: exp.Column, outputs: set[str], resolve: _Resolver) -> bool:
    """A bare name that is a whole ORDER BY or GROUP BY item and that PostgreSQL reads
    as a select item: in ORDER BY an output name wins, in GROUP BY an input column
    does. (Inside an expression a name is always an input column.)"""
    if column.table or column.name not in outputs:
        return False
    if isinstance(column.parent, exp.Ordered) and isinstance(column.parent.parent, exp.Order):
        return True
    return isinstance(column.parent, exp.Group) and not any(
        r.has(column.name) for r in resolve.refs
    )


def _spec(ref: _Ref, name: str) -> ColumnSpec:
    for column in ref.columns:
        if column.name == name:
            return column
    raise SqlCatalogError(f"column {name!r} does not exist in table {ref.table.name!r}")


# --- what qualifies --------------------------------------------------------------------


def _refs(select: exp.Select, catalog: Catalog, shipped: Mapping[str, str]) -> list[_Ref] | None:
    if select.args.get("with_") or not select.args.get("joins"):
        return None
    if any(
        isinstance(n, exp.Select | exp.Subquery | exp.Exists)
        for n in select.walk()
        if n is not select
    ):
        return None
    source = select.args.get("from_")
    if not isinstance(source, exp.From):
        return None
    nodes = [source.this, *(j.this for j in select.args["joins"])]
    refs: list[_Ref] = []
    for node in nodes:
        if not isinstance(node, exp.Table) or not isinstance(node.this, exp.Identifier):
            return None
        check_table(node)
        if node.name not in catalog.tables:
            return None
        table = catalog.table(node.name)
        alias = node.alias or node.name
        columns = tuple(catalog.columns(table))
        refs.append(_Ref(alias, table, columns, shipped.get(alias, "")))
    aliases = [r.alias for r in refs]
    if len(set(aliases)) != len(aliases) or set(shipped) - set(aliases):
        return None
    if len({r.table.keyspace for r in refs if not r.shipped}) != 1:
        return None
    for ref in refs:
        if ref.everywhere:
            continue
        if _spec(ref, ref.table.distribution_column).affinity not in _PLACED_BY_VALUE:
            return None
    return refs


def _joined_on_distribution(select: exp.Select, refs: list[_Ref]) -> bool:
    """Every join an INNER or LEFT join; a distributed table's ON requiring its
    distribution value to equal an earlier distributed table's, of the same affinity,
    except the first distributed table's (the anchor), which comes by an inner join; a
    reference table's on anything."""
    anchored = not refs[0].everywhere
    for position, join in enumerate(select.args["joins"], start=1):
        side = (join.args.get("side") or "").upper()
        kind = (join.args.get("kind") or "").upper()
        if side not in ("", "LEFT") or kind not in ("", "INNER", "OUTER", "CROSS"):
            return False
        if join.args.get("method") or join.args.get("using"):
            return False
        new, on = refs[position], join.args.get("on")
        if new.everywhere:
            continue
        if not anchored:
            if not _may_anchor(side):
                return False
            anchored = True
            continue
        earlier = [r for r in refs[:position] if not r.everywhere]
        if on is None or not any(_pins(c, new, earlier) for c in conjuncts(on)):
            return False
    return anchored


def _may_anchor(side: str) -> bool:
    """Whether a distributed table joined to reference tables alone by a join of this
    side may anchor the co-located join: an inner join only (``r LEFT JOIN d`` keeps
    the rows of ``r`` that match nothing on every shard)."""
    return not side


def _pins(condition: exp.Expr, new: _Ref, earlier: list[_Ref]) -> bool:
    if not isinstance(condition, exp.EQ):
        return False
    left, right = condition.left, condition.right
    if not isinstance(left, exp.Column) or not isinstance(right, exp.Column):
        return False
    for mine, other in ((left, right), (right, left)):
        if mine.table != new.alias or mine.name != new.table.distribution_column:
            continue
        for ref in earlier:
            if other.table == ref.alias and other.name == ref.table.distribution_column:
                kind = _spec(new, mine.name).affinity
                return kind == _spec(ref, other.name).affinity
    return False


# --- rewriting -------------------------------------------------------------------------


class _Resolver:
    """A column reference -> its table and column, as PostgreSQL resolves it."""

    def __init__(self, refs: list[_Ref]) -> None:
        self.refs = refs

    def __call__(self, column: exp.Column) -> tuple[_Ref, ColumnSpec]:
        if column.args.get("db") or column.args.get("catalog"):
            raise SqlCatalogError("schema-qualified column names")
        if column.table:
            owners = [r for r in self.refs if r.alias == column.table]
            if not owners:
                names = [r.table.name for r in self.refs if r.table.name == column.table]
                if names:
                    raise SqlCatalogError(f"table {column.table!r} goes by another name here")
                raise SqlCatalogError(f"there is no table {column.table!r} in this statement")
            return owners[0], _spec(owners[0], column.name)
        owners = [r for r in self.refs if r.has(column.name)]
        if not owners:
            raise SqlCatalogError(f"column {column.name!r} does not exist")
        if len(owners) > 1:
            raise SqlSemanticError(f"column reference {column.name!r} is ambiguous")
        return owners[0], _spec(owners[0], column.name)


def _expand_stars(
    select: exp.Select, refs: list[_Ref], heads: Sequence[str]
) -> tuple[exp.Select | None, list[str]]:
    """``select`` with ``*`` and ``t.*`` written out as the columns they stand for, and
    each item's first word as written (a column a star adds has none)."""
    if len(heads) != len(select.expressions):
        heads = [""] * len(select.expressions)
    items: list[exp.Expr] = []
    words: list[str] = []
    for item, head in zip(select.expressions, heads, strict=True):
        if isinstance(item, exp.Star):
            chosen = refs
        elif isinstance(item, exp.Column) and isinstance(item.this, exp.Star):
            chosen = [r for r in refs if r.alias == item.table]
            if not chosen:
                return None, []  # (the coordinator join says what is wrong with it)
        else:
            items.append(item.copy())
            words.append(head)
            continue
        for ref in chosen:
            items.extend(exp.column(c.name, table=ref.alias, quoted=True) for c in ref.columns)
            words.extend("" for _ in ref.columns)
    copy = select.copy()
    copy.set("expressions", items)
    return copy, words


def _derived_table(
    select: exp.Select,
    refs: list[_Ref],
    virtual_names: dict[tuple[str, str], str],
    resolve: _Resolver,
) -> exp.Expr:
    """The join as each shard runs it: the used columns of the joined rows."""
    items = [
        exp.alias_(exp.column(name, table=alias, quoted=True), virtual, quoted=True)
        for (alias, name), virtual in virtual_names.items()
    ]
    inner = exp.Select(expressions=items)
    inner.set("from_", exp.From(this=_physical(refs[0])))
    joins: list[exp.Expr] = []
    for ref, join in zip(refs[1:], select.args["joins"], strict=True):
        on = join.args.get("on")
        on = on.copy() if on is not None else exp.true()  # (a cross or comma join)
        check_supported(on)
        for column in list(on.find_all(exp.Column)):
            owner, spec = resolve(column)
            column.replace(exp.column(spec.name, table=owner.alias, quoted=True))
        side = (join.args.get("side") or "").upper()
        joins.append(exp.Join(this=_physical(ref), on=on, side=side or None))
    inner.set("joins", joins)
    return exp.Subquery(
        this=inner, alias=exp.TableAlias(this=exp.to_identifier(JOINED_ALIAS, quoted=True))
    )


def _physical(ref: _Ref) -> exp.Table:
    return exp.Table(
        this=exp.to_identifier(ref.shipped or physical_name(ref.table.name), quoted=True),
        alias=exp.TableAlias(this=exp.to_identifier(ref.alias, quoted=True)),
    )
