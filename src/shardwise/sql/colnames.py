"""Result column names, as PostgreSQL would print them.

PostgreSQL names an output column by its alias; else a column reference by the column's
name, a function call by the function's name as written (``now``, ``count``,
``approx_count_distinct``), a niladic keyword by itself (``current_timestamp``), ``CASE``
as ``case``, a cast by what it casts or else by the type (``int4``), ``TRUE`` as
``bool``; anything else (an operator, a literal) is ``?column?``.

sqlglot's tree forgets how a function was spelt (``now()`` and ``CURRENT_TIMESTAMP`` are
one node; ``ifnull`` becomes ``COALESCE``), so the parser hands over each select item's
first word (:attr:`~shardwise.sql.parse.ParsedStatement.select_heads`), taken from the
text before anything was rewritten.
"""

from __future__ import annotations

from typing import Final

from sqlglot import exp

UNNAMED: Final = "?column?"

# PostgreSQL's own names of the types a cast can name (its ``pg_type.typname``).
_TYPE_NAMES: Final[dict[str, str]] = {
    "INT": "int4",
    "BIGINT": "int8",
    "SMALLINT": "int2",
    "DOUBLE": "float8",
    "FLOAT": "float4",
    "DECIMAL": "numeric",
    "BOOLEAN": "bool",
    "TEXT": "text",
    "VARCHAR": "varchar",
    "CHAR": "bpchar",
    "VARBINARY": "bytea",
    "TIMESTAMPTZ": "timestamptz",
}

# Nodes whose spelling the tree keeps only as a class, for items with no first word.
_FUNCTION_NAMES: Final[dict[type[exp.Expr], str]] = {
    exp.ApproxDistinct: "approx_count_distinct",
    exp.CurrentTimestamp: "current_timestamp",
    exp.CurrentDate: "current_date",
    exp.CurrentTime: "current_time",
    exp.Localtimestamp: "localtimestamp",
    exp.Localtime: "localtime",
    exp.Case: "case",
}

_OPERATORS: Final = (exp.Binary, exp.Unary, exp.Predicate, exp.Connector)


def column_name(node: exp.Expr, alias: str = "", head: str = "") -> str:
    """The name of a select item ``node`` (its alias removed), given its alias and the
    first word of its text (folded as PostgreSQL folds names, "" when unknown)."""
    if alias:
        return alias
    return _figure(node, head) or UNNAMED


def _figure(node: exp.Expr, head: str) -> str:
    """The name, or "" for one PostgreSQL would not give (``?column?``)."""
    if isinstance(node, exp.Paren):
        return _figure(node.this, "")
    if isinstance(node, exp.Column):
        return node.name if not isinstance(node.this, exp.Star) else ""
    if isinstance(node, exp.Cast):
        inner = _figure(node.this, "")
        if inner:
            return inner
        to = node.to
        if to.this is exp.DataType.Type.USERDEFINED:
            return str(to.args.get("kind") or "").lower()
        kind = str(to.this.name)
        return _TYPE_NAMES.get(kind, kind.lower())
    if isinstance(node, exp.Boolean):
        return "bool"
    if isinstance(node, exp.Func) and not isinstance(node, _OPERATORS):
        if head:
            return head
        if type(node) in _FUNCTION_NAMES:
            return _FUNCTION_NAMES[type(node)]
        if isinstance(node, exp.Anonymous):
            return node.name
        return str(node.sql_name()).lower()
    return ""
