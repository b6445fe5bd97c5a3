"""Reference tables: a full copy of a small table on every shard of its keyspace.

Every copy must stay identical (each write goes to all of them, atomically), a read of
the table alone reads one copy, and a join with one runs inside the shards only where
each joined row still holds exactly one distributed row (``docs/sql.md``, "Reference
tables"). Answers are compared with one SQLite database holding every row."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from shardwise.errors import SqlCatalogError, SqlConstraintError, SqlError
from shardwise.model.config import Keyspace, Scheme
from shardwise.sql import LocalShards
from shardwise.sql.plans import JoinPlan, ReadPlan
from shardwise.testing.local_sql import LocalSql

SHARDS = 4
KEYSPACES = [
    Keyspace("default", Scheme(kind="hash", shards=SHARDS)),
    Keyspace("other", Scheme(kind="hash", shards=2)),
    Keyspace("huge", Scheme(kind="hash", shards=300)),
]

TIERS: list[tuple[int, str]] = [(0, "free"), (1, "basic"), (2, "pro"), (5, "nobody")]
USERS: list[tuple[int, int | None]] = [(1, 1), (2, 2), (3, None), (4, 1), (5, 7), (6, 0)]


@pytest.fixture
def local() -> Iterator[LocalShards]:
    shards = LocalShards(KEYSPACES)
    yield shards
    shards.close()


async def loaded(local: LocalShards) -> LocalSql:
    """The tables ``tiers`` (a reference table) and ``users``, filled, on the cluster and
    in the single SQLite database."""
    cluster = LocalSql(local, SHARDS)
    for columns, options in (
        ("tiers (tier INTEGER PRIMARY KEY, label TEXT UNIQUE)", "reference = true"),
        ("users (id INTEGER, tier INTEGER)", "distribution = 'id'"),
    ):
        await cluster.run(f"CREATE TABLE {columns} WITH ({options})")
        cluster.sqlite.execute(f"CREATE TABLE {columns}")
    rows = ", ".join(f"({tier}, '{label}')" for tier, label in TIERS)
    await cluster.both(f"INSERT INTO tiers VALUES {rows}")
    for row in USERS:
        await cluster.both("INSERT INTO users VALUES (?, ?)", row)
    return cluster


# --- the table and its copies ----------------------------------------------------------


async def test_every_shard_holds_the_same_full_copy_after_every_kind_of_write(
    local: LocalShards,
) -> None:
    cluster = await loaded(local)
    assert cluster.copies("tiers") == [sorted(TIERS, key=repr)] * SHARDS
    assert await cluster.both("UPDATE tiers SET label = label || '!' WHERE tier > 0") == 3
    assert await cluster.both("DELETE FROM tiers WHERE tier = 5") == 1
    assert await cluster.both("INSERT INTO tiers VALUES (9, 'new'), (10, 'newer')") == 2
    assert await cluster.both("INSERT INTO tiers SELECT id + 100, 'u' || id FROM users") == 6
    await cluster.run("ALTER TABLE tiers ADD COLUMN weight REAL DEFAULT 1.5")
    cluster.sqlite.execute("ALTER TABLE tiers ADD COLUMN weight REAL DEFAULT 1.5")
    want = sorted(cluster.sqlite.execute("SELECT * FROM tiers").fetchall(), key=repr)
    assert len(want) == 11
    assert cluster.copies("tiers") == [want] * SHARDS
    await cluster.same("SELECT * FROM tiers")


async def test_a_constraint_holds_table_wide_and_a_refused_write_changes_no_copy(
    local: LocalShards,
) -> None:
    cluster = await loaded(local)
    # Each copy of a reference table holds every row, so any constraint is table-wide; on
    # a distributed table a UNIQUE index without the distribution column is global.
    with pytest.raises(SqlConstraintError, match="UNIQUE"):
        await cluster.run("INSERT INTO tiers VALUES (7, 'seven'), (8, 'free')")
    with pytest.raises(SqlConstraintError, match="UNIQUE"):
        await cluster.run("UPDATE tiers SET tier = 1 WHERE tier = 2")
    assert cluster.copies("tiers") == [sorted(TIERS, key=repr)] * SHARDS
    await cluster.run("CREATE UNIQUE INDEX tiers_label_tier ON tiers (label, tier)")
    with pytest.raises(SqlConstraintError, match="could not create unique index 'users_tier'"):
        await cluster.run("CREATE UNIQUE INDEX users_tier ON users (tier)")
    with pytest.raises(SqlCatalogError, match="make it global"):
        await cluster.run("CREATE UNIQUE INDEX users_tier ON users (tier) WITH (scope = 'local')")


async def test_the_rows_changed_are_counted_once_not_once_per_copy(local: LocalShards) -> None:
    cluster = await loaded(local)
    assert (await cluster.coordinator.execute("DELETE FROM tiers", [])).rowcount == len(TIERS)
    assert cluster.copies("tiers") == [[]] * SHARDS


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ("(reference = true, distribution = 'tier')", "not both"),
        ("(keyspace = 'default')", "needs a distribution column, or to be a reference"),
        ("(reference = maybe)", "write true or false"),
        ("(reference = true, keyspace = 'huge')", "at most 256 shards"),
        ("(reference = false)", "needs a distribution column"),
    ],
)
async def test_reference_table_options_are_checked(
    local: LocalShards, options: str, message: str
) -> None:
    cluster = await loaded(local)
    with pytest.raises(SqlError, match=message):
        await cluster.run(f"CREATE TABLE t2 (tier INTEGER) WITH {options}")


@pytest.mark.parametrize("spelling", ["true", "'true'", "on", "'ON'", "1", "yes"])
async def test_reference_true_is_spelt_as_postgresql_spells_a_boolean(
    local: LocalShards, spelling: str
) -> None:
    cluster = await loaded(local)
    await cluster.run(f"CREATE TABLE t2 (tier INTEGER) WITH (reference = {spelling})")
    assert (await cluster.local.catalog()).table("t2").is_reference


# --- plans -----------------------------------------------------------------------------


async def test_a_read_of_the_table_alone_reads_one_copy(local: LocalShards) -> None:
    cluster = await loaded(local)
    planned = await cluster.plan("SELECT label, count(*) FROM tiers GROUP BY label")
    assert isinstance(planned, ReadPlan)
    assert planned.strategy == "single-shard" and planned.shards == (0,)
    assert "reference table" in planned.pruned_by
    before = cluster.local.reads
    await cluster.same("SELECT label, count(*) FROM tiers GROUP BY label")
    assert cluster.local.reads - before == 1


@pytest.mark.parametrize(
    ("select", "strategy"),
    [
        ("SELECT u.id, t.label FROM users u JOIN tiers t ON t.tier = u.tier", "scatter-rows"),
        ("SELECT u.id, t.label FROM users u LEFT JOIN tiers t ON t.tier = u.tier", "scatter-rows"),
        ("SELECT u.id, t.label FROM tiers t JOIN users u ON t.tier = u.tier", "scatter-rows"),
        ("SELECT u.id, t.label FROM users u, tiers t", "scatter-rows"),
        ("SELECT u.id, t.label FROM users u JOIN tiers t ON t.tier < u.tier", "scatter-rows"),
        (
            "SELECT t.label, count(*) FROM tiers t JOIN users u ON u.tier = t.tier GROUP BY 1",
            "partial-aggregates",
        ),
        (
            "SELECT u.id, count(t.tier) FROM tiers t JOIN users u ON u.tier >= t.tier GROUP BY 1",
            "grouped-by-distribution",
        ),
        (
            "SELECT u.id, t.label FROM tiers t JOIN users u ON u.tier = t.tier WHERE u.id = 4",
            "single-shard",
        ),
        (
            "SELECT a.id, b.id, t.label FROM users a JOIN users b ON b.id = a.id "
            "LEFT JOIN tiers t ON t.tier = b.tier",
            "scatter-rows",
        ),
    ],
)
async def test_a_join_anchored_by_a_distributed_table_runs_inside_the_shards(
    local: LocalShards, select: str, strategy: str
) -> None:
    cluster = await loaded(local)
    planned = await cluster.plan(select)
    assert isinstance(planned, ReadPlan) and planned.table.startswith("co-located join")
    assert planned.strategy == strategy
    await cluster.same(select)


@pytest.mark.parametrize(
    "select",
    [
        # The reference table's rows that match nothing must appear once, not per shard.
        "SELECT t.label, u.id FROM tiers t LEFT JOIN users u ON u.tier = t.tier",
        "SELECT t.label, u.id FROM users u RIGHT JOIN tiers t ON u.tier = t.tier",
        "SELECT t.label, u.id FROM users u FULL JOIN tiers t ON u.tier = t.tier",
        "SELECT t.label, count(u.id) FROM tiers t LEFT JOIN users u ON u.tier = t.tier GROUP BY 1",
        # Reference tables alone.
        "SELECT a.label, b.label FROM tiers a JOIN tiers b ON a.tier < b.tier",
        "SELECT tier FROM tiers WHERE tier IN (SELECT tier FROM users)",
    ],
)
async def test_a_join_that_keeps_reference_rows_runs_at_the_coordinator(
    local: LocalShards, select: str
) -> None:
    cluster = await loaded(local)
    planned = await cluster.plan(select)
    assert isinstance(planned, JoinPlan)
    await cluster.same(select)


async def test_a_reference_table_of_another_keyspace_joins_at_the_coordinator(
    local: LocalShards,
) -> None:
    cluster = await loaded(local)
    await cluster.run(
        "CREATE TABLE far (tier INTEGER, note TEXT) WITH (reference = true, keyspace = 'other')"
    )
    cluster.sqlite.execute("CREATE TABLE far (tier INTEGER, note TEXT)")
    await cluster.both("INSERT INTO far VALUES (1, 'one'), (2, 'two'), (2, 'deux')")
    select = "SELECT u.id, f.note FROM users u JOIN far f ON f.tier = u.tier"
    assert isinstance(await cluster.plan(select), JoinPlan)
    await cluster.same(select)


async def test_explain_shows_one_batch_for_every_copy(local: LocalShards) -> None:
    cluster = await loaded(local)
    text = "\n".join(
        str(r[0]) for r in await cluster.run("EXPLAIN INSERT INTO tiers VALUES (7, 'x'), (8, 'y')")
    )
    assert f"shards: all {SHARDS}" in text, text
    assert "a reference table: every shard's copy" in text
    assert text.count("INSERT INTO") == 1, text
    assert "each shard: one atomic batch (2 row(s)) of:" in text
