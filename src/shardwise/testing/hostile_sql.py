"""Random SQL writes, hostile ones included, for replica determinism tests.

:class:`HostileWrites` makes write batches on one shard's table :data:`TABLE` as a raw
``shard.sql_write`` carries them (SQLite text on the physical table, named parameters):
values of every storage class and column affinity, 64-bit edges and overflow, hex and
blob literals, nested expressions, date functions with and without ``'now'``, functions
that differ between replicas (``random()``, ``sin()``, ``sqlite_version()``...), and
writes that break constraints. Every batch it marks ``refused_by_name`` calls a function
off the write allow-list: a shard must refuse it whatever the data.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Final

from shardwise.model.config import Column, IndexDef, Table
from shardwise.model.sql import SqlStatement

TABLE: Final = Table(
    "h",
    "default",
    "id",
    (
        Column("id", "INTEGER NOT NULL"),
        Column("i", "INTEGER"),
        Column("t", "TEXT"),
        Column("r", "REAL"),
        Column("b", "BLOB"),
        Column("x", ""),
        Column("m", "NUMERIC"),
    ),
    (IndexDef("pkey", ("id",), unique=True),),
)
PHYSICAL: Final = '"sql_h"'
VALUE_COLUMNS: Final = ("i", "t", "r", "b", "x", "m")

_LITERALS: Final = (
    "NULL", "0", "1", "-1", "9223372036854775807", "-9223372036854775808",
    "9223372036854775808", "0x7FFFFFFFFFFFFFFF", "0xFFFFFFFFFFFFFFFF", "0x8000000000000000",
    "0.5", "-0.0", "1e308", "1.7976931348623157e308", "1e-320", "9.223372036854776e18",
    "''", "'abc'", "'123'", "' 42 '", "'1e3'", "'now'", "'ünï'", "'0x10'", "'-0'",
    "x''", "x'00'", "x'31'", "x'ff00'", "'2021-03-04 05:06:07.089'",
)  # fmt: skip
_PARAMS: Final[tuple[Any, ...]] = (
    None, 0, 2**63 - 1, -(2**63), 7, 0.1, -0.0, float("inf"), "text", "42", "now", b"", b"\x00\xff",
)  # fmt: skip
_UNARY: Final = (
    "abs({})", "length({})", "upper({})", "lower({})", "hex({})", "quote({})", "typeof({})",
    "trim({})", "unicode({})", "sqrt({})", "floor({})", "ceil({})", "round({}, 2)",
    "substr({}, 2, 3)", "CAST({} AS INTEGER)", "CAST({} AS REAL)", "CAST({} AS TEXT)",
    "CAST({} AS BLOB)", "CAST({} AS NUMERIC)", "-({})", "json_array({}, 1)",
    "json_object('k', {})", "zeroblob(2) || {}", "date({})", "date({}, '+1 day')",
    "strftime('%Y %j %f', {})", "julianday({})", "unixepoch({})",
    "printf('%d|%s|%.3f', {0}, {0}, {0})",
)  # fmt: skip
_BINARY: Final = (
    "({} + {})", "({} - {})", "({} * {})", "({} / {})", "({} % {})", "({} || {})",
    "({} & {})", "({} << {})", "({} = {})", "({} < {})", "coalesce({}, {})", "max({}, {})",
    "min({}, {})", "nullif({}, {})", "instr({}, {})", "replace({}, 'a', {})", "iif({}, {}, 2)",
)  # fmt: skip
_NOW: Final = (
    "date('now')", "date()", "strftime('%H:%M:%f')", "time()", "julianday('now')",
    "datetime('2020-01-01', 'localtime')", "unixepoch()", "datetime('NOW', '+1 day')",
)  # fmt: skip
REFUSED_BY_NAME: Final = (
    "random()", "randomblob(4)", "sin(1)", "exp(2)", "sqlite_version()", "changes()",
    "last_insert_rowid()", "total_changes()", "CURRENT_TIMESTAMP", "sqlite_source_id()",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Batch:
    statements: tuple[SqlStatement, ...]
    refused_by_name: bool


class HostileWrites:
    """Seeded generator of write batches (see the module's docstring)."""

    def __init__(self, rng: random.Random, ids: int = 40) -> None:
        self._rng = rng
        self._ids = ids
        self._params: dict[str, Any] = {}
        self._refused = False

    def batch(self) -> Batch:
        self._refused = False
        count = self._rng.choice((1, 1, 1, 2, 3))
        statements = tuple(self._statement() for _ in range(count))
        return Batch(statements, self._refused)

    def _statement(self) -> SqlStatement:
        self._params = {}
        kind = self._rng.random()
        if kind < 0.45:
            columns = self._rng.sample(VALUE_COLUMNS, self._rng.randint(1, len(VALUE_COLUMNS)))
            values = [self._expr(2, row=False) for _ in columns]
            verb = self._rng.choice(("INSERT", "INSERT", "INSERT OR REPLACE", "INSERT OR IGNORE"))
            sql = (
                f"{verb} INTO {PHYSICAL} (id, {', '.join(columns)}) "
                f"VALUES ({self._rng.randrange(self._ids)}, {', '.join(values)})"
            )
        elif kind < 0.92:
            columns = self._rng.sample(VALUE_COLUMNS, self._rng.randint(1, 3))
            sets = ", ".join(f"{c} = {self._expr(3, row=True)}" for c in columns)
            sql = f"UPDATE {PHYSICAL} SET {sets} WHERE {self._where()}"
        else:
            sql = f"DELETE FROM {PHYSICAL} WHERE {self._where()}"
        return SqlStatement(sql, dict(self._params))

    def _where(self) -> str:
        if self._rng.random() < 0.5:
            return f"id = {self._rng.randrange(self._ids)}"
        return f"id % {self._rng.randint(2, 5)} = {self._rng.randint(0, 1)}"

    def _expr(self, depth: int, *, row: bool) -> str:
        roll = self._rng.random()
        if roll < 0.03:
            self._refused = True
            return self._rng.choice(REFUSED_BY_NAME)
        if roll < 0.07:
            return self._rng.choice(_NOW)
        if depth <= 0 or roll < 0.35:
            return self._leaf(row)
        if roll < 0.7:
            shape = self._rng.choice(_UNARY)
            return shape.format(self._expr(depth - 1, row=row))
        shape = self._rng.choice(_BINARY)
        return shape.format(self._expr(depth - 1, row=row), self._expr(depth - 1, row=row))

    def _leaf(self, row: bool) -> str:
        roll = self._rng.random()
        if row and roll < 0.35:
            return self._rng.choice(("id", *VALUE_COLUMNS))
        if roll < 0.55:
            name = f"p{len(self._params)}"
            self._params[name] = self._rng.choice(_PARAMS)
            return f":{name}"
        if roll < 0.65:
            return str(self._rng.randint(-(2**63), 2**63 - 1))
        return self._rng.choice(_LITERALS)
