"""SELECTs over several tables (joins, subqueries, ``WITH``): each table read from its
shards, the rest at the coordinator.

The **coordinator join** is the strategy that is always right: every table the statement
names is read as a single-table scatter read (:func:`plan_select`, so the shards prune
and project), its rows become a table of the coordinator's in-memory SQLite (declared
with the same column types, so comparisons convert values as on the shards), and the
statement runs there whole, unchanged but for the table names. SQLite then decides every
join type, subquery, ``EXISTS``, ``IN``, scalar and correlated subqueries and common
table expressions exactly as one SQLite holding all the rows would.

What makes it cheap is what the scans leave out, and every narrowing below only drops
rows or columns that cannot reach the answer; the statement at the coordinator still
applies every condition itself:

* **columns**: a scan reads only the columns the statement names for that table (all of
  them when a ``*`` may include it);
* **rows**: a condition of the top-level ``WHERE`` that reads only one table's columns
  runs in that table's scan (and prunes its shards), unless an outer join may extend the
  table with NULLs (then the condition may hold for the NULLs where it fails for every
  row); a condition in an inner join's ``ON`` does the same when the statement has no
  outer join; a condition in a ``LEFT JOIN``'s ``ON`` that reads only the joined table
  narrows that table.

A table named twice (a self-join) is read twice, once per reference. Bounds: every scan
together stays within the coordinator's row and byte limits
(:class:`~shardwise.sql.merge.MergeLimits`), and the statement at the coordinator within
:data:`~shardwise.sql.engine.MAX_FINAL_STEPS` steps and the same row limit.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

from sqlglot import exp

from shardwise.errors import SqlSemanticError, UnsupportedSqlError
from shardwise.sql.aggregates import is_aggregate, shard_function
from shardwise.sql.bind import (
    REFUSED_IN_ANY_SELECT,
    check_select_clauses,
    check_table,
    conjuncts,
)
from shardwise.sql.catalog import RESERVED_PREFIX, Catalog
from shardwise.sql.colnames import column_name
from shardwise.sql.plans import JoinPlan, ReadPlan, TableScan
from shardwise.sql.select_bind import bind_select, count
from shardwise.sql.select_plan import fragment, plan_select
from shardwise.sql.values import SqlValue

SCAN_PREFIX = "_sw_t"
"""The coordinator's name for the rows of the i-th table reference: ``_sw_t0``, ..."""


def is_multi_table(select: exp.Select) -> bool:
    """Whether ``select`` reads more than one table, or anything but a table: joins, a
    subquery anywhere, a derived table, ``WITH``."""
    if select.args.get("joins") or select.args.get("with_"):
        return True
    source = select.args.get("from_")
    if isinstance(source, exp.From) and not isinstance(source.this, exp.Table):
        return True
    return any(
        isinstance(node, exp.Select | exp.Subquery | exp.Exists) and node is not select
        for node in select.walk()
    )


@dataclass(slots=True)
class _Reference:
    """One table named in the statement, and what its scan may leave out."""

    node: exp.Table
    table_name: str
    alias: str
    home: exp.Select | None
    """The SELECT whose FROM or joins name it directly (its WHERE may narrow it); None
    for a table inside a nested join."""
    nullable: bool = False
    """An outer join may extend it with NULLs: no WHERE condition narrows it."""
    filters: list[exp.Expr] = field(default_factory=list)


def plan_multi(
    select: exp.Select,
    catalog: Catalog,
    values: Mapping[str, SqlValue],
    *,
    heads: Sequence[str] = (),
    written: exp.Select | None = None,
) -> JoinPlan:
    _check(select, catalog, values)
    references = _references(select, catalog)  # (none: SQLite alone answers)
    for node in list(select.walk()):
        if isinstance(node, exp.Select):
            own = [r for r in references if r.home is node]
            if own:
                _mark_outer_joins(node, own)
                _push_conditions(node, own, catalog)
    stars = _star_sources(select)
    scans: list[TableScan] = []
    rewritten = select.copy()
    originals = [r.node for r in references]
    copies = {id(o): c for o, c in zip(select.walk(), rewritten.walk(), strict=True)}
    for index, reference in enumerate(references):
        table = catalog.table(reference.table_name)
        specs = catalog.columns(table)
        wanted = _wanted_columns(select, reference, [c.name for c in specs], stars)
        chosen = [c for c in specs if c.name in wanted] or specs[:1]
        name = f"{SCAN_PREFIX}{index}"
        read = _scan(reference, [c.name for c in chosen], catalog, values)
        declarations = tuple((c.name, c.type_name) for c in chosen)
        scans.append(TableScan(name, reference.table_name, reference.alias, declarations, read))
        target = copies[id(originals[index])]
        target.replace(
            exp.Table(
                this=exp.to_identifier(name, quoted=True),
                alias=exp.TableAlias(this=exp.to_identifier(reference.alias, quoted=True)),
            )
        )
    final = fragment(_single_rows(shard_function(rewritten)), values, backticks=True)
    names = _names(select, heads, written)
    return JoinPlan(names, "coordinator-join", tuple(scans), final)


# --- checks ----------------------------------------------------------------------------


_KINDS: Final = frozenset({"", "INNER", "OUTER", "CROSS"})
"""Join kinds (besides the LEFT/RIGHT/FULL side); SEMI and ANTI are not SQL."""

_ROW_NUMBERS: Final = frozenset({"rowid", "oid", "_rowid_"})
"""SQLite's names for a row's number: at the coordinator, that of a scan's copy."""

_NONDETERMINISTIC: Final = frozenset({"random", "randomblob"})
"""Functions whose value differs between calls: a condition calling one must run once."""

SINGLE_ROW = "_sw_single"
"""The coordinator's aggregate that refuses a second row (a scalar subquery's)."""


def _check(select: exp.Select, catalog: Catalog, values: Mapping[str, SqlValue]) -> None:
    named = {
        c.name.lower()
        for t in select.find_all(exp.Table)
        if t.name in catalog.tables
        for c in catalog.table(t.name).columns
    }
    for node in select.walk():
        for kind, name in REFUSED_IN_ANY_SELECT.items():
            if isinstance(node, kind):
                raise UnsupportedSqlError(name)
        if isinstance(node, exp.Select):
            check_select_clauses(node, allow_joins=True)
            count(node.args.get("limit"), values, "LIMIT")
            count(node.args.get("offset"), values, "OFFSET")
        if isinstance(node, exp.Join) and (node.args.get("kind") or "").upper() not in _KINDS:
            raise UnsupportedSqlError(f"{node.args['kind'].upper()} JOIN")
        if isinstance(node, exp.Column) and node.name.lower() in _ROW_NUMBERS - named:
            raise UnsupportedSqlError(f"{node.name} (a row's storage number)")
        if isinstance(node, exp.Join) and node.args.get("method"):
            raise UnsupportedSqlError(f"{node.args['method']} JOIN (name the columns: USING)")
        if isinstance(node, exp.Lateral):
            raise UnsupportedSqlError("LATERAL")
        if isinstance(node, exp.Table) and not isinstance(node.this, exp.Identifier):
            raise UnsupportedSqlError("reading from anything but tables and subqueries")
        if isinstance(node, exp.Table):
            check_table(node)
        if isinstance(node, exp.Column) and (node.args.get("db") or node.args.get("catalog")):
            raise UnsupportedSqlError("schema-qualified column names")
        if isinstance(node, exp.With) and node.args.get("recursive"):
            raise UnsupportedSqlError("WITH RECURSIVE")


def _names_a_cte(table: exp.Table) -> bool:
    """Whether ``table`` names a common table expression of a WITH around it (outside
    that expression's own body: there, as in PostgreSQL, the name is the table's)."""
    around: list[exp.Expr] = []
    parent = table.parent
    while parent is not None:
        around.append(parent)
        parent = parent.parent
    for node in around:
        with_ = node.args.get("with_") if isinstance(node, exp.Select) else None
        if isinstance(with_, exp.With):
            for cte in with_.expressions:
                if cte.alias == table.name and not any(a is cte for a in around):
                    return True
    return False


def _references(select: exp.Select, catalog: Catalog) -> list[_Reference]:
    homes = {
        id(table): node
        for node in select.walk()
        if isinstance(node, exp.Select)
        for table in _direct_tables(node)
    }
    references: list[_Reference] = []
    for cte in select.find_all(exp.CTE):
        if cte.alias.lower().startswith(RESERVED_PREFIX):
            raise SqlSemanticError(f"names starting {RESERVED_PREFIX} are reserved")
    for node in select.find_all(exp.Table):
        if _names_a_cte(node):
            continue  # SQLite reads it from its definition
        alias = node.alias or node.name
        if alias.lower().startswith(RESERVED_PREFIX):
            raise SqlSemanticError(f"names starting {RESERVED_PREFIX} are reserved")
        catalog.table(node.name)  # an unknown table: the catalog's error
        references.append(_Reference(node, node.name, alias, homes.get(id(node))))
    return references


def _direct_tables(select: exp.Select) -> list[exp.Table]:
    tables: list[exp.Table] = []
    source = select.args.get("from_")
    if isinstance(source, exp.From) and isinstance(source.this, exp.Table):
        tables.append(source.this)
    for join in select.args.get("joins") or ():
        if isinstance(join.this, exp.Table):
            tables.append(join.this)
    return tables


# --- narrowing the scans ---------------------------------------------------------------


def _mark_outer_joins(select: exp.Select, references: list[_Reference]) -> None:
    """Which of ``select``'s own tables an outer join may extend with NULLs (what is not
    a table, a derived one or a nested join, is never narrowed anyway)."""
    by_node = {id(r.node): r for r in references}
    sides: list[exp.Expr] = []
    source = select.args.get("from_")
    if isinstance(source, exp.From):
        sides.append(source.this)
    for join in select.args.get("joins") or ():
        side = (join.args.get("side") or "").upper()
        if side in ("RIGHT", "FULL"):
            for earlier in sides:
                if (reference := by_node.get(id(earlier))) is not None:
                    reference.nullable = True
        if side in ("LEFT", "FULL") and (reference := by_node.get(id(join.this))) is not None:
            reference.nullable = True
        sides.append(join.this)


def _only_reference(
    condition: exp.Expr, top: list[_Reference], catalog: Catalog, opaque: bool = False
) -> _Reference | None:
    """The one table of ``top`` ``condition`` reads, if it reads exactly one and nothing
    that makes moving it unsafe (a subquery, an aggregate, a window, a function that
    differs between calls: the condition runs in the scan and again at the
    coordinator). ``opaque``: the SELECT also reads something that is not one of
    ``top`` (a derived table, a CTE) or joins with USING, so a bare column name may be
    that source's: only qualified names count."""
    for node in condition.walk():
        if isinstance(node, exp.Select | exp.Subquery | exp.Exists | exp.Window | exp.Rand):
            return None
        if isinstance(node, exp.Func) and is_aggregate(node):
            return None
        if isinstance(node, exp.Anonymous) and node.name.lower() in _NONDETERMINISTIC:
            return None
    found: _Reference | None = None
    columns = list(condition.find_all(exp.Column))
    if not columns:
        return None
    for column in columns:
        if isinstance(column.this, exp.Star):
            return None
        if column.table:
            owners = [r for r in top if r.alias == column.table]
        elif opaque:
            return None
        else:
            owners = [r for r in top if _has_column(catalog, r.table_name, column.name)]
        if len(owners) != 1 or (found is not None and owners[0] is not found):
            return None
        found = owners[0]
    return found


def _has_column(catalog: Catalog, table: str, column: str) -> bool:
    return any(c.name == column for c in catalog.table(table).columns)


def _push_conditions(select: exp.Select, top: list[_Reference], catalog: Catalog) -> None:
    """Narrow ``top`` (the tables ``select`` names directly) by the conditions of
    ``select`` that read only one of them. In a subquery a column no table of its own
    holds is an outer one, and such a condition narrows nothing."""
    aliases = [r.alias for r in top]
    if len(set(aliases)) != len(aliases):
        return  # the same name twice: SQLite refuses the statement; narrow nothing
    joins = select.args.get("joins") or ()
    outer = any((j.args.get("side") or "") for j in joins)
    source = select.args.get("from_")
    items = [source.this if isinstance(source, exp.From) else None, *(j.this for j in joins)]
    mine = {id(r.node) for r in top}
    opaque = any(id(i) not in mine for i in items) or any(j.args.get("using") for j in joins)
    where = select.args.get("where")
    candidates = conjuncts(where.this if where is not None else None)
    for join in joins:
        if not outer:
            candidates.extend(conjuncts(join.args.get("on")))
        elif (join.args.get("side") or "").upper() == "LEFT":
            for condition in conjuncts(join.args.get("on")):
                reference = _only_reference(condition, top, catalog, opaque)
                if reference is not None and reference.node is join.this:
                    reference.filters.append(condition)
    for condition in candidates:
        reference = _only_reference(condition, top, catalog, opaque)
        if reference is not None and not reference.nullable:
            reference.filters.append(condition)
    if not opaque:
        _carry_pins(candidates, top, catalog)


def _carry_pins(candidates: list[exp.Expr], top: list[_Reference], catalog: Catalog) -> None:
    """``a.k = b.k AND a.k = 5``: ``b.k = 5`` narrows (and prunes) ``b``'s scan too. Only
    between columns of one affinity (then SQLite's equality is transitive: no side's
    value is converted), of tables no outer join NULL-extends, and for constants (a
    literal, a parameter, or a list of them after ``IN``)."""
    by_alias = {r.alias: r for r in top}

    def column_of(node: exp.Expr) -> tuple[_Reference, str] | None:
        if isinstance(node, exp.Column) and node.table in by_alias:
            reference = by_alias[node.table]
            if not reference.nullable and _has_column(catalog, reference.table_name, node.name):
                return reference, node.name
        return None

    def constant(node: exp.Expr) -> bool:
        return isinstance(node, exp.Literal | exp.Placeholder | exp.Null) or (
            isinstance(node, exp.Neg) and isinstance(node.this, exp.Literal)
        )

    equal: list[tuple[tuple[_Reference, str], tuple[_Reference, str]]] = []
    pins: list[tuple[tuple[_Reference, str], exp.Expr]] = []
    for condition in candidates:
        if isinstance(condition, exp.EQ):
            left, right = column_of(condition.left), column_of(condition.right)
            if left and right and left[0] is not right[0]:
                if _affinity(catalog, *left) == _affinity(catalog, *right):
                    equal.extend([(left, right), (right, left)])
            elif left and constant(condition.right):
                pins.append((left, condition.right))
            elif right and constant(condition.left):
                pins.append((right, condition.left))
        elif isinstance(condition, exp.In) and not condition.args.get("query"):
            target = column_of(condition.this)
            if target and all(constant(v) for v in condition.expressions):
                pins.append((target, exp.Tuple(expressions=condition.expressions)))
    carried = {(id(r), c) for (r, c), _ in pins}
    for (source_ref, source_col), value in pins:
        for (a_ref, a_col), (b_ref, b_col) in equal:
            if (a_ref, a_col) != (source_ref, source_col) or (id(b_ref), b_col) in carried:
                continue
            column = exp.column(b_col, table=b_ref.alias, quoted=True)
            if isinstance(value, exp.Tuple):
                implied: exp.Expr = exp.In(
                    this=column, expressions=[v.copy() for v in value.expressions]
                )
            else:
                implied = exp.EQ(this=column, expression=value.copy())
            b_ref.filters.append(implied)
            carried.add((id(b_ref), b_col))


def _affinity(catalog: Catalog, reference: _Reference, column: str) -> str:
    return catalog.column(catalog.table(reference.table_name), column).affinity


def _star_sources(select: exp.Select) -> tuple[bool, set[str]]:
    """Whether some select list has a bare ``*``, and the qualifiers of ``x.*`` items."""
    bare = False
    qualified: set[str] = set()
    for node in select.walk():
        if not isinstance(node, exp.Select):
            continue
        for item in node.expressions:
            if isinstance(item, exp.Star):
                bare = True
            elif isinstance(item, exp.Column) and isinstance(item.this, exp.Star):
                qualified.add(item.table)
    return bare, qualified


def _wanted_columns(
    select: exp.Select,
    reference: _Reference,
    names: list[str],
    stars: tuple[bool, set[str]],
) -> set[str]:
    bare, qualified = stars
    if bare or reference.alias in qualified or reference.table_name in qualified:
        return set(names)
    wanted: set[str] = set()
    for column in select.find_all(exp.Column):
        if column.table in ("", reference.alias, reference.table_name):
            wanted.add(column.name)
    for join in select.find_all(exp.Join):
        for using in join.args.get("using") or ():
            wanted.add(using.name)
    return wanted & set(names)


def _scan(
    reference: _Reference, columns: list[str], catalog: Catalog, values: Mapping[str, SqlValue]
) -> ReadPlan:
    scan = exp.Select(
        expressions=[exp.column(c, table=reference.alias, quoted=True) for c in columns]
    )
    source = exp.Table(
        this=exp.to_identifier(reference.table_name, quoted=True),
        alias=exp.TableAlias(this=exp.to_identifier(reference.alias, quoted=True)),
    )
    scan.set("from_", exp.From(this=source))
    if reference.filters:
        scan.set(
            "where", exp.Where(this=exp.and_(*(exp.paren(f.copy()) for f in reference.filters)))
        )
    return plan_select(bind_select(scan, catalog, values), catalog, values)


# --- the coordinator's statement -------------------------------------------------------


def _single_rows(tree: exp.Expr) -> exp.Expr:
    """Each scalar subquery (one used as a value) made to fail on a second row, as in
    PostgreSQL; SQLite would take whichever row came first, which at the coordinator
    depends on the order the shards answered in."""
    for subquery in list(tree.find_all(exp.Subquery)):
        inner = subquery.this
        if not isinstance(inner, exp.Select) or len(inner.expressions) != 1:
            continue
        if isinstance(subquery.parent, exp.From | exp.Join | exp.In | exp.Exists | exp.CTE):
            continue
        item = inner.expressions[0]
        if isinstance(item, exp.Star) or (
            isinstance(item, exp.Column) and isinstance(item.this, exp.Star)
        ):
            continue
        body = inner.copy()
        name = item.alias if isinstance(item, exp.Alias) else ""
        if not name:  # (an alias it has stays: its ORDER BY may name it)
            name = "_sw_v"
            body.set("expressions", [exp.alias_(item.copy(), name, quoted=True)])
        single = exp.Select(
            expressions=[
                exp.Anonymous(this=SINGLE_ROW, expressions=[exp.column(name, quoted=True)])
            ]
        ).from_(exp.Subquery(this=body))
        subquery.set("this", single)
    return tree


def _names(
    select: exp.Select, heads: Sequence[str], written: exp.Select | None
) -> tuple[str | None, ...]:
    """Each select item's result name as PostgreSQL gives it; None for a ``*`` item
    (named at run time from the columns it expanded to)."""
    items = select.expressions
    shown = written.expressions if written is not None else items
    if len(shown) != len(items):
        shown = items
    if len(heads) != len(items):
        heads = [""] * len(items)
    names: list[str | None] = []
    for item, original, head in zip(items, shown, heads, strict=True):
        node = item.this if isinstance(item, exp.Alias) else item
        if isinstance(node, exp.Star) or (
            isinstance(node, exp.Column) and isinstance(node.this, exp.Star)
        ):
            names.append(None)
            continue
        alias = item.alias if isinstance(item, exp.Alias) else ""
        inner = original.this if isinstance(original, exp.Alias) else original
        names.append(column_name(inner, alias, head))
    return tuple(names)
