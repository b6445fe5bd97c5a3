"""INSERT, UPDATE and DELETE: one atomic batch per shard.

An INSERT's rows are grouped by the shard of their distribution value (which must be a
literal or a parameter, so the coordinator can place the row without evaluating SQL); each
shard gets its rows as one batch, applied through that shard's group log as one entry.
UPDATE and DELETE go to the shard the WHERE clause pins, else to every shard. A write to
several shards is atomic: the executor applies its batches as one transaction. A write to a
reference table goes whole to every shard of its keyspace (each holds a copy), atomically.
``INSERT ... SELECT`` reads first (:class:`~shardwise.sql.plans.InsertSelectPlan`), then
places the rows it read as an INSERT of their values (:func:`plan_insert_rows`).

Refused: changing a row's distribution column (it would have to move shards), a NULL or
unplaceable distribution value, and anything :mod:`shardwise.sql.determinism` cannot fix.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Final, TypeVar

from sqlglot import exp

from shardwise.errors import (
    DistributionColumnUpdateError,
    DistributionValueError,
    SqlCatalogError,
    SqlLimitError,
    SqlSemanticError,
    UnsupportedSqlError,
)
from shardwise.model.config import Table
from shardwise.sql.bind import Scope, check_supported
from shardwise.sql.catalog import Catalog, physical_name
from shardwise.sql.determinism import Determinizer
from shardwise.sql.dialect import table_node, to_sqlite
from shardwise.sql.distribution import Router, insert_key
from shardwise.sql.identifiers import quote_identifier
from shardwise.sql.index_tables import IndexMaintenance
from shardwise.sql.params import MAX_PARAMS, NOT_CONSTANT, constant
from shardwise.sql.plans import Fragment, InsertSelectPlan, ShardBatch, WritePlan
from shardwise.sql.pruning import Pruner
from shardwise.sql.values import SqlValue

R = TypeVar("R")

MAX_INSERT_ROWS: Final = 100_000
"""Rows in one INSERT: the statement's text and values are held whole at the coordinator."""

_REFERENCE_WRITE: Final = "a reference table: every shard's copy, at once"

MAX_ROWS_PER_STATEMENT: Final = 500
"""Rows per generated INSERT (a shard's batch holds several): keeps each statement far
from SQLite's bounds on parameters and expression depth."""

_WRITE_CLAUSES: Final[dict[str, str]] = {
    "returning": "RETURNING",
    "with_": "WITH (common table expressions)",
    "from_": "UPDATE ... FROM",
    "using": "DELETE ... USING",
    "joins": "JOIN",
    "order": "ORDER BY in a write",
    "limit": "LIMIT in a write",
    "conflict": "ON CONFLICT (planned)",
    "alternative": "INSERT OR ...",
    "overwrite": "INSERT OVERWRITE",
    "default": "DEFAULT VALUES",
    "by_name": "INSERT BY NAME",
}


def _check_clauses(statement: exp.Expr, allowed: frozenset[str]) -> None:
    for key, value in statement.args.items():
        if value and key not in allowed:
            raise UnsupportedSqlError(_WRITE_CLAUSES.get(key, key.upper()))


def _scope(catalog: Catalog, table: exp.Expr) -> Scope:
    return Scope.of(catalog, table)


def plan_insert(
    statement: exp.Insert,
    catalog: Catalog,
    values: dict[str, SqlValue],
    fixer: Determinizer,
) -> WritePlan:
    scope, columns = insert_target(statement, catalog)
    source = statement.expression
    if not isinstance(source, exp.Values):
        raise UnsupportedSqlError("this INSERT source", "insert VALUES rows or a SELECT")
    rows = list(source.expressions)
    if len(rows) > MAX_INSERT_ROWS:
        raise SqlLimitError("MAX_INSERT_ROWS", MAX_INSERT_ROWS, "too many rows in one INSERT")
    reference = scope.table.is_reference
    dist = None if reference else scope.spec(scope.table.distribution_column)
    if dist is not None and dist.name not in columns:
        raise DistributionValueError(
            f"an INSERT into {scope.table.name!r} must give the distribution column {dist.name!r}"
        )
    position = -1 if dist is None else columns.index(dist.name)
    router = Router(catalog.keyspace(scope.table))
    by_shard: dict[int, list[exp.Tuple]] = {}
    every_row: list[exp.Tuple] = []
    for row in rows:
        cells = list(row.expressions) if isinstance(row, exp.Tuple) else [row]
        if len(cells) != len(columns):
            raise SqlSemanticError(
                f"an INSERT row has {len(cells)} values for {len(columns)} columns"
            )
        fixed: list[exp.Expr] = []
        for cell in cells:
            if isinstance(cell, exp.Var) and cell.name.upper() == "DEFAULT":
                raise UnsupportedSqlError("DEFAULT in VALUES", "leave the column out instead")
            check_supported(cell)
            if next(cell.find_all(exp.Column), None) is not None:
                raise SqlSemanticError("INSERT values cannot name columns")
            fixed.append(fixer.fix(cell, "insert"))
        values.update(fixer.values)
        if dist is None:
            every_row.append(exp.Tuple(expressions=fixed))
            continue
        key_value = constant(fixed[position], values)
        if key_value is NOT_CONSTANT:
            raise DistributionValueError(
                f"the distribution column {dist.name!r} takes a literal or a parameter in "
                "INSERT, so the coordinator can place the row"
            )
        shard = router.shard_of(insert_key(key_value, dist.name, dist.affinity))
        by_shard.setdefault(shard, []).append(exp.Tuple(expressions=fixed))
    table = table_node(physical_name(scope.table.name))
    schema = exp.Schema(
        this=table, expressions=[exp.to_identifier(c, quoted=True) for c in columns]
    )
    per_statement = rows_per_statement(len(columns))

    def statements(rows: Sequence[exp.Tuple]) -> tuple[Fragment, ...]:
        if all(_bound_cells(row, values) for row in rows):  # (the bulk path's form)
            cells = [[values[str(c.this)] for c in row.expressions] for row in rows]
            return (insert_each(physical_name(scope.table.name), columns, cells),)
        return tuple(
            _fragment(
                exp.Insert(
                    this=schema.copy(),
                    expression=exp.Values(expressions=rows[start : start + per_statement]),
                ),
                values,
            )
            for start in range(0, len(rows), per_statement)
        )

    return insert_plan(scope.table, router, by_shard, every_row, statements)


def insert_each(
    physical: str, columns: Sequence[str], rows: Sequence[Sequence[SqlValue]]
) -> Fragment:
    """The INSERT of ``rows`` into the shard table ``physical``: one statement of ``?``
    parameters run for each row (compiled once on each shard, where a multi-row VALUES
    of thousands of parameters would be compiled on every replica, twice)."""
    marks = ", ".join("?" * len(columns))
    head = f"INSERT INTO {quote_identifier(physical)} "
    listed = ", ".join(quote_identifier(c) for c in columns)
    return Fragment(f"{head}({listed}) VALUES ({marks})", {}, (), tuple(map(tuple, rows)))


def _bound_cells(row: exp.Tuple, values: Mapping[str, SqlValue]) -> bool:
    return all(isinstance(c, exp.Placeholder) and str(c.this) in values for c in row.expressions)


def rows_per_statement(width: int) -> int:
    """Rows per generated INSERT of rows ``width`` values wide."""
    return max(1, min(MAX_ROWS_PER_STATEMENT, MAX_PARAMS // max(1, width)))


def insert_plan(
    table: Table,
    router: Router,
    by_shard: Mapping[int, Sequence[R]],
    every_row: Sequence[R],
    statements: Callable[[Sequence[R]], tuple[Fragment, ...]],
) -> WritePlan:
    """The plan of an INSERT into ``table``: each shard its rows (``by_shard``), or, for
    a reference table, ``every_row`` to every shard (the statements written out once)."""
    if table.is_reference:
        every = statements(every_row)
        batches = [ShardBatch(s, every, rows=len(every_row)) for s in sorted(router.all_shards())]
    else:
        batches = [
            ShardBatch(shard, statements(by_shard[shard]), rows=len(by_shard[shard]))
            for shard in sorted(by_shard)
        ]
    return WritePlan(
        "INSERT",
        table.name,
        router.keyspace.name,
        router.shard_count,
        tuple(batches),
        pruned_by=_REFERENCE_WRITE if table.is_reference else "the rows' distribution values",
        copies=router.shard_count if table.is_reference else 1,
        maintenance=IndexMaintenance.of(table, router.keyspace),
    )


def insert_target(statement: exp.Insert, catalog: Catalog) -> tuple[Scope, list[str]]:
    """An INSERT's table and the columns it gives, checked."""
    _check_clauses(statement, frozenset({"this", "expression"}))
    target = statement.this
    names: list[str] | None = None
    if isinstance(target, exp.Schema):
        names = [c.name for c in target.expressions]
        target = target.this
    scope = _scope(catalog, target)
    columns = names if names is not None else list(scope.names)
    for name in columns:
        scope.spec(name)
    if len(set(columns)) != len(columns):
        raise SqlSemanticError("a column is named twice in the INSERT")
    return scope, columns


def plan_insert_rows(
    plan: InsertSelectPlan,
    rows: Sequence[Sequence[SqlValue]],
    catalog: Catalog,
    fixer: Determinizer,
) -> WritePlan:
    """The INSERT of ``rows`` (what an ``INSERT ... SELECT`` read) into the plan's table:
    each value a parameter, placed as :func:`plan_insert` places literal rows."""
    if len(rows) > MAX_INSERT_ROWS:
        raise SqlLimitError("MAX_INSERT_ROWS", MAX_INSERT_ROWS, "too many rows in one INSERT")
    if rows and len(rows[0]) != len(plan.columns):
        raise SqlSemanticError(
            f"the SELECT gives {len(rows[0])} columns for {len(plan.columns)} in the INSERT"
        )
    values: dict[str, SqlValue] = {}
    tuples = []
    for r, row in enumerate(rows):
        cells = []
        for c, value in enumerate(row):
            name = f"ins_{r}_{c}"
            values[name] = value
            cells.append(exp.Placeholder(this=name))
        tuples.append(exp.Tuple(expressions=cells))
    target = exp.Schema(
        this=table_node(plan.table),
        expressions=[exp.to_identifier(c, quoted=True) for c in plan.columns],
    )
    insert = exp.Insert(this=target, expression=exp.Values(expressions=tuples))
    return plan_insert(insert, catalog, values, fixer)


def plan_update_delete(
    statement: exp.Update | exp.Delete,
    catalog: Catalog,
    values: dict[str, SqlValue],
    fixer: Determinizer,
) -> WritePlan:
    is_update = isinstance(statement, exp.Update)
    allowed = {"this", "where"} | ({"expressions"} if is_update else set())
    _check_clauses(statement, frozenset(allowed))
    scope = _scope(catalog, statement.this)
    tree = statement.copy()
    where = tree.args.get("where")
    bound_where = None
    if isinstance(where, exp.Where):
        bound_where = fixer.fix(
            scope.bind(where.this, aggregates=False, where="in WHERE"), "update"
        )
        tree.set("where", exp.Where(this=bound_where))
    maintenance = IndexMaintenance.of(scope.table, catalog.keyspace(scope.table))
    if isinstance(statement, exp.Update):
        assignments = _assignments(statement, scope, fixer)
        tree.set("expressions", assignments)
        if maintenance is not None and not maintenance.touches(
            a.left.name for a in assignments if isinstance(a, exp.EQ)
        ):
            maintenance = None  # (no entry can change)
    values.update(fixer.values)
    physical = table_node(physical_name(scope.table.name))
    if scope.alias != scope.table.name:
        physical.set("alias", exp.TableAlias(this=exp.to_identifier(scope.alias, quoted=True)))
    tree.set("this", physical)
    router = Router(catalog.keyspace(scope.table))
    reference = scope.table.is_reference
    pruned, why = None, _REFERENCE_WRITE if reference else ""
    if not reference:
        dist = scope.spec(scope.table.distribution_column)
        pruned = Pruner(dist.name, dist.affinity, router, values).shards(bound_where)
        why = "" if pruned is None else f"WHERE on distribution column {dist.name}"
    shards = sorted(router.all_shards() if pruned is None else pruned)
    fragment = _fragment(tree, values)
    batches = tuple(ShardBatch(shard, (fragment,)) for shard in shards)
    return WritePlan(
        "UPDATE" if is_update else "DELETE",
        scope.table.name,
        router.keyspace.name,
        router.shard_count,
        batches,
        pruned_by=why,
        copies=router.shard_count if reference else 1,
        maintenance=maintenance,
    )


def _assignments(statement: exp.Update, scope: Scope, fixer: Determinizer) -> list[exp.Expr]:
    out: list[exp.Expr] = []
    seen: set[str] = set()
    for item in statement.expressions:
        if not isinstance(item, exp.EQ) or not isinstance(item.left, exp.Column):
            raise UnsupportedSqlError("this SET form")
        name = item.left.name
        if item.left.table and item.left.table not in (scope.alias, scope.table.name):
            raise SqlCatalogError(f"there is no table {item.left.table!r} in this statement")
        scope.spec(name)
        if name == scope.table.distribution_column:
            raise DistributionColumnUpdateError(
                f"cannot UPDATE the distribution column {name!r} of {scope.table.name!r}: "
                "the row would move to another shard; DELETE it and INSERT it instead, in one "
                "transaction (BEGIN ... COMMIT) to keep it atomic"
            )
        if name in seen:
            raise SqlSemanticError(f"column {name!r} is assigned twice")
        seen.add(name)
        value = fixer.fix(scope.bind(item.right, aggregates=False, where="in UPDATE"), "update")
        out.append(exp.EQ(this=exp.column(name, quoted=True), expression=value))
    return out


def _fragment(tree: exp.Expr, values: Mapping[str, SqlValue]) -> Fragment:
    used = {str(p.this) for p in tree.find_all(exp.Placeholder) if p.this}
    return Fragment(to_sqlite(tree), {k: values[k] for k in sorted(used)})
