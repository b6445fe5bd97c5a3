"""Plan fixtures: input SQL and the distributed plan it must produce (EXPLAIN's text).

``fixtures/plans.txt`` holds blocks of SQL, a ``----`` line, the expected plan and a
``====`` line. After an intended change to the planner, regenerate the expectations with
``SHARDWISE_REGEN_PLANS=1 pytest tests/sql/test_plans.py`` and review the diff.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from shardwise.model.config import CreateTable, Keyspace, Scheme, TableStats
from shardwise.sql import Catalog, StatementContext, explain, plan
from shardwise.sql.ddl import plan_ddl
from shardwise.sql.parse import parse_statement

FIXTURES = Path(__file__).parent / "fixtures" / "plans.txt"
REGENERATE = bool(os.environ.get("SHARDWISE_REGEN_PLANS"))
SQL_END = "----"
BLOCK_END = "===="

KEYSPACES = {
    "default": Keyspace("default", Scheme(kind="hash", shards=8)),
    "ranges": Keyspace("ranges", Scheme(kind="range", shards=3, split_points=("g", "p"))),
}
SCHEMA = (
    "CREATE TABLE t (id INTEGER PRIMARY KEY, g INTEGER, h TEXT, x INTEGER, y REAL, s TEXT) "
    "WITH (distribution = 'id')",
    "CREATE TABLE orders (customer TEXT, order_id INTEGER, total REAL, "
    "PRIMARY KEY (customer, order_id)) WITH (distribution = 'customer', keyspace = 'ranges')",
    "CREATE TABLE c (id INTEGER PRIMARY KEY, name TEXT, tier INTEGER) WITH (distribution = 'id')",
    "CREATE TABLE o (id INTEGER, cid INTEGER, amount REAL) WITH (distribution = 'cid')",
    "CREATE TABLE tiers (tier INTEGER PRIMARY KEY, label TEXT) WITH (reference = true)",
    "CREATE TABLE visits (id INTEGER, page TEXT, user_id INTEGER) WITH (distribution = 'id')",
    "CREATE TABLE users (id INTEGER, handle TEXT) WITH (distribution = 'handle')",
)


def catalog() -> Catalog:
    current = Catalog({}, KEYSPACES)
    for ddl in SCHEMA:
        op = plan_ddl(parse_statement(ddl).statement, current).op
        assert isinstance(op, CreateTable)
        current = Catalog({**current.tables, op.table.name: op.table}, KEYSPACES)
    # As after ANALYZE of these tables (orders never analyzed): the expected rows.
    stats = {"t": TableStats(8_000), "c": TableStats(1_000), "o": TableStats(5_000)}
    large = {"visits": TableStats(2_000_000), "users": TableStats(500_000)}
    return Catalog(current.tables, KEYSPACES, {**stats, **large, "tiers": TableStats(4)})


def read_blocks() -> list[tuple[str, list[str]]]:
    blocks: list[tuple[str, list[str]]] = []
    sql: list[str] = []
    expected: list[str] = []
    in_sql = True
    for line in FIXTURES.read_text().splitlines():
        if line == SQL_END:
            in_sql = False
        elif line == BLOCK_END:
            blocks.append(("\n".join(sql).strip(), expected))
            sql, expected, in_sql = [], [], True
        elif in_sql:
            sql.append(line)
        else:
            expected.append(line)
    return blocks


def render(sql: str) -> list[str]:
    params = [42, "x"] if "$2" in sql else ([42] if "$1" in sql else None)
    planned = plan(sql, params, catalog(), StatementContext.fixed(seed=7))
    return explain(planned.plan)


def test_plans_match_the_fixtures() -> None:
    blocks = read_blocks()
    assert len(blocks) >= 20
    if REGENERATE:
        out = []
        for sql, _ in blocks:
            out.extend([sql, SQL_END, *render(sql), BLOCK_END])
        FIXTURES.write_text("\n".join(out) + "\n")
        pytest.skip("plan fixtures regenerated; review the diff")
    for sql, expected in blocks:
        got = render(sql)
        assert got == expected, f"plan of\n{sql}\nchanged:\n" + "\n".join(got)
