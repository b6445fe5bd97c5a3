"""Statements made deterministic before they leave the coordinator.

Every replica of a shard applies the same write, and every shard of a read should see
the same instant, so values that depend on when or where a statement runs are fixed at
the coordinator and sent as bound parameters:

* the time (``now()``, ``CURRENT_TIMESTAMP``, ``CURRENT_DATE``, ``CURRENT_TIME``,
  ``LOCALTIMESTAMP``, ``date('now')`` and the other SQLite date functions' ``'now'``, and
  those functions called without a time value, which means ``'now'``: ``date()``,
  ``strftime('%H:%M:%f')``): one instant per statement (as PostgreSQL's ``now()``), UTC,
  in SQLite's text format;
* in a write, the ``'localtime'`` and ``'utc'`` modifiers are refused (they read the
  server's time zone), and so is any function off the allow-list of
  :mod:`shardwise.sql.write_rules` (checked by the coordinator on the statements it
  sends, as the shards will; the shards check again).
* ``random()``, ``randomblob(n)``, ``gen_random_uuid()`` in an ``INSERT``'s values and in
  reads: one value per occurrence, drawn from the statement's seed;
* in ``UPDATE`` and ``DELETE`` they would be per row, so they are refused, as are
  ``changes()``, ``last_insert_rowid()`` and ``total_changes()`` everywhere (they read a
  connection's state, which differs between replicas).

``random()`` in a read stays on the shards (``ORDER BY random()`` wants a value per
row, and a read changes nothing).
"""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final, Literal, TypeAlias

from sqlglot import exp

from shardwise.errors import NondeterministicSqlError
from shardwise.sql.decisions import note_contextual
from shardwise.sql.values import INT64_MAX, INT64_MIN, SqlValue
from shardwise.sql.write_rules import TIME_FUNCTIONS, ZONE_MODIFIERS

Mode: TypeAlias = Literal["read", "insert", "update"]

MAX_RANDOMBLOB_BYTES: Final = 1 << 20

_TIME_NODES: Final[dict[type[exp.Expr], str]] = {
    exp.CurrentTimestamp: "%Y-%m-%d %H:%M:%S",
    exp.Localtimestamp: "%Y-%m-%d %H:%M:%S",
    exp.CurrentDate: "%Y-%m-%d",
    exp.CurrentTime: "%H:%M:%S",
    exp.Localtime: "%H:%M:%S",
}
_TIME_NAMES: Final = frozenset(
    {"now", "clock_timestamp", "statement_timestamp", "transaction_timestamp"}
)
_NOW_ARG_FUNCTIONS: Final = frozenset(
    {"date", "time", "datetime", "julianday", "unixepoch", "strftime", "timediff"}
)
_STATEFUL: Final = frozenset({"changes", "last_insert_rowid", "total_changes"})


@dataclass(frozen=True, slots=True)
class StatementContext:
    """What the coordinator fixes for one statement: its instant and its random seed."""

    now: datetime
    seed: int

    @classmethod
    def fixed(cls, seed: int = 0) -> StatementContext:
        """A context for tests and plan fixtures: always the same instant."""
        return cls(datetime(2000, 1, 1, tzinfo=UTC), seed)


class Determinizer:
    """Replaces the nondeterministic parts of trees with parameters ``c1``, ``c2``..."""

    def __init__(self, context: StatementContext) -> None:
        self._now = context.now.astimezone(UTC)
        self._rng = random.Random(context.seed)
        self.values: dict[str, SqlValue] = {}

    def _param(self, value: SqlValue) -> exp.Placeholder:
        note_contextual()  # (the plan holds this statement's instant or seed)
        name = f"c{len(self.values) + 1}"
        self.values[name] = value
        return exp.Placeholder(this=name)

    def fix(self, tree: exp.Expr, mode: Mode) -> exp.Expr:
        def visit(node: exp.Expr) -> exp.Expr:
            return self._replace(node, mode)

        return tree.transform(visit, copy=True)

    def _replace(self, node: exp.Expr, mode: Mode) -> exp.Expr:
        name = node.name.lower() if isinstance(node, exp.Anonymous) else ""
        if name in TIME_FUNCTIONS or isinstance(node, _TIME_FUNCTION_NODES):
            self._fix_time_function(node, name, mode)
        if type(node) in _TIME_NODES:
            return self._param(self._now.strftime(_TIME_NODES[type(node)]))
        if name in _TIME_NAMES:
            return self._param(self._now.strftime("%Y-%m-%d %H:%M:%S"))
        if name in _STATEFUL:
            raise NondeterministicSqlError(f"{name}() reads connection state")
        if _is_now_literal(node) and _in_date_function(node):
            return self._param(self._now.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3])
        if isinstance(node, exp.Rand) or name == "random":
            if node.this is not None if isinstance(node, exp.Rand) else node.expressions:
                raise NondeterministicSqlError("random() takes no seed")
            return node if mode == "read" else self._random(mode, "random()", self._int)
        if name == "randomblob":
            if mode == "read":
                return node
            return self._random(mode, "randomblob()", lambda: self._blob(node))
        if isinstance(node, exp.Uuid) or name == "gen_random_uuid":
            return self._random(mode, "gen_random_uuid()", self._uuid)
        return node

    def _fix_time_function(self, node: exp.Expr, name: str, mode: Mode) -> None:
        """Give a date function without a time value the statement's instant (SQLite
        reads the clock there); refuse a time zone modifier in a write."""
        args = list(node.iter_expressions())
        first = TIME_FUNCTIONS.get(name, 0)
        if len(args) <= first:
            now = self._param(self._now.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3])
            if isinstance(node, exp.Anonymous):
                node.append("expressions", now)
            else:
                node.set("this", now)
        if mode == "read":
            return
        for arg in args[first + 1 :]:
            text = str(arg.this).lower() if isinstance(arg, exp.Literal) else ""
            for zone in ZONE_MODIFIERS:
                if arg.is_string and zone in text:
                    raise NondeterministicSqlError(
                        f"the {zone!r} modifier depends on the server's time zone; "
                        "convert the time before writing it"
                    )

    def _random(self, mode: Mode, what: str, make: object) -> exp.Expr:
        if mode == "update":
            raise NondeterministicSqlError(
                f"{what} in UPDATE or DELETE gives each row its own value, which replicas "
                "cannot agree on; compute the value first and bind it as a parameter"
            )
        assert callable(make)
        value: SqlValue = make()
        return self._param(value)

    def _int(self) -> int:
        return self._rng.randint(INT64_MIN, INT64_MAX)

    def _uuid(self) -> str:
        return str(uuid.UUID(int=self._rng.getrandbits(128), version=4))

    def _blob(self, node: exp.Expr) -> bytes:
        args = list(node.expressions)
        size = args[0] if len(args) == 1 else None
        if not isinstance(size, exp.Literal) or size.is_string or not str(size.this).isdigit():
            raise NondeterministicSqlError("randomblob() in a write takes a literal size")
        count = max(1, int(str(size.this)))
        if count > MAX_RANDOMBLOB_BYTES:
            raise NondeterministicSqlError(f"randomblob() over {MAX_RANDOMBLOB_BYTES} bytes")
        return self._rng.randbytes(count)


_TIME_FUNCTION_NODES: Final = (exp.Date, exp.Datetime, exp.Time)
"""How sqlglot reads SQLite's ``date``, ``datetime`` and ``time``."""


def _is_now_literal(node: exp.Expr) -> bool:
    return isinstance(node, exp.Literal) and node.is_string and str(node.this).lower() == "now"


def _in_date_function(node: exp.Expr) -> bool:
    parent = node.parent
    if isinstance(parent, exp.Anonymous):
        return parent.name.lower() in _NOW_ARG_FUNCTIONS
    return isinstance(parent, exp.Date | exp.Datetime | exp.Time | exp.TimeToStr)
