"""Names resolved against the catalog, and the constructs shardwise refuses.

Every column reference is checked against the table and rewritten unqualified (one table
per statement today, so ``t.a`` and ``a`` are the same column and compare equal when the
planner matches GROUP BY keys to select items). Unquoted identifiers were folded to lower
case first, as PostgreSQL does.

The refusals are explicit and name the construct: set operations, window functions,
``FILTER``, ``COLLATE`` and the rest. Statements over several tables (joins,
subqueries, ``WITH``) are planned by :mod:`shardwise.sql.join_plan`, which refuses the
same constructs except those (:data:`REFUSED_IN_ANY_SELECT`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from sqlglot import exp

from shardwise.errors import SqlCatalogError, SqlSemanticError, UnsupportedSqlError
from shardwise.model.config import Table
from shardwise.sql.aggregates import is_aggregate
from shardwise.sql.catalog import Catalog, ColumnSpec

# Expression nodes refused wherever they appear, by the name a user would recognise.
_REFUSED: Final[dict[type[exp.Expr], str]] = {
    exp.Select: "a subquery",
    exp.Subquery: "a subquery",
    exp.Union: "UNION",
    exp.Except: "EXCEPT",
    exp.Intersect: "INTERSECT",
    exp.Exists: "EXISTS",
    exp.Any: "ANY/SOME",
    exp.All: "ALL",
    exp.Window: "a window function (OVER)",
    exp.Filter: "an aggregate FILTER clause",
    exp.WithinGroup: "WITHIN GROUP",
    exp.Collate: "COLLATE",
    exp.Lambda: "a lambda",
    exp.Unnest: "UNNEST",
    exp.Array: "an ARRAY value",
    exp.BitString: "a bit-string literal (B'...')",
    exp.Join: "JOIN",
    exp.Rollup: "GROUP BY ROLLUP",
    exp.Cube: "GROUP BY CUBE",
    exp.GroupingSets: "GROUP BY GROUPING SETS",
}

REFUSED_IN_ANY_SELECT: Final[dict[type[exp.Expr], str]] = {
    kind: name
    for kind, name in _REFUSED.items()
    if kind not in (exp.Select, exp.Subquery, exp.Exists, exp.Join)
}
"""What a statement over several tables still may not hold (subqueries and joins it may)."""

# Select clauses and their names; anything else present in a SELECT is refused.
_SELECT_CLAUSES: Final = frozenset(
    {"expressions", "from_", "where", "group", "having", "order", "limit", "offset", "distinct"}
)
_CLAUSE_NAMES: Final[dict[str, str]] = {
    "with_": "WITH (common table expressions)",
    "joins": "JOIN (planned: co-located, broadcast and repartition joins)",
    "laterals": "LATERAL",
    "locks": "FOR UPDATE/FOR SHARE",
    "windows": "WINDOW",
    "qualify": "QUALIFY",
    "sample": "TABLESAMPLE",
    "into": "SELECT INTO",
    "pivots": "PIVOT",
    "kind": "this SELECT form",
}


_TABLE_PARTS: Final = frozenset({"this", "alias", "quoted"})
_TABLE_ARG_NAMES: Final[dict[str, tuple[str, str]]] = {
    "joins": (
        "a parenthesized or nested join",
        "write the joins one after another: a JOIN b ON ... JOIN c ON ...",
    ),
    "sample": ("TABLESAMPLE", ""),
    "pivots": ("PIVOT", ""),
    "laterals": ("LATERAL", ""),
    "only": ("ONLY", "name the table alone"),
}


def check_table(node: exp.Table) -> None:
    """Refuse what a table reference may carry besides its name and alias (a nested
    join, TABLESAMPLE, ...): each would otherwise be dropped where the table is read."""
    if node.args.get("db") or node.args.get("catalog"):
        raise UnsupportedSqlError("schema-qualified table names")
    alias = node.args.get("alias")
    if isinstance(alias, exp.TableAlias) and alias.columns:
        raise UnsupportedSqlError("column aliases on a table")
    for key, value in node.args.items():
        if value and key not in _TABLE_PARTS:
            name, hint = _TABLE_ARG_NAMES.get(key, (f"{key.upper()} on a table", ""))
            raise UnsupportedSqlError(name, hint)


def check_supported(node: exp.Expr) -> None:
    """Refuse any node of ``node``'s tree that shardwise cannot run."""
    for sub in node.walk():
        for kind, name in _REFUSED.items():
            if isinstance(sub, kind):
                raise UnsupportedSqlError(name)


def check_select_clauses(select: exp.Select, *, allow_joins: bool = False) -> None:
    allowed = _SELECT_CLAUSES | {"joins", "with_"} if allow_joins else _SELECT_CLAUSES
    for key, value in select.args.items():
        if value and key not in allowed:
            raise UnsupportedSqlError(_CLAUSE_NAMES.get(key, key.upper()))
    distinct = select.args.get("distinct")
    if isinstance(distinct, exp.Distinct) and distinct.args.get("on"):
        raise UnsupportedSqlError("DISTINCT ON")
    group = select.args.get("group")
    if isinstance(group, exp.Group):
        for key in ("grouping_sets", "cube", "rollup", "totals", "all"):
            if group.args.get(key):
                raise UnsupportedSqlError(f"GROUP BY {key.upper().replace('_', ' ')}")


@dataclass(frozen=True, slots=True)
class Scope:
    """The one table a statement reads or writes, and the name it goes by in it."""

    table: Table
    alias: str
    columns: tuple[ColumnSpec, ...]
    source: exp.Expr | None = None
    """What shards read instead of the table (a co-located join as a derived table,
    :mod:`shardwise.sql.colocated`); None: the table itself."""
    distributed_alike: tuple[str, ...] = ()
    """Other columns whose value, when not NULL, names the same shard as the
    distribution column's (the joined tables' distribution columns): they prune too."""
    label: str = ""
    """What EXPLAIN calls the source, when it is not the table (the join, as written)."""

    @classmethod
    def of(cls, catalog: Catalog, node: exp.Expr) -> Scope:
        if not isinstance(node, exp.Table) or not isinstance(node.this, exp.Identifier):
            raise UnsupportedSqlError("reading from anything but one table")
        check_table(node)
        table = catalog.table(node.name)
        return cls(table, node.alias or table.name, tuple(catalog.columns(table)))

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    def spec(self, name: str) -> ColumnSpec:
        for column in self.columns:
            if column.name == name:
                return column
        raise SqlCatalogError(f"column {name!r} does not exist in table {self.table.name!r}")

    def star(self) -> list[exp.Expr]:
        return [exp.column(name, quoted=True) for name in self.names]

    def bind(self, node: exp.Expr, *, aggregates: bool, where: str) -> exp.Expr:
        """A copy of ``node`` with its columns checked and unqualified. ``aggregates``:
        whether aggregate calls may appear (not in WHERE, not inside one another)."""
        check_supported(node)
        tree = node.copy()
        for column in list(tree.find_all(exp.Column)):
            if isinstance(column.this, exp.Star):
                raise UnsupportedSqlError(f"{column.sql()} {where}")
            self._check_qualifier(column)
            self.spec(column.name)
            column.replace(exp.column(column.name, quoted=True))
        for call in tree.find_all(exp.Func):
            if not is_aggregate(call):
                continue
            if not aggregates:
                raise SqlSemanticError(f"aggregate functions are not allowed {where}")
            for inner in call.find_all(exp.Func):
                if inner is not call and is_aggregate(inner):
                    raise SqlSemanticError("aggregate function calls cannot be nested")
        if isinstance(tree, exp.Column):
            # ``replace`` cannot swap a tree's root: a lone column is rebuilt here, so a
            # group key ``a`` equals the ``a`` inside ``upper(a)`` or ``a > 3``.
            return exp.column(tree.name, quoted=True)
        return tree

    def _check_qualifier(self, column: exp.Column) -> None:
        if column.args.get("db") or column.args.get("catalog"):
            raise UnsupportedSqlError("schema-qualified column names")
        qualifier = column.table
        if qualifier and qualifier not in (self.alias, self.table.name):
            raise SqlCatalogError(f"there is no table {qualifier!r} in this statement")
        if qualifier and qualifier == self.table.name and self.alias != self.table.name:
            raise SqlCatalogError(f"table {qualifier!r} goes by {self.alias!r} here")


def conjuncts(node: exp.Expr | None) -> list[exp.Expr]:
    """The terms of ``node``'s top-level AND (parentheses looked through)."""
    if node is None:
        return []
    while isinstance(node, exp.Paren):
        node = node.this
    if isinstance(node, exp.And):
        return [*conjuncts(node.left), *conjuncts(node.right)]
    return [node]


def has_aggregate(node: exp.Expr) -> bool:
    return any(is_aggregate(n) for n in node.find_all(exp.Func))
