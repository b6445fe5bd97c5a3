"""A differential test kit: one schema and data set, a seeded query generator, and a
comparison of results, to check shardwise's SQL against a single SQLite database.

Used by ``tests/sql/test_differential.py`` over :class:`~shardwise.sql.LocalShards`, and
meant for the same check over a real cluster. Everything is drawn from one
``random.Random``, so a seed names a data set and a query sequence exactly.

Queries are built so that their answer is unique (or equal within float tolerance):
ORDER BY covers every output column (exact ones first) or ends with the unique ``id``,
so LIMIT cannot pick between tied rows, and REAL data are multiples of 1/4, so sums and
averages are exact whatever order shards add them in; only the variance family is
compared with a tolerance.
"""

from __future__ import annotations

import math
import random
import sqlite3
import statistics
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Final

from sqlglot.optimizer.normalize_identifiers import normalize_identifiers

from shardwise.sql.aggregates import shard_function
from shardwise.sql.dialect import DIALECT, to_sqlite
from shardwise.sql.functions import register
from shardwise.sql.numeric import as_real
from shardwise.sql.params import bind
from shardwise.sql.parse import parse_statement
from shardwise.sql.values import SqlValue

Row = tuple[SqlValue, ...]

COLUMNS: Final = ("g", "h", "x", "y", "s")
TABLES: Final = {
    # name: (type of id, rows); "e" stays empty, "u" has so few rows most shards are empty
    "t": ("INTEGER", 400),
    "e": ("INTEGER", 0),
    "u": ("TEXT", 5),
}
_H: Final = (None, "a", "b", "c", "A", "é", "")
_S: Final = (None, "apple", "apricot", "banana", "b", "", "zeta", "Apple", "x%y")
REL_TOLERANCE: Final = 1e-9


def create_statements() -> list[str]:
    """The shardwise DDL of the test tables."""
    return [
        f"CREATE TABLE {name} (id {kind} PRIMARY KEY, g INTEGER, h TEXT, x INTEGER, "
        "y REAL, s TEXT) WITH (distribution = 'id')"
        for name, (kind, _) in TABLES.items()
    ]


def reference_ddl() -> list[str]:
    return [
        f"CREATE TABLE {name} (id {kind} PRIMARY KEY, g INTEGER, h TEXT, x INTEGER, y REAL, s TEXT)"
        for name, (kind, _) in TABLES.items()
    ]


def make_rows(rng: random.Random) -> dict[str, list[Row]]:
    data: dict[str, list[Row]] = {}
    for name, (kind, count) in TABLES.items():
        ids = rng.sample(range(-50, count * 3), count)
        rows: list[Row] = []
        for i in ids:
            key: SqlValue = i if kind == "INTEGER" else f"k{i}"
            rows.append(
                (
                    key,
                    None if rng.random() < 0.1 else rng.randint(0, 6),
                    rng.choice(_H),
                    None if rng.random() < 0.15 else rng.randint(-20, 20),
                    None if rng.random() < 0.15 else rng.randint(-40, 40) / 4,
                    rng.choice(_S),
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


def reference_database(data: dict[str, list[Row]]) -> sqlite3.Connection:
    conn = sqlite3.connect(":memory:", isolation_level=None)
    register(conn)  # approx_count_distinct: the same sketch, over all rows at once
    for which in ("var_samp", "var_pop", "stddev_samp", "stddev_pop"):
        conn.create_aggregate(which, 1, _naive(which))
    for ddl in reference_ddl():
        conn.execute(ddl)
    for name, rows in data.items():
        conn.executemany(f"INSERT INTO {name} VALUES (?, ?, ?, ?, ?, ?)", rows)
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
    "approx_count_distinct(s)",
    "approx_count_distinct(x)",
    "max(x) - min(x)",
    "sum(x) + count(*)",
    "count(*) * 2",
    "coalesce(sum(x), 0) / (count(*) + 1)",
    "avg(y) * 2",
)
_INEXACT_AGGREGATES: Final = (
    "variance(x)",
    "var_samp(y)",
    "var_pop(x)",
    "stddev(y)",
    "stddev_samp(x)",
    "stddev_pop(y)",
)
_GROUP_KEYS: Final = ("g", "h", "x % 3", "g + 1", "lower(h)", "y > 0", "coalesce(g, -1)", "s")
_PROJECTIONS: Final = ("id", "g", "h", "x", "y", "s", "x + g", "upper(h)", "y * 2", "length(s)")


class QueryGenerator:
    """Random queries over the test tables, reproducible from ``rng``."""

    def __init__(self, rng: random.Random, data: dict[str, list[Row]]) -> None:
        self.rng = rng
        self.ids = {name: [r[0] for r in rows] for name, rows in data.items()}

    def next(self) -> Query:
        kind = self.rng.choices(
            ["rows", "distinct", "scalar", "grouped", "by_id", "pinned"],
            weights=[3, 1, 2, 4, 1, 2],
        )[0]
        table = self.rng.choices(["t", "e", "u"], weights=[8, 1, 1])[0]
        query = Query("")
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
        else:
            self._aggregate(table, where, query, ["id"])
        return query

    # -- pieces --

    def _value(self, query: Query, value: SqlValue) -> str:
        if self.rng.random() < 0.25:  # a bound parameter instead of a literal
            query.params.append(value)
            return f"${len(query.params)}"
        if isinstance(value, str):
            return "'" + value.replace("'", "''") + "'"
        return repr(value)

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
        ]
        return rng.choice(choices)()

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
        limit = f" LIMIT {self.rng.randint(0, 12)}"
        if roll < 0.7:
            return limit
        return f"{limit} OFFSET {self.rng.randint(0, 15)}"

    def _direction(self) -> str:
        direction = self.rng.choice(["", " ASC", " DESC"])
        nulls = self.rng.choice(["", "", " NULLS FIRST", " NULLS LAST"])
        return direction + nulls

    def _rows(self, table: str, where: str, query: Query) -> None:
        columns = self.rng.sample(_PROJECTIONS, self.rng.randint(1, 4))
        select = ", ".join(columns) if self.rng.random() > 0.1 else "*"
        width = len(COLUMNS) + 1 if select == "*" else len(columns)
        sql = f"SELECT {select} FROM {table}{where}"
        if self.rng.random() < 0.6:
            if self.rng.random() < 0.5:
                hidden = self.rng.choice(["y", "x", "s", "g"])
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
        columns = self.rng.sample(["g", "h", "x % 2", "s", "lower(h)"], self.rng.randint(1, 2))
        sql = f"SELECT DISTINCT {', '.join(columns)} FROM {table}{where}"
        if self.rng.random() < 0.6:
            order = ", ".join(f"{i}{self._direction()}" for i in range(1, len(columns) + 1))
            sql += f" ORDER BY {order}{self._limit(query)}"
            query.ordered = True
        query.sql = sql

    def _aggregate(self, table: str, where: str, query: Query, keys: list[str]) -> None:
        exact = self.rng.sample(_EXACT_AGGREGATES, self.rng.randint(1, 3))
        inexact = self.rng.sample(_INEXACT_AGGREGATES, self.rng.choice([0, 0, 1]))
        outputs = [*keys, *exact, *inexact]
        distinct = "DISTINCT " if keys and self.rng.random() < 0.1 else ""
        sql = f"SELECT {distinct}{', '.join(outputs)} FROM {table}{where}"
        if keys:
            sql += f" GROUP BY {', '.join(keys)}"
            if self.rng.random() < 0.3:
                sql += f" HAVING count(*) > {self._value(query, self.rng.randint(0, 30))}"
        if keys and self.rng.random() < 0.6:
            exact_positions = list(range(1, len(keys) + len(exact) + 1))
            self.rng.shuffle(exact_positions)
            positions = exact_positions + list(range(len(exact_positions) + 1, len(outputs) + 1))
            order = ", ".join(f"{p}{self._direction()}" for p in positions)
            sql += f" ORDER BY {order}{self._limit(query)}"
            query.ordered = True
        query.sql = sql


# --- comparing results -----------------------------------------------------------------


def _same_value(a: SqlValue, b: SqlValue) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=REL_TOLERANCE, abs_tol=REL_TOLERANCE)
    return type(a) is type(b) and a == b


def _sort_key(row: Row) -> tuple[tuple[int, object], ...]:
    key: list[tuple[int, object]] = []
    for value in row:
        if value is None:
            key.append((0, 0))
        elif isinstance(value, int | float):
            key.append((1, round(float(value), 6)))
        elif isinstance(value, str):
            key.append((2, value))
        else:
            key.append((3, value))
    return tuple(key)


def differences(got: Sequence[Row], want: Sequence[Row], ordered: bool) -> str:
    """An empty string when the results agree, else the first difference."""
    if len(got) != len(want):
        return f"{len(got)} rows, expected {len(want)}"
    left, right = list(got), list(want)
    if not ordered:
        left.sort(key=_sort_key)
        right.sort(key=_sort_key)
    for i, (a, b) in enumerate(zip(left, right, strict=True)):
        if len(a) != len(b) or not all(_same_value(x, y) for x, y in zip(a, b, strict=True)):
            return f"row {i}: got {a!r}, expected {b!r}"
    return ""


async def compare_queries(
    execute: Callable[[str, Sequence[SqlValue]], Awaitable[Sequence[Row]]],
    reference: sqlite3.Connection,
    generator: QueryGenerator,
    count: int,
    seed: int,
) -> dict[str, int]:
    """Run ``count`` generated queries through ``execute`` (shardwise) and ``reference``
    (one SQLite holding every row); raise ``AssertionError`` naming the query, its
    parameters and the seed at the first that fails or differs. Returns how many were
    ordered and unordered."""
    kinds = {"ordered": 0, "unordered": 0}
    for number in range(count):
        query = generator.next()
        sql, values = reference_query(query.sql, query.params)
        want = [tuple(r) for r in reference.execute(sql, values)]
        where = f"query #{number} (seed={seed}): {query.sql} params={query.params}"
        try:
            got = await execute(query.sql, query.params)
        except Exception as exc:
            raise AssertionError(f"{where} failed: {exc!r}") from exc
        problem = differences(got, want, query.ordered)
        if problem:
            raise AssertionError(f"{where} differs\n{problem}\nreference SQL: {sql}")
        kinds["ordered" if query.ordered else "unordered"] += 1
    return kinds
