"""The differential kit's multi-table half: a schema of related tables, data where joins
go wrong, and a seeded generator of joins and subqueries.

The schema: ``c`` (customers, distributed by ``id``), ``o`` (orders, distributed by
``cid``: co-located with ``c`` on ``c.id = o.cid``), ``p`` (order lines, distributed by
``sku``, a TEXT column: joined to ``o`` on a column that is not its distribution
column), ``z``, shaped like ``c`` and empty, and ``t`` (tiers), a reference table (a copy
on every shard) joined to ``c.tier`` and others. The data reach the corners: join keys
that are NULL (``p.oid``, ``t.tier``), duplicated (two rows of ``t`` for tier 1),
missing on the other side (orders of customers that do not exist, customers without
orders, a tier nobody has), skewed (a third of the orders belong to one customer), and
an untyped column ``v`` holding every storage class, joined with an INTEGER column, so
the comparison's affinity conversions are under test.

Every query is built so that its answer is unique: with ``LIMIT``, ORDER BY covers every
output column (identical rows are interchangeable); otherwise the comparison ignores
order. REAL data are multiples of 1/4, so sums do not depend on the order of rows.
"""

from __future__ import annotations

import random
import sqlite3
from collections.abc import Awaitable, Callable, Sequence
from typing import Final, TypeVar

from shardwise.sql.difftest import Query, Row
from shardwise.sql.functions import register
from shardwise.sql.values import INT64_MAX, SqlValue

JOIN_TABLES: Final = {
    # name: (columns with declarations, distribution column; empty: a reference table)
    "c": ("id INTEGER PRIMARY KEY, name TEXT, tier INTEGER, v", "id"),
    "o": ("id INTEGER, cid INTEGER, amount REAL, s TEXT, v", "cid"),
    "p": ("id INTEGER, oid INTEGER, sku TEXT, qty INTEGER", "sku"),
    "z": ("id INTEGER PRIMARY KEY, name TEXT, tier INTEGER, v", "id"),
    "t": ("tier INTEGER, label TEXT, weight REAL, v", ""),
}
_COLUMNS: Final = {
    "c": ("id", "name", "tier", "v"),
    "o": ("id", "cid", "amount", "s", "v"),
    "p": ("id", "oid", "sku", "qty"),
    "z": ("id", "name", "tier", "v"),
    "t": ("tier", "label", "weight", "v"),
}
_TIERS: Final[list[Row]] = [
    (0, "free", 0.0, None),
    (1, "basic", 1.25, 1),
    (1, "basic-old", 0.75, "1"),  # a duplicate join key
    (2, "pro", 2.5, 2.5),
    (5, "nobody", 9.0, "x"),  # no customer has tier 5
    (None, "unknown", None, b"\x01"),
]
_V: Final[tuple[SqlValue, ...]] = (None, 1, 2, 3, "1", "2", " 3", "x", 2.5, b"\x01", INT64_MAX)
_NAMES: Final = (None, "ann", "bob", "cy", "", "Ann", "bob")


def join_create_statements() -> list[str]:
    return [
        f"CREATE TABLE {name} ({columns}) WITH "
        + (f"(distribution = '{column}')" if column else "(reference = true)")
        for name, (columns, column) in JOIN_TABLES.items()
    ]


def join_reference_ddl() -> list[str]:
    return [f"CREATE TABLE {name} ({columns})" for name, (columns, _) in JOIN_TABLES.items()]


def join_reference(data: dict[str, list[Row]]) -> sqlite3.Connection:
    """One SQLite database holding every row of the join tables."""
    conn = sqlite3.connect(":memory:", isolation_level=None)
    register(conn)
    for ddl in join_reference_ddl():
        conn.execute(ddl)
    for name, rows in data.items():
        if rows:
            marks = ", ".join("?" * len(rows[0]))
            conn.executemany(f"INSERT INTO {name} VALUES ({marks})", rows)
    return conn


Execute = Callable[[str, Sequence[SqlValue]], Awaitable[Sequence[Row]]]
"""Runs one statement with its parameters on the system under test; its rows."""


async def load_join_tables(execute: Execute, data: dict[str, list[Row]]) -> None:
    """The join tables created and filled through ``execute`` (multi-row INSERTs)."""
    for ddl in join_create_statements():
        await execute(ddl, [])
    for name, rows in data.items():
        for start in range(0, len(rows), 50):
            chunk = rows[start : start + 50]
            marks = ", ".join("(" + ", ".join("?" * len(chunk[0])) + ")" for _ in chunk)
            await execute(f"INSERT INTO {name} VALUES {marks}", [v for r in chunk for v in r])


def make_join_rows(rng: random.Random) -> dict[str, list[Row]]:
    customers = rng.sample(range(-5, 60), 40)
    # 3 and 7: the constants the queries pin (o.s holds '03', ' 3', '3.0', ...)
    customers += [k for k in (3, 7) if k not in customers]
    c: list[Row] = [
        (i, rng.choice(_NAMES), rng.choice((None, 0, 1, 2, 3)), rng.choice(_V)) for i in customers
    ]
    heavy = customers[0]
    orders: list[Row] = []
    for number in range(150):
        roll = rng.random()
        cid = (
            heavy
            if roll < 0.33
            else (rng.randint(60, 70) if roll < 0.45 else rng.choice(customers))
        )
        orders.append(
            (
                number,
                cid,
                None if rng.random() < 0.1 else rng.randint(-40, 400) / 4,
                rng.choice((None, "a", "b", "ann", "1", "", "3", "03", " 3", "3.0", "7")),
                rng.choice(_V),
            )
        )
    lines: list[Row] = []
    for number in range(120):
        oid = None if rng.random() < 0.12 else rng.randint(-3, 160)
        lines.append(
            (number, oid, rng.choice(("k1", "k2", "k3", "k10", "K1", "")), rng.randint(0, 5))
        )
    return {"c": c, "o": orders, "p": lines, "z": [], "t": list(_TIERS)}


T = TypeVar("T")


def _pick(rng: random.Random, options: Sequence[T]) -> T:
    return options[rng.randrange(len(options))]


class JoinQueryGenerator:
    """Joins of two and three tables (every join type, equalities on distribution
    columns and on other columns, conditions that are not equalities, self-joins),
    aggregates over joins, subqueries (``IN``, ``EXISTS``, scalar, correlated, derived
    tables) and ``WITH``."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self._forms: list[Callable[[], Query]] = [
            self._two_way,
            self._two_way,
            self._three_way,
            self._aggregate_over_join,
            self._self_join,
            self._in_subquery,
            self._exists,
            self._scalar_subquery,
            self._derived_table,
            self._with,
            self._colocated,
            self._colocated,
            self._carried,
            self._with_reference,
            self._with_reference,
        ]

    def next(self) -> Query:
        return self.rng.choice(self._forms)()

    # --- pieces ------------------------------------------------------------------------

    def _join_kind(self) -> str:
        return _pick(
            self.rng, ("JOIN", "INNER JOIN", "LEFT JOIN", "LEFT JOIN", "RIGHT JOIN", "FULL JOIN")
        )

    def _condition(self, left: str, right: str) -> str:
        """An ON condition between tables aliased ``left`` and ``right``."""
        pairs = {
            ("c", "o"): (
                "c.id = o.cid",
                "c.v = o.v",
                "c.id = o.cid AND o.amount > 10",
                "c.id = o.cid AND c.tier > 1",  # (an outer join keeps c's rows all the same)
                "c.tier < o.id",
            ),
            ("o", "p"): (
                "o.id = p.oid",
                "o.id = p.oid AND p.qty > 1",
                "o.id = p.oid AND o.s IS NOT NULL",
                "o.s = p.sku",
                "o.id < p.oid",
            ),
            ("c", "z"): ("c.id = z.id", "c.tier = z.tier"),
            ("c", "p"): ("c.id = p.oid", "c.name = p.sku"),
        }
        options = pairs[(left, right)]
        return _pick(self.rng, options)

    def _filter(self, aliases: Sequence[str]) -> str:
        alias = _pick(self.rng, aliases)
        options = {
            "c": ("c.tier >= 2", "c.name IS NULL", "c.id = $1", "c.id IN ($1, 3, 7)", "c.v = 2"),
            "o": ("o.amount > $1", "o.cid = $1", "o.s = 'a'", "o.id IS NULL", "o.v IS NOT NULL"),
            "p": ("p.qty > 2", "p.sku = 'k1'", "p.oid IS NULL", "p.sku IN ('k1', 'k10')"),
            "z": ("z.id > 0", "z.id IS NULL"),
        }[alias]
        return _pick(self.rng, options)

    def _where(self, aliases: Sequence[str], params: list[SqlValue]) -> str:
        if self.rng.random() < 0.35:
            return ""
        terms = [self._filter(aliases) for _ in range(self.rng.randint(1, 2))]
        glue = " AND " if self.rng.random() < 0.7 else " OR "
        text = glue.join(terms)
        if "$1" in text:
            params.append(self.rng.choice((3, 10, 25, -2, "3")))
        return f" WHERE {text}"

    def _finish(self, select: str, width: int, params: list[SqlValue]) -> Query:
        if self.rng.random() < 0.5:
            order = ", ".join(str(i) for i in range(1, width + 1))
            limit = f" LIMIT {self.rng.randint(0, 12)}" if self.rng.random() < 0.6 else ""
            return Query(f"{select} ORDER BY {order}{limit}", params, ordered=True)
        return Query(select, params)

    def _columns(self, aliases: Sequence[str]) -> list[str]:
        chosen: list[str] = []
        for alias in aliases:
            names = _COLUMNS[alias]
            for name in self.rng.sample(names, self.rng.randint(1, 2)):
                chosen.append(f"{alias}.{name}")
        return chosen

    # --- forms -------------------------------------------------------------------------

    def _two_way(self) -> Query:
        left, right = _pick(self.rng, (("c", "o"), ("c", "o"), ("o", "p"), ("c", "z"), ("c", "p")))
        params: list[SqlValue] = []
        if self.rng.random() < 0.1:
            source = f"{left} CROSS JOIN {right}"
        elif self.rng.random() < 0.1:
            source = f"{left}, {right}"
        else:
            source = f"{left} {self._join_kind()} {right} ON {self._condition(left, right)}"
        if self.rng.random() < 0.15:
            columns = ["*"]
            width = len(_COLUMNS[left]) + len(_COLUMNS[right])
        else:
            columns = self._columns((left, right))
            width = len(columns)
        where = self._where((left, right), params)
        if source.endswith("CROSS JOIN " + right) or ", " in source:
            where = where or f" WHERE {left}.id = {right}.id"
        return self._finish(f"SELECT {', '.join(columns)} FROM {source}{where}", width, params)

    def _three_way(self) -> Query:
        params: list[SqlValue] = []
        first, second = self._join_kind(), self._join_kind()
        source = (
            f"c {first} o ON {self._condition('c', 'o')} {second} p ON {self._condition('o', 'p')}"
        )
        columns = self._columns(("c", "o", "p"))
        where = self._where(("c", "o", "p"), params)
        return self._finish(
            f"SELECT {', '.join(columns)} FROM {source}{where}", len(columns), params
        )

    def _aggregate_over_join(self) -> Query:
        params: list[SqlValue] = []
        left, right = _pick(self.rng, (("c", "o"), ("o", "p"), ("c", "o")))
        kind = _pick(self.rng, ("JOIN", "LEFT JOIN", "FULL JOIN"))
        key = _pick(self.rng, {"c": ("c.tier", "c.name", "c.id"), "o": ("o.s", "o.cid")}[left])
        measure = _pick(
            self.rng,
            {
                "o": ("count(o.id)", "sum(o.amount)", "max(o.v)", "count(DISTINCT o.cid)"),
                "p": ("sum(p.qty)", "count(p.oid)", "min(p.sku)"),
            }[right],
        )
        having = " HAVING count(*) > 1" if self.rng.random() < 0.3 else ""
        where = self._where((left, right), params)
        select = (
            f"SELECT {key}, count(*), {measure} FROM {left} {kind} {right} "
            f"ON {self._condition(left, right)}{where} GROUP BY {key}{having}"
        )
        return self._finish(select, 3, params)

    def _colocated(self) -> Query:
        """Joins on the distribution columns (``c.id = o.cid``, ``c.id = z.id``), where
        each shard joins its own rows: rows, groups by either key, aggregates, top-k,
        pinned to one shard or not."""
        params: list[SqlValue] = []
        kind = _pick(self.rng, ("JOIN", "LEFT JOIN"))
        other, on = _pick(
            self.rng, (("o", "o.cid = c.id"), ("o", "c.id = o.cid"), ("z", "c.id = z.id"))
        )
        if self.rng.random() < 0.3:
            on += _pick(self.rng, (" AND o.amount > 0", " AND c.tier > 1"))
            on = on.replace("o.amount", f"{other}.id") if other == "z" else on
        where = ""
        roll = self.rng.random()
        if roll < 0.25:
            where = " WHERE c.id = $1"
            params.append(self.rng.choice((3, 7, 10, -2)))
        elif roll < 0.4:
            where = f" WHERE {other}.{'cid' if other == 'o' else 'id'} IN (1, 2, 3, 10)"
        elif roll < 0.6:
            where = " WHERE c.tier IS NOT NULL OR c.name = 'bob'"
        shape = self.rng.randrange(4)
        source = f"FROM c {kind} {other} ON {on}{where}"
        if shape == 0:
            return self._finish(f"SELECT c.id, c.name, {other}.id {source}", 3, params)
        if shape == 1:
            measure = "sum(o.amount)" if other == "o" else "count(z.id)"
            return self._finish(
                f"SELECT c.id, count(*), {measure} {source} GROUP BY c.id", 3, params
            )
        if shape == 2:
            key = _pick(self.rng, ("c.tier", "c.name", f"{other}.id"))
            having = " HAVING count(*) > 1" if self.rng.random() < 0.3 else ""
            return self._finish(
                f"SELECT {key}, count(*), max(c.v) {source} GROUP BY {key}{having}", 3, params
            )
        limit = self.rng.randint(0, 8)
        select = f"SELECT c.id, {other}.id, c.v {source} ORDER BY 1, 2, 3 LIMIT {limit}"
        return Query(select, params, ordered=True)

    def _with_reference(self) -> Query:
        """Joins with the reference table ``t``: inside each shard where a distributed
        table anchors the join (``c JOIN t``, ``t JOIN c``, ``c LEFT JOIN t``, with
        co-located ``o``), at the coordinator where the reference rows are preserved
        (``t LEFT JOIN c``, ``RIGHT JOIN t``) or ``t`` is alone."""
        params: list[SqlValue] = []
        on = _pick(
            self.rng,
            (
                "t.tier = c.tier",
                "c.tier = t.tier",
                "t.v = c.v",
                "t.tier < c.tier",
                "t.label = c.name",
            ),
        )
        source = _pick(
            self.rng,
            (
                f"c JOIN t ON {on}",
                f"c LEFT JOIN t ON {on}",
                f"t JOIN c ON {on}",
                f"t LEFT JOIN c ON {on}",
                f"c RIGHT JOIN t ON {on}",
                f"c JOIN o ON o.cid = c.id LEFT JOIN t ON {on}",
                f"t JOIN c ON {on} JOIN o ON o.cid = c.id",
                "c CROSS JOIN t",
                "c, t",
            ),
        )
        where = ""
        roll = self.rng.random()
        if roll < 0.2:
            where = " WHERE c.id = $1"
            params.append(self.rng.choice((3, 7, 10)))
        elif roll < 0.35:
            where = " WHERE t.weight > 1"
        elif roll < 0.45:
            where = " WHERE t.tier IS NULL"
        shape = self.rng.randrange(5)
        if shape == 0:
            return self._finish(f"SELECT c.id, t.label, t.v FROM {source}{where}", 3, params)
        if shape == 1:
            return self._finish(
                f"SELECT t.label, count(*), sum(c.id) FROM {source}{where} GROUP BY t.label",
                3,
                params,
            )
        if shape == 2:
            return self._finish(
                f"SELECT c.id, count(t.tier), max(t.weight) FROM {source}{where} GROUP BY c.id",
                3,
                params,
            )
        if shape == 3:
            limit = self.rng.randint(0, 8)
            select = f"SELECT c.id, t.label, c.tier FROM {source}{where} ORDER BY 1, 2, 3"
            return Query(f"{select} LIMIT {limit}", params, ordered=True)
        alone = _pick(
            self.rng,
            (
                "SELECT tier, label FROM t WHERE weight >= 1",
                "SELECT a.label, b.label FROM t AS a JOIN t AS b ON a.tier = b.tier",
                "SELECT tier, count(*) FROM t GROUP BY tier",
                "SELECT c.id, c.tier FROM c WHERE c.tier IN (SELECT tier FROM t WHERE weight > 1)",
            ),
        )
        return self._finish(alone, 2, [])

    def _carried(self) -> Query:
        """An inner join on an equality and a constant on one side of it, which the
        planner may carry to the other side's scan (only where that is exact)."""
        params: list[SqlValue] = []
        on, pin = _pick(
            self.rng,
            (
                ("c.id = o.s", "c.id = $1"),  # INTEGER = TEXT: '03' = 3, but not o.s = 3
                ("c.id = o.s", "c.id IN (3, 7)"),
                ("o.s = c.id", "o.s = $1"),
                ("c.id = o.cid", "c.id = $1"),
                ("c.v = o.v", "c.v = $1"),
                ("o.id = p.oid", "o.id IN ($1, 5)"),
            ),
        )
        if "$1" in pin:
            params.append(self.rng.choice((3, "3", 7, "03")))
        left, right = on.split(" = ")[0].split(".")[0], on.split(" = ")[1].split(".")[0]
        select = f"SELECT {left}.id, {right}.id FROM {left} JOIN {right} ON {on} WHERE {pin}"
        # Compared unordered: SQLite 3.40 (the reference) propagates the constant through
        # ``c.id = o.s`` and then leaves ORDER BY over o.s unsorted, where o.s holds '03'
        # and '3' (a bug of the reference, not of what is under test).
        return Query(select, params)

    def _self_join(self) -> Query:
        params: list[SqlValue] = []
        condition = _pick(
            self.rng, ("a.tier = b.tier AND a.id < b.id", "a.id = b.id", "a.v = b.id")
        )
        kind = _pick(self.rng, ("JOIN", "LEFT JOIN"))
        select = f"SELECT a.id, b.id, b.name FROM c AS a {kind} c AS b ON {condition}"
        if self.rng.random() < 0.5:
            select += " WHERE a.tier IS NOT NULL"
        return self._finish(select, 3, params)

    def _in_subquery(self) -> Query:
        params: list[SqlValue] = []
        negate = "NOT " if self.rng.random() < 0.4 else ""
        inner = _pick(
            self.rng,
            (
                "SELECT cid FROM o WHERE amount > 20",
                "SELECT cid FROM o",
                "SELECT oid FROM p",  # NULLs: NOT IN then matches nothing
                "SELECT v FROM o",
            ),
        )
        column = _pick(self.rng, ("c.id", "c.v", "c.tier"))
        where = f" WHERE {column} {negate}IN ({inner})"
        return self._finish(f"SELECT c.id, c.name FROM c{where}", 2, params)

    def _exists(self) -> Query:
        params: list[SqlValue] = []
        negate = "NOT " if self.rng.random() < 0.4 else ""
        inner = _pick(
            self.rng,
            (
                "SELECT 1 FROM o WHERE o.cid = c.id",
                "SELECT 1 FROM o WHERE o.cid = c.id AND o.amount > $1",
                "SELECT 1 FROM o JOIN p ON o.id = p.oid WHERE o.cid = c.id",
                "SELECT 1 FROM z",
                "SELECT 1 FROM o WHERE o.cid = c.id AND tier > 1",  # tier: the outer c's
                "SELECT 1 FROM z WHERE id = c.id AND v IS NOT NULL",  # z's own id and v
                "SELECT 1 FROM o WHERE cid = c.id AND s = 'a' AND amount > $1",
            ),
        )
        if "$1" in inner:
            params.append(self.rng.choice((5, 50.5)))
        return self._finish(f"SELECT c.id, c.tier FROM c WHERE {negate}EXISTS ({inner})", 2, params)

    def _scalar_subquery(self) -> Query:
        params: list[SqlValue] = []
        form = self.rng.randrange(3)
        if form == 0:
            select = "SELECT c.id, (SELECT count(*) FROM o WHERE o.cid = c.id) FROM c"
        elif form == 1:
            select = "SELECT c.id, (SELECT max(o.amount) FROM o WHERE o.cid = c.id) FROM c"
        else:
            select = "SELECT o.id, o.amount FROM o WHERE o.amount > (SELECT avg(amount) FROM o)"
        return self._finish(select, 2, params)

    def _derived_table(self) -> Query:
        params: list[SqlValue] = []
        inner = _pick(
            self.rng,
            (
                "SELECT cid, sum(amount) AS total FROM o GROUP BY cid",
                "SELECT cid, count(*) AS total FROM o WHERE s IS NOT NULL GROUP BY cid",
                "SELECT oid AS cid, sum(qty) AS total FROM p GROUP BY oid",
            ),
        )
        kind = _pick(self.rng, ("JOIN", "LEFT JOIN"))
        select = f"SELECT c.id, d.total FROM c {kind} ({inner}) AS d ON d.cid = c.id"
        return self._finish(select, 2, params)

    def _with(self) -> Query:
        params: list[SqlValue] = []
        select = _pick(
            self.rng,
            (
                "WITH big AS (SELECT cid, amount FROM o WHERE amount > 20) "
                "SELECT c.name, big.amount FROM c JOIN big ON big.cid = c.id",
                "WITH n AS (SELECT cid, count(*) AS k FROM o GROUP BY cid) "
                "SELECT n.k, count(*) FROM n GROUP BY n.k",
                "WITH t AS (SELECT id FROM c WHERE tier > 1), u AS (SELECT cid FROM o) "
                "SELECT t.id, count(u.cid) FROM t LEFT JOIN u ON u.cid = t.id GROUP BY t.id",
            ),
        )
        return self._finish(select, 2, params)
