"""Parameters: bound by name, never spliced into SQL text.

User placeholders become named SQLite parameters: ``$3`` (and the third ``?``) is ``:p3``,
``:name`` is ``:n_name``. Values the coordinator computes (``now()``, ``random()`` in an
``INSERT``, a fragment's ``LIMIT``) get names of their own (``:c1``, ``:sw_limit``), so a
fragment is always SQL text plus a dict of values, and the planner reads parameter values
only where it must (shard pruning, ``LIMIT``), never writes them into the text.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final, TypeAlias

from sqlglot import exp

from shardwise.errors import SqlParameterError
from shardwise.sql.values import INT64_MAX, INT64_MIN, MAX_PARAMS, SqlValue

Params: TypeAlias = Sequence[object] | Mapping[str, object]

__all__ = ["MAX_PARAMS"]  # (defined with the values, which the shard side loads)

_NAME: Final = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True, slots=True)
class Bound:
    """A statement whose placeholders are all named SQLite parameters, with the values."""

    statement: exp.Expr
    values: dict[str, SqlValue]


def sql_value(value: object, where: str) -> SqlValue:
    """``value`` as SQLite stores it; refuse what it cannot (and ints beyond 64 bits,
    which SQLite's driver would refuse later, after planning)."""
    if value is None or isinstance(value, str | float):
        return value
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        if not INT64_MIN <= value <= INT64_MAX:
            raise SqlParameterError(f"{where}: {value} does not fit in a 64-bit integer")
        return value
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    raise SqlParameterError(
        f"{where}: cannot bind a {type(value).__name__}; use None, int, float, str or bytes"
    )


def bind(statement: exp.Expr, params: Params | None) -> Bound:
    """Name every placeholder of ``statement`` (a copy) and collect the values."""
    tree = statement.copy()
    positional = list(tree.find_all(exp.Parameter))
    named = [p for p in tree.find_all(exp.Placeholder) if p.this]
    if positional and named:
        raise SqlParameterError("a statement uses either positional or :named placeholders")
    if len(positional) + len(named) > MAX_PARAMS:
        raise SqlParameterError(f"more than MAX_PARAMS={MAX_PARAMS} placeholders")
    values: dict[str, SqlValue] = {}
    if positional:
        values = _bind_positional(positional, params)
    elif named:
        values = _bind_named(named, params)
    elif params:
        raise SqlParameterError(f"the statement takes no parameters, {len(params)} given")
    return Bound(tree, values)


def _bind_positional(nodes: list[exp.Parameter], params: Params | None) -> dict[str, SqlValue]:
    if params is None or isinstance(params, Mapping | str | bytes):
        raise SqlParameterError("positional placeholders take a sequence of values")
    numbers: list[int] = []
    for node in nodes:
        text = node.this.name if isinstance(node.this, exp.Expr) else str(node.this)
        if not text.isdigit() or int(text) < 1:
            raise SqlParameterError(f"bad placeholder ${text}")
        numbers.append(int(text))
    if len(params) != max(numbers):
        raise SqlParameterError(f"the statement takes {max(numbers)} parameters, got {len(params)}")
    values: dict[str, SqlValue] = {}
    for node, number in zip(nodes, numbers, strict=True):
        name = f"p{number}"
        values[name] = sql_value(params[number - 1], f"parameter ${number}")
        node.replace(exp.Placeholder(this=name))
    return values


def _bind_named(nodes: list[exp.Placeholder], params: Params | None) -> dict[str, SqlValue]:
    if not isinstance(params, Mapping):
        raise SqlParameterError(":named placeholders take a mapping of values")
    values: dict[str, SqlValue] = {}
    for node in nodes:
        key = str(node.this)
        if not _NAME.match(key):
            raise SqlParameterError(f"bad placeholder name {key!r}")
        if key not in params:
            raise SqlParameterError(f"no value for :{key}")
        name = f"n_{key}"
        values[name] = sql_value(params[key], f"parameter :{key}")
        node.replace(exp.Placeholder(this=name))
    return values


NOT_CONSTANT: Final = object()
"""What :func:`constant` returns for an expression it cannot evaluate alone."""


def constant(node: exp.Expr, values: Mapping[str, SqlValue]) -> object:
    """The value of a literal, a signed literal, NULL, TRUE/FALSE or a bound parameter;
    :data:`NOT_CONSTANT` for anything else (the planner never evaluates expressions:
    that is the shards' job, with SQLite's exact semantics)."""
    if isinstance(node, exp.Paren):
        return constant(node.this, values)
    if isinstance(node, exp.Null):
        return None
    if isinstance(node, exp.Boolean):
        return 1 if node.this else 0
    if isinstance(node, exp.Placeholder) and node.this in values:
        return values[str(node.this)]
    if isinstance(node, exp.Literal):
        return _literal(node)
    if isinstance(node, exp.Neg):
        inner = constant(node.this, values)
        if isinstance(node.this, exp.Literal) and isinstance(inner, int | float):
            return -inner
    return NOT_CONSTANT


def _literal(node: exp.Literal) -> object:
    text = str(node.this)
    if node.is_string:
        return text
    try:
        number = int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            return NOT_CONSTANT
    # SQLite reads an integer literal too large for 64 bits as a REAL.
    return number if INT64_MIN <= number <= INT64_MAX else float(number)
