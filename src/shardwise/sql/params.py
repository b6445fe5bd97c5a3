"""Parameters: bound by name, never spliced into SQL text.

User placeholders become named SQLite parameters: ``$3`` (and the third ``?``) is ``:p3``,
``:name`` is ``:n_name``. Values the coordinator computes (``now()``, ``random()`` in an
``INSERT``, a fragment's ``LIMIT``) get names of their own (``:c1``, ``:sw_limit``), so a
fragment is always SQL text plus a dict of values, and the planner reads parameter values
only where it must (shard pruning, ``LIMIT``), never writes them into the text.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final, TypeAlias, TypeVar

from sqlglot import exp

from shardwise.errors import SqlParameterError
from shardwise.sql.decisions import EXACT, note
from shardwise.sql.values import INT64_MAX, INT64_MIN, MAX_PARAMS, SqlValue

Params: TypeAlias = Sequence[object] | Mapping[str, object]

__all__ = ["MAX_PARAMS"]  # (defined with the values, which the shard side loads)

T = TypeVar("T", bound=Hashable)

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


@dataclass(frozen=True, slots=True)
class Placeholders:
    """A statement's placeholders as written, in order: enough to bind new values
    without its tree (the plan cache binds each execution's values with it)."""

    positional: tuple[str, ...] = ()
    """The text after each ``$`` (``?`` are numbered ``$n`` by the parser)."""
    named: tuple[str, ...] = ()
    """The name after each ``:``."""


def placeholders(statement: exp.Expr) -> Placeholders:
    return Placeholders(
        tuple(_number_text(node) for node in statement.find_all(exp.Parameter)),
        tuple(str(p.this) for p in statement.find_all(exp.Placeholder) if p.this),
    )


def bind(statement: exp.Expr, params: Params | None) -> Bound:
    """Name every placeholder of ``statement`` (a copy) and collect the values."""
    tree = statement.copy()
    positional = list(tree.find_all(exp.Parameter))
    named = [p for p in tree.find_all(exp.Placeholder) if p.this]
    written = Placeholders(tuple(map(_number_text, positional)), tuple(str(p.this) for p in named))
    values, names = bind_values(written, params)
    for node, name in zip([*positional, *named], names, strict=True):
        node.replace(exp.Placeholder(this=name))
    return Bound(tree, values)


def bind_values(
    written: Placeholders, params: Params | None
) -> tuple[dict[str, SqlValue], list[str]]:
    """The values of ``params`` for the placeholders ``written``, by their SQLite names,
    and each placeholder's name in order (what :func:`bind` writes into the tree)."""
    positional, named = written.positional, written.named
    if positional and named:
        raise SqlParameterError("a statement uses either positional or :named placeholders")
    if len(positional) + len(named) > MAX_PARAMS:
        raise SqlParameterError(f"more than MAX_PARAMS={MAX_PARAMS} placeholders")
    if positional:
        return _bind_positional(positional, params)
    if named:
        return _bind_named(named, params)
    if params:
        raise SqlParameterError(f"the statement takes no parameters, {len(params)} given")
    return {}, []


def _number_text(node: exp.Parameter) -> str:
    return node.this.name if isinstance(node.this, exp.Expr) else str(node.this)


def _bind_positional(
    texts: tuple[str, ...], params: Params | None
) -> tuple[dict[str, SqlValue], list[str]]:
    if params is None or isinstance(params, Mapping | str | bytes):
        raise SqlParameterError("positional placeholders take a sequence of values")
    numbers: list[int] = []
    for text in texts:
        if not text.isdigit() or int(text) < 1:
            raise SqlParameterError(f"bad placeholder ${text}")
        numbers.append(int(text))
    if len(params) != max(numbers):
        raise SqlParameterError(f"the statement takes {max(numbers)} parameters, got {len(params)}")
    values: dict[str, SqlValue] = {}
    names: list[str] = []
    for number in numbers:
        name = f"p{number}"
        values[name] = sql_value(params[number - 1], f"parameter ${number}")
        names.append(name)
    return values, names


def _bind_named(
    keys: tuple[str, ...], params: Params | None
) -> tuple[dict[str, SqlValue], list[str]]:
    if not isinstance(params, Mapping):
        raise SqlParameterError(":named placeholders take a mapping of values")
    values: dict[str, SqlValue] = {}
    names: list[str] = []
    for key in keys:
        if not _NAME.match(key):
            raise SqlParameterError(f"bad placeholder name {key!r}")
        if key not in params:
            raise SqlParameterError(f"no value for :{key}")
        name = f"n_{key}"
        values[name] = sql_value(params[key], f"parameter :{key}")
        names.append(name)
    return values, names


NOT_CONSTANT: Final = object()
"""What :func:`constant` returns for an expression it cannot evaluate alone."""


def constant(node: exp.Expr, values: Mapping[str, SqlValue]) -> object:
    """The value of a literal, a signed literal, NULL, TRUE/FALSE or a bound parameter;
    :data:`NOT_CONSTANT` for anything else (the planner never evaluates expressions:
    that is the shards' job, with SQLite's exact semantics). A parameter's value read
    here is a decision of the plan (:mod:`shardwise.sql.decisions`): the value itself."""
    value, name = _constant(node, values)
    if name is not None:
        note(name, EXACT, EXACT(value))
    return value


def decided(node: exp.Expr, values: Mapping[str, SqlValue], derivation: Callable[[object], T]) -> T:
    """``derivation`` of :func:`constant`'s value of ``node``: when that is a parameter's,
    the decision of the plan is the derived result, not the value (the shards a value
    pins: any value on the same shards makes the same plan)."""
    value, name = _constant(node, values)
    result = derivation(value)
    if name is not None:
        note(name, derivation, result)
    return result


def _constant(node: exp.Expr, values: Mapping[str, SqlValue]) -> tuple[object, str | None]:
    """:func:`constant`'s value, and the parameter it is the value of (None: none)."""
    if isinstance(node, exp.Paren):
        return _constant(node.this, values)
    if isinstance(node, exp.Null):
        return None, None
    if isinstance(node, exp.Boolean):
        return (1 if node.this else 0), None
    if isinstance(node, exp.Placeholder) and node.this in values:
        name = str(node.this)
        return values[name], name
    if isinstance(node, exp.Literal):
        return _literal(node), None
    if isinstance(node, exp.Neg) and isinstance(node.this, exp.Literal):
        inner = _literal(node.this)
        if isinstance(inner, int | float):
            return -inner, None
    return NOT_CONSTANT, None


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
