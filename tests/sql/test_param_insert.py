"""The bulk path (``sql/param_insert.py``) against the expression planner it stands in
for: over generated tables (every affinity, awkward names, reference tables, a range
keyspace) and generated INSERTs of parameters (column lists in any order, ``?`` and
``$n``, extreme and mixed values, NULL and unplaceable distribution values), the same
plan or the same error. Then rows loaded through it answer as one SQLite does."""

from __future__ import annotations

import random
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from shardwise.errors import ShardwiseError
from shardwise.model.config import Keyspace, Scheme
from shardwise.sql import Coordinator, LocalShards, param_insert, planner, statement_cache
from shardwise.sql.catalog import Catalog
from shardwise.sql.determinism import StatementContext
from shardwise.sql.distribution import insert_key
from shardwise.sql.plans import WritePlan
from shardwise.sql.values import INT64_MAX, INT64_MIN, SqlValue

HASHED = Keyspace("default", Scheme(kind="hash", shards=8))
RANGED = Keyspace("ranged", Scheme(kind="range", shards=4, split_points=("a", "k", "m")))
STATEMENTS = 400
TYPES = ("INTEGER", "TEXT", "REAL", "BLOB", "NUMERIC", "", "VARCHAR(3)", "BOOLEAN", "FLOAT")
DISTRIBUTABLE_TYPES = ("INTEGER", "TEXT", "BLOB", "", "VARCHAR(3)", "INT")
NAMES = ("id", "k", "Mixed Case", 'say "hi"', "naïve", "select", "x1", "_v")


@pytest.fixture
def local() -> Iterator[LocalShards]:
    shards = LocalShards([HASHED, RANGED])
    yield shards
    shards.close()


def values(rng: random.Random) -> SqlValue:
    return rng.choice(
        [
            None,
            0,
            -1,
            INT64_MAX,
            INT64_MIN,
            rng.randint(-1000, 1000),
            0.0,
            -0.0,
            1.5,
            1e300,
            float(rng.randint(-5, 5)),
            "",
            "m",
            "abc",
            "0x10",
            " 12 ",
            "1e3",
            "é",
            b"",
            b"\x00\xff",
            True,
            False,
        ]
    )


async def make_tables(coordinator: Coordinator, rng: random.Random) -> list[tuple[str, list[str]]]:
    tables = []
    for n in range(6):
        columns = rng.sample(NAMES, rng.randint(1, 5))
        dist = rng.choice(columns)
        declared = [
            f'"{c.replace(chr(34), chr(34) * 2)}" '
            + (
                ("TEXT" if n == 1 else rng.choice(DISTRIBUTABLE_TYPES))
                if c == dist
                else rng.choice(TYPES)
            )
            for c in columns
        ]
        name = f"t{n}"
        if n == 0:
            placement = "reference = true"
        else:
            keyspace = ", keyspace = 'ranged'" if n == 1 else ""
            placement = f"distribution = '{dist.replace(chr(39), chr(39) * 2)}'{keyspace}"
        await coordinator.execute(f"CREATE TABLE {name} ({', '.join(declared)}) WITH ({placement})")
        tables.append((name, columns))
    return tables


def statement(rng: random.Random, name: str, columns: list[str]) -> tuple[str, list[SqlValue]]:
    listed = rng.random() < 0.6
    chosen = rng.sample(columns, rng.randint(1, len(columns))) if listed else columns
    if rng.random() < 0.1 and len(columns) > 1:
        chosen = [*chosen, chosen[0]]  # (named twice: an error)
    rows = rng.choice([1, 1, 2, 3, 7, 40, 120])
    width = len(chosen) + (1 if rng.random() < 0.03 else 0)  # (a row too wide: an error)
    dollar = rng.random() < 0.5
    literals = 0.0 if rng.random() < 0.8 else 0.3
    marks, n = [], 0
    for _ in range(rows):
        cells = []
        for _ in range(width):
            if rng.random() < literals:  # (not the bulk path's shape)
                cells.append(rng.choice(["NULL", "1", "'x'", "x'00'", "-0.5"]))
                continue
            n += 1
            cells.append(f"${n}" if dollar else "?")
        marks.append("(" + ", ".join(cells) + ")")
    head = f"INSERT INTO {name}"
    if listed:
        head += " (" + ", ".join('"' + c.replace('"', '""') + '"' for c in chosen) + ")"
    params = [values(rng) for _ in range(n + (1 if rng.random() < 0.03 else 0))]
    return f"{head} VALUES {', '.join(marks)}", params


def planned(sql: str, params: list[SqlValue], catalog: Catalog) -> WritePlan | str:
    context = StatementContext(datetime(2026, 1, 1, tzinfo=UTC), 7)
    try:
        plan = planner.plan(sql, params, catalog, context).plan
    except ShardwiseError as exc:
        return f"{type(exc).__name__}: {exc}"
    assert isinstance(plan, WritePlan)
    return plan


async def test_the_bulk_path_plans_as_the_expression_planner(
    local: LocalShards, rng: random.Random, seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    coordinator = Coordinator(local, local)
    tables = await make_tables(coordinator, rng)
    catalog = await local.catalog()
    shaped_plans = shaped_errors = slow = same_errors = 0
    for number in range(STATEMENTS):
        name, columns = rng.choice(tables)
        sql, params = statement(rng, name, columns)
        shaped = statement_cache.kept(sql).insert is not None
        got = planned(sql, params, catalog)
        with monkeypatch.context() as patched:
            patched.setattr(planner, "plan_shaped_insert", lambda *_: None)
            want = planned(sql, params, catalog)
        assert got == want, f"seed {seed}, statement #{number}: {sql[:300]} {params[:20]}"
        shaped_plans += shaped and isinstance(got, WritePlan)
        shaped_errors += shaped and isinstance(got, str)
        slow += not shaped
        same_errors += isinstance(got, str)
    print(
        f"of the bulk path's shape: {shaped_plans} planned, {shaped_errors} refused alike; "
        f"{slow} not of its shape ({same_errors} errors alike in all)"
    )
    assert shaped_plans > STATEMENTS // 5 and shaped_errors > 20 and slow > 20


async def test_control_a_bulk_path_that_misplaces_a_row_is_caught(
    local: LocalShards, rng: random.Random, seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The planted bug: the bulk path hashes the distribution value as text."""
    real = insert_key
    monkeypatch.setattr(param_insert, "insert_key", lambda v, c, a: real(str(v), c, "TEXT"))
    with pytest.raises(AssertionError) as caught:
        await test_the_bulk_path_plans_as_the_expression_planner(local, rng, seed, monkeypatch)
    print(str(caught.value).splitlines()[0][:200])


async def test_rows_loaded_by_the_bulk_path_answer_as_one_sqlite(
    local: LocalShards, rng: random.Random
) -> None:
    coordinator = Coordinator(local, local)
    reference = sqlite3.connect(":memory:")
    create = "CREATE TABLE m (id INTEGER, v TEXT, n NUMERIC, b BLOB, r REAL)"
    await coordinator.execute(create + " WITH (distribution = 'id')")
    reference.execute(create)
    insert = "INSERT INTO m VALUES " + ", ".join(["(?, ?, ?, ?, ?)"] * 250)
    assert statement_cache.kept(insert).insert is not None
    for batch in range(8):
        params: list[SqlValue] = []
        for row in range(250):
            params += [batch * 1000 + row, values(rng), values(rng), values(rng), values(rng)]
        await coordinator.execute(insert, params)
        reference.execute(insert, params)
    query = "SELECT id, v, typeof(v), n, typeof(n), b, typeof(b), r, typeof(r) FROM m ORDER BY id"
    got = (await coordinator.execute(query)).rows
    assert [tuple(r) for r in got] == reference.execute(query).fetchall()
    assert len(got) == 2000
