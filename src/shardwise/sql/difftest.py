"""A differential test kit: one schema and data set, a seeded query generator, and a
comparison of results, to check shardwise's SQL against a single SQLite database.

Used by ``tests/sql/test_differential.py`` over :class:`~shardwise.sql.LocalShards`, and
meant for the same check over a real cluster. Everything is drawn from one
``random.Random``, so a seed names a data set and a query sequence exactly.

Queries are built so that their answer is unique (or equal within float tolerance):
ORDER BY covers every output column (exact ones first) or ends with the unique ``id``,
so LIMIT cannot pick between tied rows, and REAL data are multiples of 1/4, so sums and
averages are exact whatever order shards add them in; only the variance family, and
averages and totals of 64-bit values, are compared with a tolerance.

The reference runs each query's text as written (generated queries use only syntax
SQLite reads the same way, ``?`` placeholders included), so shardwise's own parsing
and rewriting are under test too. The data and queries reach the corners where
distributed answers went wrong before: an untyped column holding every storage class
(integer-looking text, blobs, reals), 64-bit edge values whose sums overflow, a NUMERIC
column, hex and blob literals, expressions over group keys and HAVING comparing a key
with a literal of the other type, DISTINCT aggregates over mixed types, deep nesting,
LIMIT near 2**63, an empty table and a range keyspace with rows on its split points.
When the reference refuses a query (an integer overflow), shardwise must refuse it too.
"""

from __future__ import annotations

import itertools
import math
import random
import sqlite3
import statistics
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Final, Protocol

from sqlglot.optimizer.normalize_identifiers import normalize_identifiers

from shardwise.errors import ShardwiseError, SqlLimitError
from shardwise.sql.aggregates import shard_function
from shardwise.sql.dialect import DIALECT, to_sqlite
from shardwise.sql.functions import register
from shardwise.sql.numeric import as_real
from shardwise.sql.params import bind
from shardwise.sql.parse import parse_statement
from shardwise.sql.values import INT64_MAX, SqlValue

Row = tuple[SqlValue, ...]

COLUMNS: Final = ("g", "h", "x", "y", "s", "v", "big", "n")
_DECLARATIONS: Final = "g INTEGER, h TEXT, x INTEGER, y REAL, s TEXT, v, big INTEGER, n NUMERIC"
RANGE_KEYSPACE: Final = "ranged"
RANGE_SPLITS: Final = ("k1", "k4", "k7")
"""The split points of the range keyspace; table ``r`` has rows on each of them."""
TABLES: Final = {
    # name: (type of id, rows, keyspace); "e" stays empty, "u" has so few rows most
    # shards are empty, "r" lives in a range keyspace
    "t": ("INTEGER", 400, "default"),
    "e": ("INTEGER", 0, "default"),
    "u": ("TEXT", 5, "default"),
    "r": ("TEXT", 60, RANGE_KEYSPACE),
}
DEFAULT_TABLES: Final = ("t", "e", "u")
"""The tables of the default keyspace alone (for clusters without the range keyspace)."""
_TABLE_WEIGHTS: Final = {"t": 7, "e": 1, "u": 1, "r": 2}
_H: Final = (None, "a", "b", "c", "A", "é", "")
_S: Final = (None, "apple", "apricot", "banana", "b", "", "zeta", "Apple", "x%y")
# Every storage class, integer-looking text among them; no integral REAL, so no group or
# DISTINCT set mixes 1 with 1.0 (SQLite keeps whichever row came first).
_V: Final[tuple[SqlValue, ...]] = (
    None, 0, 2, 7, -3, "7", " 3", "007", "2.5", "12abc", "a", "", 2.5, 0.25, -1.75,
    b"\x07", b"7", b"",
)  # fmt: skip
# 64-bit edges, all >= 0: whether a SUM overflows then does not depend on row order.
_BIG: Final[tuple[SqlValue, ...]] = (
    None, 0, 1, INT64_MAX, INT64_MAX - 1, 1 << 62, (1 << 53) + 1,
)  # fmt: skip
_N: Final[tuple[SqlValue, ...]] = (None, 7, 2, -3, 2.5, 0.75, "7", "abc")
REL_TOLERANCE: Final = 1e-9


def create_statements(tables: Sequence[str] = tuple(TABLES)) -> list[str]:
    """The shardwise DDL of the test tables."""
    return [
        f"CREATE TABLE {name} (id {TABLES[name][0]} PRIMARY KEY, {_DECLARATIONS}) "
        f"WITH (distribution = 'id', keyspace = '{TABLES[name][2]}')"
        for name in tables
    ]


class Executes(Protocol):
    """A coordinator, or anything that runs a statement and says the rows it changed."""

    async def execute(self, sql: str, params: Sequence[SqlValue]) -> _Changed: ...


class _Changed(Protocol):
    @property
    def rowcount(self) -> int: ...


async def load(
    target: Executes, data: dict[str, list[Row]], rng: random.Random, ddl: Sequence[str]
) -> None:
    """Run ``ddl``, then INSERT ``data`` in multi-row statements of random sizes, the
    values bound as numbered parameters; each must report its rows inserted."""
    for statement in ddl:
        await target.execute(statement, [])
    for name, rows in data.items():
        start = 0
        while start < len(rows):
            chunk = rows[start : start + rng.randint(1, 60)]
            start += len(chunk)
            width = len(chunk[0])
            marks = ", ".join(
                "(" + ", ".join(f"${width * i + j + 1}" for j in range(width)) + ")"
                for i in range(len(chunk))
            )
            params = [value for row in chunk for value in row]
            result = await target.execute(f"INSERT INTO {name} VALUES {marks}", params)
            assert result.rowcount == len(chunk), (name, result.rowcount, len(chunk))


def reference_ddl(tables: Sequence[str] = tuple(TABLES)) -> list[str]:
    return [
        f"CREATE TABLE {name} (id {TABLES[name][0]} PRIMARY KEY, {_DECLARATIONS})"
        for name in tables
    ]


def make_rows(rng: random.Random, tables: Sequence[str] = tuple(TABLES)) -> dict[str, list[Row]]:
    data: dict[str, list[Row]] = {}
    for name in tables:
        kind, count, _ = TABLES[name]
        ids = rng.sample(range(-50, count * 3), count)
        keys: list[SqlValue] = [i if kind == "INTEGER" else f"k{i}" for i in ids]
        if name == "r":  # rows on the split points and just beside them
            edges: list[SqlValue] = [*RANGE_SPLITS, *(p + "0" for p in RANGE_SPLITS), "k", "k0"]
            keys = edges + [k for k in keys if k not in edges][: count - len(edges)]
        rows: list[Row] = []
        for key in keys:
            rows.append(
                (
                    key,
                    None if rng.random() < 0.1 else rng.randint(0, 6),
                    rng.choice(_H),
                    None if rng.random() < 0.15 else rng.randint(-20, 20),
                    None if rng.random() < 0.15 else rng.randint(-40, 40) / 4,
                    rng.choice(_S),
                    rng.choice(_V),
                    rng.choice(_BIG),
                    rng.choice(_N),
                )
            )
        data[name] = rows
    return data


# --- the reference database ------------------------------------------------------------


class _Collect:
    def __init__(self) -> None:
        self.values: list[float] = []

    def step(self, value: SqlValue) -> None:
        if value is not None:
            self.values.append(as_real(value))


def _naive(which: str) -> type:
    """Two-pass statistics over every value (the shards' Welford/Chan is checked against
    these), exact through :mod:`statistics`' own rational arithmetic."""

    class _Stat(_Collect):
        def finalize(self) -> float | None:
            sample = which.endswith("_samp")
            if len(self.values) < (2 if sample else 1):
                return None
            var = statistics.variance(self.values) if sample else statistics.pvariance(self.values)
            return math.sqrt(var) if which.startswith("stddev") else float(var)

    return _Stat


_STATISTIC_ALIASES: Final = {"variance": "var_samp", "stddev": "stddev_samp"}


def reference_database(data: dict[str, list[Row]]) -> sqlite3.Connection:
    conn = sqlite3.connect(":memory:", isolation_level=None)
    register(conn)  # approx_count_distinct: the same sketch, over all rows at once
    for which in ("var_samp", "var_pop", "stddev_samp", "stddev_pop"):
        conn.create_aggregate(which, 1, _naive(which))
    for alias, which in _STATISTIC_ALIASES.items():  # PostgreSQL's names, run as written
        conn.create_aggregate(alias, 1, _naive(which))
    for ddl in reference_ddl(list(data)):
        conn.execute(ddl)
    for name, rows in data.items():
        marks = ", ".join("?" * (len(COLUMNS) + 1))
        conn.executemany(f"INSERT INTO {name} VALUES ({marks})", rows)
    return conn


def reference_query(sql: str, params: Sequence[SqlValue]) -> tuple[str, dict[str, SqlValue]]:
    """``sql`` for the reference database: parsed, bound and printed as SQLite exactly as
    for shards, but whole and over the tables' own names."""
    parsed = parse_statement(sql)
    tree = normalize_identifiers(parsed.statement, dialect=DIALECT)
    bound = bind(tree, list(params) if params else None)
    return to_sqlite(shard_function(bound.statement)), bound.values


# --- queries ---------------------------------------------------------------------------


@dataclass(slots=True)
class Query:
    sql: str
    params: list[SqlValue] = field(default_factory=list)
    ordered: bool = False
    """The result's order is part of the answer (ORDER BY covers the output)."""
    past_limit: bool = False
    """Nested past the parser's bound: shardwise refuses it with ``SqlLimitError``."""


_EXACT_AGGREGATES: Final = (
    "count(*)",
    "count(x)",
    "count(h)",
    "sum(x)",
    "sum(y)",
    "total(x)",
    "avg(x)",
    "avg(y)",
    "min(x)",
    "max(x)",
    "min(h)",
    "max(s)",
    "min(y)",
    "count(DISTINCT h)",
    "count(DISTINCT g)",
    "sum(DISTINCT x)",
    "avg(DISTINCT g)",
    # coalesce: shardwise counts nothing as 0; the reference's Python aggregate, never
    # stepped, can only give NULL
    "coalesce(approx_count_distinct(s), 0)",
    "coalesce(approx_count_distinct(x), 0)",
    "max(x) - min(x)",
    "sum(x) + count(*)",
    "count(*) * 2",
    "coalesce(sum(x), 0) / (count(*) + 1)",
    "avg(y) * 2",
    # every storage class in one column, integer-looking text among them
    "sum(DISTINCT v)",
    "sum(DISTINCT v) / 2",
    "typeof(sum(DISTINCT v))",
    "total(DISTINCT v)",
    "count(DISTINCT v)",
    "min(v)",
    "max(v)",
    "sum(v)",
    "typeof(max(v))",
    # 64-bit edges: SUM overflows (both sides refuse), AVG and COUNT do not
    "sum(big)",
    "count(big)",
    "min(big)",
    "max(big)",
    "sum(DISTINCT n)",
    "max(n) / 2",
)
_INEXACT_AGGREGATES: Final = (
    "variance(x)",
    "var_samp(y)",
    "var_pop(x)",
    "stddev(y)",
    "stddev_samp(x)",
    "stddev_pop(y)",
    "avg(big)",
    "total(big)",
    "avg(v)",
)
_GROUP_KEYS: Final = (
    "g", "h", "x % 3", "g + 1", "lower(h)", "y > 0", "coalesce(g, -1)", "s", "v", "n",
    "CAST(v AS INTEGER)", "CAST(x AS TEXT)", "big",
)  # fmt: skip
# Expressions over a group key that is one column (PostgreSQL allows them).
_KEY_EXPRESSIONS: Final = {
    "g": ("g * 2", "coalesce(g, 0) + 1", "typeof(g)", "{table}.g"),
    "h": ("upper(h)", "length(h)", "h || 'z'", "{table}.h"),
    "s": ("lower(s)", "s IS NULL", "{table}.s"),
    "v": ("typeof(v)", "v = 7", "v || ''", "{table}.v"),
    "n": ("n / 2", "typeof(n)", "{table}.n"),
    "big": ("big / 2", "big = 9223372036854775807", "{table}.big"),
}
# HAVING on a key compared with a literal of the other storage class: the key's
# affinity (a column's, a CAST's) decides, at the coordinator as on a shard.
_KEY_LITERALS: Final = {
    "g": ("g = '3'", "g > '2'", "g IN ('1', '4')"),
    "h": ("h = 'a'", "h > 1", "h <> 0"),
    "s": ("s >= 'b'",),
    "v": ("v = '7'", "v = 7", "v > 1"),
    "n": ("n = '7'", "n < '3'"),
    "big": ("big = '9223372036854775807'", "big > '1'"),
    "CAST(v AS INTEGER)": ("CAST(v AS INTEGER) = '7'", "CAST(v AS INTEGER) > '1'"),
    "CAST(x AS TEXT)": ("CAST(x AS TEXT) = 5", "CAST(x AS TEXT) < 2"),
    "x % 3": ("x % 3 = '1'",),
}
_PROJECTIONS: Final = (
    "id", "g", "h", "x", "y", "s", "x + g", "upper(h)", "y * 2", "length(s)", "v",
    "typeof(v)", "big", "n", "n / 2", "typeof(n)", "CAST(x AS NUMERIC) / 2",
    "CAST(y AS DECIMAL) / 2", "0x10", "x + 0xFFFFFFFFFFFFFFFF", "x'0a'", "v = x'07'",
    "big - 0x7FFFFFFFFFFFFFFF",
)  # fmt: skip
LARGEST_LIMIT: Final = INT64_MAX
NESTING: Final = 30
"""Deepest nesting the generator writes (within the parser's MAX_NESTING_DEPTH)."""


class QueryGenerator:
    """Random queries over the test tables, reproducible from ``rng``."""

    def __init__(self, rng: random.Random, data: dict[str, list[Row]]) -> None:
        self.rng = rng
        self.ids = {name: [r[0] for r in rows] for name, rows in data.items()}

    def next(self) -> Query:
        kind = self.rng.choices(
            ["rows", "distinct", "scalar", "grouped", "by_id", "pinned", "keys", "literals"],
            weights=[3, 1, 2, 4, 1, 2, 3, 1],
        )[0]
        names = list(self.ids)
        table = self.rng.choices(names, weights=[_TABLE_WEIGHTS[n] for n in names])[0]
        query = Query("")
        if kind == "literals":
            self._literals(query)
            return query
        where = self._where(table, query, pinned=kind == "pinned")
        if kind in ("rows", "pinned"):
            self._rows(table, where, query)
        elif kind == "distinct":
            self._distinct(table, where, query)
        elif kind == "scalar":
            self._aggregate(table, where, query, [])
        elif kind == "grouped":
            keys = self.rng.sample(_GROUP_KEYS, self.rng.choice([1, 1, 2]))
            self._aggregate(table, where, query, keys)
        elif kind == "keys":
            self._key_expressions(table, where, query)
        else:
            self._aggregate(table, where, query, ["id"])
        return query

    # -- pieces --

    def _value(self, query: Query, value: SqlValue) -> str:
        if self.rng.random() < 0.25:  # a bound parameter instead of a literal
            query.params.append(value)
            return "?"
        if isinstance(value, str):
            return "'" + value.replace("'", "''") + "'"
        if isinstance(value, bytes):
            return f"x'{value.hex()}'"
        if isinstance(value, int) and value >= 0 and self.rng.random() < 0.2:
            return hex(value)  # SQLite and PostgreSQL 16 read 0x1f as the integer 31
        return repr(value)

    def _nest(self, text: str) -> str:
        """``text``, now and then in parentheses, rarely nested nearly as deep as the
        parser allows."""
        roll = self.rng.random()
        if roll < 0.9:
            return text
        depth = self.rng.randint(1, NESTING if roll > 0.97 else 4)
        return "(" * depth + text + ")" * depth

    def _condition(self, query: Query) -> str:
        rng = self.rng
        v = self._value
        choices: list[Callable[[], str]] = [
            lambda: f"x > {v(query, rng.randint(-20, 20))}",
            lambda: f"x <= {v(query, rng.randint(-20, 20))}",
            lambda: f"g = {v(query, rng.randint(0, 6))}",
            lambda: "g IS NULL",
            lambda: "h IS NOT NULL",
            lambda: f"h IN ({v(query, rng.choice(_H[1:]))}, 'b')",
            lambda: f"y BETWEEN {rng.randint(-10, 0)} AND {rng.randint(0, 10)}",
            lambda: "s LIKE 'a%'",
            lambda: f"NOT (x = {rng.randint(-5, 5)})",
            lambda: f"x + g > {rng.randint(-10, 10)}",
            lambda: "y IS NULL OR x IS NULL",
            lambda: f"coalesce(h, 'z') < {v(query, rng.choice(['a', 'b', 'c', 'z']))}",
            lambda: f"g = 0x{rng.randint(0, 6):02x}",
            lambda: f"v = {v(query, rng.choice(_V[1:]))}",
            lambda: rng.choice(["v = x'07'", "v > x''", "v < 'a'", "typeof(v) = 'text'"]),
            lambda: f"big >= {v(query, rng.choice(_BIG[1:]))}",
            lambda: "big > 0x4000000000000000",
            lambda: f"n = {v(query, rng.choice(_N[1:]))}",
        ]
        return self._nest(rng.choice(choices)())

    def _where(self, table: str, query: Query, pinned: bool) -> str:
        parts = []
        if pinned:
            ids = self.ids[table] or [1]
            if self.rng.random() < 0.5:
                parts.append(f"id = {self._value(query, self.rng.choice(ids))}")
            else:
                chosen = [self._value(query, self.rng.choice(ids)) for _ in range(3)]
                parts.append(f"id IN ({', '.join(chosen)})")
        for _ in range(self.rng.choice([0, 1, 1, 2])):
            parts.append(self._condition(query))
        if len(parts) == 2 and not pinned and self.rng.random() < 0.3:
            return f" WHERE ({parts[0]}) OR ({parts[1]})"
        return f" WHERE {' AND '.join(f'({p})' for p in parts)}" if parts else ""

    def _limit(self, query: Query) -> str:
        roll = self.rng.random()
        if roll < 0.4:
            return ""
        count = LARGEST_LIMIT if roll > 0.93 else self.rng.randint(0, 12)
        limit = f" LIMIT {self._value(query, count)}"
        if roll < 0.7:
            return limit
        return f"{limit} OFFSET {self._value(query, self.rng.randint(0, 15))}"

    def _direction(self) -> str:
        direction = self.rng.choice(["", " ASC", " DESC"])
        nulls = self.rng.choice(["", "", " NULLS FIRST", " NULLS LAST"])
        return direction + nulls

    def _rows(self, table: str, where: str, query: Query) -> None:
        columns = [self._nest(c) for c in self.rng.sample(_PROJECTIONS, self.rng.randint(1, 4))]
        select = ", ".join(columns) if self.rng.random() > 0.1 else "*"
        width = len(COLUMNS) + 1 if select == "*" else len(columns)
        sql = f"SELECT {select} FROM {table}{where}"
        if self.rng.random() < 0.6:
            if self.rng.random() < 0.5:
                hidden = self.rng.choice(["y", "x", "s", "g", "v", "big"])
                order = f"{hidden}{self._direction()}, id{self._direction()}"
            else:
                positions = list(range(1, width + 1))
                self.rng.shuffle(positions)
                order = ", ".join(f"{p}{self._direction()}" for p in positions)
                order += f", id{self._direction()}" if "id" not in columns else ""
            sql += f" ORDER BY {order}{self._limit(query)}"
            query.ordered = True
        query.sql = sql

    def _distinct(self, table: str, where: str, query: Query) -> None:
        choices = ["g", "h", "x % 2", "s", "lower(h)", "v", "n", "typeof(v)"]
        columns = self.rng.sample(choices, self.rng.randint(1, 2))
        sql = f"SELECT DISTINCT {', '.join(columns)} FROM {table}{where}"
        if self.rng.random() < 0.6:
            order = ", ".join(f"{i}{self._direction()}" for i in range(1, len(columns) + 1))
            sql += f" ORDER BY {order}{self._limit(query)}"
            query.ordered = True
        query.sql = sql

    def _aggregate(
        self,
        table: str,
        where: str,
        query: Query,
        keys: list[str],
        *,
        shown: list[str] | None = None,
        having: str = "",
    ) -> None:
        exact = self.rng.sample(_EXACT_AGGREGATES, self.rng.randint(1, 3))
        inexact = self.rng.sample(_INEXACT_AGGREGATES, self.rng.choice([0, 0, 1]))
        outputs = [*(shown if shown is not None else keys), *exact, *inexact]
        distinct = "DISTINCT " if keys and self.rng.random() < 0.1 else ""
        sql = f"SELECT {distinct}{', '.join(outputs)} FROM {table}{where}"
        if keys:
            sql += f" GROUP BY {', '.join(keys)}"
            conditions = [having] if having else []
            if self.rng.random() < 0.3:
                conditions.append(f"count(*) > {self._value(query, self.rng.randint(0, 30))}")
            if conditions:
                sql += " HAVING " + " AND ".join(conditions)
        if keys and self.rng.random() < 0.6:
            exact_positions = list(range(1, len(outputs) - len(inexact) + 1))
            self.rng.shuffle(exact_positions)
            positions = exact_positions + list(range(len(exact_positions) + 1, len(outputs) + 1))
            order = ", ".join(f"{p}{self._direction()}" for p in positions)
            sql += f" ORDER BY {order}{self._limit(query)}"
            query.ordered = True
        query.sql = sql

    def _key_expressions(self, table: str, where: str, query: Query) -> None:
        """GROUP BY plain columns (now and then qualified), the select list showing
        expressions over them, HAVING comparing a key with the other type's literal."""
        keys = self.rng.sample(sorted(_KEY_EXPRESSIONS), self.rng.choice([1, 1, 2]))
        if self.rng.random() < 0.3:
            keys.append(self.rng.choice(["CAST(v AS INTEGER)", "CAST(x AS TEXT)", "x % 3"]))
        shown: list[str] = []
        for key in keys:
            options = _KEY_EXPRESSIONS.get(key, (key,))
            choice = self.rng.choice([key, *options])
            shown.append(self._nest(choice.format(table=table)))
        having = ""
        if self.rng.random() < 0.7:
            key = self.rng.choice([k for k in keys if k in _KEY_LITERALS] or keys)
            if key in _KEY_LITERALS:
                having = self.rng.choice(_KEY_LITERALS[key])
        grouped = [f"{table}.{k}" if k in _KEY_EXPRESSIONS and self.rng.random() < 0.2 else k
                   for k in keys]  # fmt: skip
        self._aggregate(table, where, query, grouped, shown=shown, having=having)

    def _literals(self, query: Query) -> None:
        """A statement with no table: hex and blob literals, 64-bit edges, nesting."""
        items = self.rng.sample(
            [
                "0x10", "0xFFFFFFFFFFFFFFFF", "0x7FFFFFFFFFFFFFFF", "0x8000000000000000",
                "x'0a'", "X''", "typeof(0x05)", "0x05 = 5", "x'05' = 5", "5 - 0xFFFFFFFFFFFFFFFF",
                "CAST(7 AS NUMERIC) / 2", "CAST('7.5' AS DECIMAL) * 2", "9223372036854775807",
                "-9223372036854775808", "9223372036854775808", "0x10 + 0x0000000000000001",
            ],
            self.rng.randint(1, 4),
        )  # fmt: skip
        nested = [self._nest(item) for item in items]
        if self.rng.random() < 0.1:  # past MAX_NESTING_DEPTH, where Python's stack once ran out
            depth = self.rng.randint(NESTING + 3, 3 * NESTING)
            opener = self.rng.choice(["(", "abs(", "coalesce("])
            nested[0] = opener * depth + items[0] + ")" * depth
            query.past_limit = True
        query.sql = "SELECT " + ", ".join(nested)


# --- comparing results -----------------------------------------------------------------


def _same_value(a: SqlValue, b: SqlValue) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=REL_TOLERANCE, abs_tol=REL_TOLERANCE)
    return type(a) is type(b) and a == b


def _sort_key(row: Row) -> tuple[tuple[int, object, int], ...]:
    """A total order on rows; an INTEGER and a REAL of one value sort INTEGER first."""
    key: list[tuple[int, object, int]] = []
    for value in row:
        if value is None:
            key.append((0, 0, 0))
        elif isinstance(value, int):
            key.append((1, value, 0))  # exact: 64-bit neighbours are one float apart
        elif isinstance(value, float):
            key.append((1, round(value, 6), 1))
        elif isinstance(value, str):
            key.append((2, value, 0))
        else:
            key.append((3, value, 0))
    return tuple(key)


def _tie(row: Row) -> tuple[tuple[int, object], ...]:
    """What SQLite's ORDER BY sees: 0 and 0.0 are equal, so rows that differ only so
    are tied, and either order is right."""
    return tuple((k[0], k[1]) for k in _sort_key(row))


def _settle_ties(rows: list[Row]) -> list[Row]:
    out: list[Row] = []
    for _, run in itertools.groupby(rows, key=_tie):
        out.extend(sorted(run, key=_sort_key))
    return out


def differences(got: Sequence[Row], want: Sequence[Row], ordered: bool) -> str:
    """An empty string when the results agree, else the first difference."""
    if len(got) != len(want):
        return f"{len(got)} rows, expected {len(want)}"
    left, right = list(got), list(want)
    if ordered:
        left, right = _settle_ties(left), _settle_ties(right)
    else:
        left.sort(key=_sort_key)
        right.sort(key=_sort_key)
    for i, (a, b) in enumerate(zip(left, right, strict=True)):
        if len(a) != len(b) or not all(_same_value(x, y) for x, y in zip(a, b, strict=True)):
            return f"row {i}: got {a!r}, expected {b!r}"
    return ""


class Generates(Protocol):
    def next(self) -> Query: ...


async def compare_queries(
    execute: Callable[[str, Sequence[SqlValue]], Awaitable[Sequence[Row]]],
    reference: sqlite3.Connection,
    generator: Generates,
    count: int,
    seed: int,
) -> dict[str, int]:
    """Run ``count`` generated queries through ``execute`` (shardwise) and ``reference``
    (one SQLite holding every row, given the query's text as written); raise
    ``AssertionError`` naming the query, its parameters and the seed at the first that
    fails or differs. A query the reference refuses (an integer overflow) must fail in
    shardwise with shardwise's own error, and one nested past the parser's bound with
    ``SqlLimitError``. Returns how many were ordered, unordered, refused by both and
    refused for nesting."""
    kinds = {"ordered": 0, "unordered": 0, "refused": 0, "past_limit": 0}
    for number in range(count):
        query = generator.next()
        where = f"query #{number} (seed={seed}): {query.sql} params={query.params}"
        try:
            want: list[Row] | None = [tuple(r) for r in reference.execute(query.sql, query.params)]
        except sqlite3.Error:
            want = None
        try:
            got = await execute(query.sql, query.params)
        except SqlLimitError as exc:
            if query.past_limit:
                kinds["past_limit"] += 1
                continue
            raise AssertionError(f"{where} failed: {exc!r}") from exc
        except ShardwiseError as exc:
            if want is None:
                kinds["refused"] += 1
                continue
            raise AssertionError(f"{where} failed: {exc!r}") from exc
        except Exception as exc:
            raise AssertionError(f"{where} failed: {exc!r}") from exc
        if want is None:
            raise AssertionError(f"{where} answered {got!r}; the reference refused it")
        problem = differences(got, want, query.ordered)
        if problem:
            raise AssertionError(f"{where} differs\n{problem}")
        kinds["ordered" if query.ordered else "unordered"] += 1
    return kinds
