"""Global indexes in process (``LocalShards``): the catalog and DDL, writes that keep
every index equal to its table (checked against one SQLite with the same UNIQUE index,
statement by statement, and by the consistency checker), builds (complete, resumed, or
refused over duplicates), EXPLAIN, and a control run that plants a bug the checker must
catch."""

from __future__ import annotations

import contextlib
import random
import sqlite3
from collections.abc import Iterator
from typing import Any

import pytest

from shardwise.errors import SqlCatalogError, SqlConstraintError, SqlError
from shardwise.model.config import Configuration, Keyspace, Scheme, ShardId
from shardwise.sql import Coordinator, LocalShards, index_build, index_tables
from shardwise.sql.values import SqlValue
from shardwise.testing.index_check import index_problems

SHARDS = 8
KEYSPACE = Keyspace("default", Scheme(kind="hash", shards=SHARDS))
STATEMENTS = 600

SCHEMA = (
    "CREATE TABLE acc (id INTEGER NOT NULL, email TEXT UNIQUE, handle TEXT, score INTEGER, "
    "tag) WITH (distribution = 'id')"
)
REFERENCE = (
    "CREATE TABLE acc (id INTEGER NOT NULL, email TEXT UNIQUE, handle TEXT, score INTEGER, tag)"
)
INDEXES = (
    "CREATE INDEX by_handle ON acc (handle) INCLUDE (score) WITH (scope = 'global')",
    "CREATE INDEX by_tag ON acc (tag, score) WITH (scope = 'global')",
)
TAGS: tuple[SqlValue, ...] = (None, 0, 7, -1, "7", "a", "", 2.5, -0.0, b"\x07", b"", 1 << 62)


@pytest.fixture
def local() -> Iterator[LocalShards]:
    shards = LocalShards([KEYSPACE])
    yield shards
    shards.close()


async def problems(local: LocalShards) -> list[str]:
    catalog = await local.catalog()
    config = Configuration(0, {}, dict(catalog.keyspaces), {}, dict(catalog.tables))

    async def read(keyspace: str, sql: str) -> list[list[tuple[Any, ...]]]:
        return [
            [tuple(r) for r in local.connection(ShardId(keyspace, i)).execute(sql)]
            for i in range(SHARDS)
        ]

    return await index_problems(config, read)


def _statement(rng: random.Random) -> tuple[str, list[Any]]:
    row_id, other = rng.randrange(40), rng.randrange(40)
    email = None if rng.random() < 0.15 else f"e{rng.randrange(25)}"
    handle = None if rng.random() < 0.1 else rng.choice(["h1", "h2", "h3", 4, "H1"])
    tag = rng.choice(TAGS)
    kind = rng.random()
    if kind < 0.3:
        return "INSERT INTO acc VALUES (?, ?, ?, ?, ?)", [
            row_id,
            email,
            handle,
            rng.randrange(9),
            tag,
        ]
    if kind < 0.4:
        return (
            "INSERT INTO acc VALUES (?, ?, ?, 1, ?), (?, ?, ?, 2, ?)",
            [row_id, email, handle, tag, other, f"e{rng.randrange(25)}", handle, rng.choice(TAGS)],
        )
    if kind < 0.5:
        return "UPDATE acc SET email = ? WHERE id = ?", [email, row_id]
    if kind < 0.6:
        return "UPDATE acc SET handle = ?, score = score + 1 WHERE id IN (?, ?)", [
            handle,
            row_id,
            other,
        ]
    if kind < 0.65:
        return "UPDATE acc SET tag = ? WHERE handle = ?", [tag, handle]
    if kind < 0.7:
        return "UPDATE acc SET score = score * 2 WHERE email = ?", [email]
    if kind < 0.75:
        return "UPDATE acc SET id = id WHERE id = ?", [row_id]  # (refused: the distribution column)
    if kind < 0.85:
        return "DELETE FROM acc WHERE id = ?", [row_id]
    if kind < 0.92:
        return "DELETE FROM acc WHERE email = ?", [email]
    return "DELETE FROM acc WHERE tag = ? AND score < 3", [tag]


async def test_writes_keep_every_index_equal_to_its_table(
    local: LocalShards, rng: random.Random, seed: int
) -> None:
    """Random writes, each compared with one SQLite holding the same UNIQUE index (the
    rows changed, or both refused), then every index checked against its table."""
    coordinator = Coordinator(local, local)
    await coordinator.execute(SCHEMA)
    for ddl in INDEXES:
        await coordinator.execute(ddl)
    reference = sqlite3.connect(":memory:", isolation_level=None)
    reference.execute(REFERENCE)
    counts = {"ok": 0, "duplicate": 0, "refused": 0}
    for number in range(STATEMENTS):
        sql, params = _statement(rng)
        where = f"statement #{number} (seed={seed}): {sql} {params}"
        try:
            want: int | str = reference.execute(sql, params).rowcount
        except sqlite3.IntegrityError:
            want = "duplicate"
        try:
            got: int | str = (await coordinator.execute(sql, params)).rowcount
        except SqlConstraintError:
            got = "duplicate"
        except SqlError:
            counts["refused"] += 1
            continue  # (refused before anything ran: the reference ran it; undo there)
        assert got == want, where
        counts["ok" if isinstance(got, int) else "duplicate"] += 1
        if number % 100 == 99:
            whole = "SELECT id, email, handle, score, tag FROM acc"
            ours = sorted(map(repr, (await coordinator.execute(whole)).rows))
            theirs = sorted(map(repr, reference.execute(whole).fetchall()))
            assert ours == theirs, where
            assert await problems(local) == [], where
    print(counts)
    assert counts["duplicate"] > 20 and counts["ok"] > 300
    assert await problems(local) == []
    # Lookups through each index answer as the reference does.
    for email in [f"e{i}" for i in range(25)]:
        sql = "SELECT id, handle FROM acc WHERE email = ? ORDER BY id, handle"
        mine = (await coordinator.execute(sql, [email])).rows
        assert mine == reference.execute(sql, [email]).fetchall()
    for tag in TAGS:
        sql = "SELECT count(*), sum(score) FROM acc WHERE tag = ?"
        mine = (await coordinator.execute(sql, [tag])).rows
        assert mine == reference.execute(sql, [tag]).fetchall(), tag


async def test_control_an_update_that_forgets_old_entries_is_caught(
    local: LocalShards, rng: random.Random, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The planted bug: index maintenance drops the deletes of entries (an UPDATE or
    DELETE leaves its old entry behind). The checker names the dangling entries."""
    real = index_tables._deletes
    monkeypatch.setattr(index_tables, "_deletes", lambda entries: [])
    coordinator = Coordinator(local, local)
    await coordinator.execute(SCHEMA)
    for _ in range(100):
        sql, params = _statement(rng)
        with contextlib.suppress(SqlError):
            await coordinator.execute(sql, params)
    found = await problems(local)
    assert any("dangling entry" in p for p in found), found
    monkeypatch.setattr(index_tables, "_deletes", real)


async def test_ddl_of_global_indexes(local: LocalShards) -> None:
    coordinator = Coordinator(local, local)
    await coordinator.execute(SCHEMA)
    catalog = await local.catalog()
    (unique,) = catalog.tables["acc"].indexes
    assert (unique.name, unique.scope, unique.unique, unique.state) == (
        "acc_email_key", "global", True, "public"
    )  # fmt: skip
    await coordinator.execute("CREATE UNIQUE INDEX by_pair ON acc (handle, score)")
    pair = (await local.catalog()).tables["acc"].indexes[-1]
    assert (pair.scope, pair.state) == ("global", "public")  # (built: no rows to index)
    await coordinator.execute("CREATE INDEX local_score ON acc (score)")
    await coordinator.execute("CREATE TABLE other (id INTEGER, x TEXT) WITH (distribution = 'id')")
    with pytest.raises(SqlCatalogError, match="another table"):
        await coordinator.execute("CREATE INDEX by_pair ON other (x) WITH (scope = 'global')")
    with pytest.raises(SqlCatalogError, match="PRIMARY KEY or UNIQUE"):
        await coordinator.execute("DROP INDEX acc_email_key")
    await coordinator.execute("DROP INDEX by_pair")
    await coordinator.execute("DROP INDEX IF EXISTS by_pair")
    names = [i.name for i in (await local.catalog()).tables["acc"].indexes]
    assert names == ["acc_email_key", "local_score"]
    conn = local.connection(ShardId("default", 0))
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
    assert "sql__sw_gi_acc_email_key" in tables and "sql__sw_gi_by_pair" not in tables
    # A reference table needs no global index; its UNIQUE is table-wide already.
    await coordinator.execute("CREATE TABLE ref (k TEXT UNIQUE) WITH (reference = true)")
    assert (await local.catalog()).tables["ref"].indexes[0].scope == "local"
    with pytest.raises(SqlCatalogError, match="reference table"):
        await coordinator.execute("CREATE INDEX ref_k ON ref (k) WITH (scope = 'global')")


async def test_explain_names_the_index_and_the_shards_it_reads(local: LocalShards) -> None:
    coordinator = Coordinator(local, local)
    await coordinator.execute(SCHEMA)
    await coordinator.execute(INDEXES[0])
    lines = [str(r[0]) for r in (await coordinator.execute(
        "EXPLAIN SELECT id, tag FROM acc WHERE email = 'e1'"
    )).rows]  # fmt: skip
    assert any("global index acc_email_key first: 1 of 8" in line for line in lines), lines
    lines = [str(r[0]) for r in (await coordinator.execute(
        "EXPLAIN SELECT score FROM acc WHERE handle = 'a'"
    )).rows]  # fmt: skip
    assert any("global index by_handle covers the statement" in line for line in lines), lines
    assert any("sql__sw_gi_by_handle" in line for line in lines), lines
    # The distribution column pins one shard: no index is read.
    lines = [str(r[0]) for r in (await coordinator.execute(
        "EXPLAIN SELECT score FROM acc WHERE handle = 'a' AND id = 3"
    )).rows]  # fmt: skip
    assert not any("global index" in line for line in lines), lines
    lines = [str(r[0]) for r in (await coordinator.execute(
        "EXPLAIN UPDATE acc SET email = 'x' WHERE id = 3"
    )).rows]  # fmt: skip
    assert any("kept in the same transaction: acc_email_key, by_handle" in line for line in lines)


async def test_a_build_indexes_the_rows_there_and_resumes_when_cut_short(
    local: LocalShards, monkeypatch: pytest.MonkeyPatch
) -> None:
    coordinator = Coordinator(local, local)
    await coordinator.execute(SCHEMA)
    rows = [(i, f"e{i}", f"h{i % 7}", i, TAGS[i % len(TAGS)]) for i in range(1500)]
    for start in range(0, len(rows), 300):
        chunk = rows[start : start + 300]
        marks = ", ".join("(?, ?, ?, ?, ?)" for _ in chunk)
        await coordinator.execute(f"INSERT INTO acc VALUES {marks}", [v for r in chunk for v in r])
    monkeypatch.setattr(index_build, "BUILD_STEP_ROWS", 40)
    monkeypatch.setattr(index_build, "PROGRESS_EVERY_S", 0.0)
    real_fill, steps = local.fill, 0

    async def failing_fill(*args: Any, in_flight: int) -> Any:
        nonlocal steps
        steps += 1
        if steps == 12:
            raise SqlError("the build's client went away")
        return await real_fill(*args, in_flight=in_flight)

    monkeypatch.setattr(local, "fill", failing_fill)
    with pytest.raises(SqlError, match="went away"):
        await coordinator.execute(INDEXES[0])
    catalog = await local.catalog()
    assert catalog.tables["acc"].indexes[-1].state == "building"
    done = catalog.index_builds["by_handle"]
    assert 0 < len(done) < SHARDS
    # Reads do not use an index being built; writes keep it.
    plan = (await coordinator.execute("EXPLAIN SELECT score FROM acc WHERE handle = 'h1'")).rows
    assert not any("by_handle" in str(r[0]) for r in plan)
    await coordinator.execute("UPDATE acc SET handle = 'moved' WHERE id = 3")
    await coordinator.execute("DELETE FROM acc WHERE id = 4")
    await coordinator.execute("INSERT INTO acc VALUES (5000, 'new', 'h1', 1, NULL)")
    # Run again: it resumes (the shards done are not read again) and completes.
    steps = -1000
    await coordinator.execute(INDEXES[0])  # (the same statement again resumes it)
    catalog = await local.catalog()
    assert catalog.tables["acc"].indexes[-1].state == "public" and not catalog.index_builds
    assert await problems(local) == []
    result = await coordinator.execute("SELECT count(*) FROM acc WHERE handle = 'h1'")
    assert result.rows == [(len([r for r in rows if r[2] == "h1"]) + 1,)]


async def test_a_unique_build_over_duplicates_fails_and_drops_the_index(
    local: LocalShards,
) -> None:
    coordinator = Coordinator(local, local)
    await coordinator.execute(SCHEMA)
    await coordinator.execute(
        "INSERT INTO acc VALUES (1, 'a', 'same', 1, NULL), (2, 'b', 'same', 2, NULL)"
    )
    with pytest.raises(SqlConstraintError, match="could not create unique index 'u_handle'"):
        await coordinator.execute("CREATE UNIQUE INDEX u_handle ON acc (handle)")
    assert [i.name for i in (await local.catalog()).tables["acc"].indexes] == ["acc_email_key"]
    conn = local.connection(ShardId("default", 0))
    assert not conn.execute(
        "SELECT 1 FROM sqlite_master WHERE name = 'sql__sw_gi_u_handle'"
    ).fetchall()


async def test_what_a_hostile_review_found(local: LocalShards) -> None:
    """Each case broke an index, an answer or an error message before it was fixed."""
    coordinator = Coordinator(local, local)
    await coordinator.execute(SCHEMA)
    await coordinator.execute(INDEXES[0])
    # Columns that hide the last name of the rowid would switch maintenance off.
    await coordinator.execute("ALTER TABLE acc ADD COLUMN rowid INTEGER")
    await coordinator.execute("ALTER TABLE acc ADD COLUMN _rowid_ INTEGER")
    with pytest.raises(SqlCatalogError, match="last name of the rowid"):
        await coordinator.execute("ALTER TABLE acc ADD COLUMN oid INTEGER")
    await coordinator.execute("INSERT INTO acc (id, email, handle) VALUES (1, 'a', 'h')")
    await coordinator.execute("UPDATE acc SET handle = 'k' WHERE id = 1")
    assert await problems(local) == []
    # A UNIQUE error names the index that refused, not one whose name is a prefix.
    await coordinator.execute("CREATE INDEX acc_e ON acc (email, score) WITH (scope = 'global')")
    await coordinator.execute("CREATE UNIQUE INDEX acc_e2 ON acc (handle, score)")
    await coordinator.execute("INSERT INTO acc (id, email, handle, score) VALUES (2, 'b', 'x', 1)")
    with pytest.raises(SqlConstraintError, match="unique index 'acc_e2'"):
        await coordinator.execute(
            "INSERT INTO acc (id, email, handle, score) VALUES (3, 'c', 'x', 1)"
        )
    # Another table may not take a name DROP INDEX could then not tell apart.
    await coordinator.execute("CREATE TABLE other (id INTEGER, x TEXT) WITH (distribution = 'id')")
    with pytest.raises(SqlCatalogError, match="on another table"):
        await coordinator.execute("CREATE INDEX acc_e ON other (x)")
    # An index too wide to record would make every write to its table fail.
    wide = ", ".join(f"c{i} INTEGER" for i in range(300))
    await coordinator.execute(
        f"CREATE TABLE w (id INTEGER, k TEXT, {wide}) WITH (distribution = 'id')"
    )
    include = ", ".join(f"c{i}" for i in range(300))
    with pytest.raises(SqlCatalogError, match="over 256"):
        await coordinator.execute(
            f"CREATE INDEX wk ON w (k) INCLUDE ({include}) WITH (scope = 'global')"
        )
    # A covering read of values on several index shards is a lookup (read as of one
    # moment) instead: an entry moving between two shards read at different moments
    # would be counted twice or missed.
    lines = [str(r[0]) for r in (await coordinator.execute(
        "EXPLAIN SELECT count(*) FROM acc WHERE handle IN ('h1', 'h2', 'h3', 'h4', 'h5')"
    )).rows]  # fmt: skip
    assert any("global index" in line and " first: " in line for line in lines), lines
    snapshots = 0
    real = local.read_snapshot

    async def counted(*args: Any) -> Any:
        nonlocal snapshots
        snapshots += 1
        return await real(*args)

    local.read_snapshot = counted  # type: ignore[method-assign, assignment]
    await coordinator.execute("SELECT count(*) FROM acc WHERE handle IN ('h1', 'h2', 'h3')")
    assert snapshots == 1


async def test_a_blob_in_a_text_index_column_of_a_range_keyspace_is_found_by_ranges() -> None:
    ranged = Keyspace("ranged", Scheme(kind="range", shards=4, split_points=("g", "n", "t")))
    local = LocalShards([ranged])
    try:
        coordinator = Coordinator(local, local)
        await coordinator.execute(
            "CREATE TABLE r (id TEXT, s TEXT, n INTEGER) "
            "WITH (distribution = 'id', keyspace = 'ranged')"
        )
        await coordinator.execute("CREATE INDEX r_s ON r (s) INCLUDE (n) WITH (scope = 'global')")
        await coordinator.execute(
            "INSERT INTO r VALUES ('a', 'apple', 1), ('b', x'00', 2), ('c', 'melon', 3), "
            "('e', 'zebra', 5), ('f', '', 6)"
        )
        for where in ("s > 'm'", "s >= 'p'", "s < 'b'", "s BETWEEN 'a' AND 'n'"):
            sql = f"SELECT id, n FROM r WHERE {where} ORDER BY id"
            mine = (await coordinator.execute(sql)).rows
            reference = sqlite3.connect(":memory:")
            reference.execute("CREATE TABLE r (id TEXT, s TEXT, n INTEGER)")
            reference.execute(
                "INSERT INTO r VALUES ('a', 'apple', 1), ('b', x'00', 2), ('c', 'melon', 3), "
                "('e', 'zebra', 5), ('f', '', 6)"
            )
            assert mine == reference.execute(sql).fetchall(), where
    finally:
        local.close()


def test_an_index_made_again_under_its_name_is_another_index() -> None:
    """A shard that meets a DROP INDEX and a CREATE INDEX of the same name at once (a
    shard installed from an older configuration) drops the old index's tables; a build
    of the dropped index can no longer make the new one public."""
    from shardwise.errors import CatalogError  # noqa: PLC0415
    from shardwise.model.catalog_changes import index_state  # noqa: PLC0415
    from shardwise.model.config import Column, IndexDef, SetIndexState, Table  # noqa: PLC0415
    from shardwise.sql.shard_schema import schema_changes  # noqa: PLC0415

    def table(index: IndexDef) -> Table:
        columns = (Column("id", "INTEGER"), Column("s", "TEXT"))
        return Table("t", "default", "id", columns, (index,), created_at=1)

    old = IndexDef("gs", ("s",), scope="global", state="public", created_at=2)
    new = IndexDef("gs", ("s",), scope="global", state="building", created_at=5)
    ddl = schema_changes({"t": table(old)}, {"t": table(new)}, "default")
    assert any("DROP TABLE" in s and "sql__sw_gi_gs" in s for s in ddl), ddl
    assert any("CREATE TABLE" in s and "sql__sw_gi_gs" in s for s in ddl), ddl
    assert schema_changes({"t": table(new)}, {"t": table(new)}, "default") == []
    built = IndexDef("gs", ("s",), scope="global", state="public", created_at=5)
    ddl = schema_changes({"t": table(new)}, {"t": table(built)}, "default")
    assert ddl == ['DROP TABLE IF EXISTS "sql__sw_gt_gs"'], ddl
    with pytest.raises(CatalogError, match="dropped"):
        index_state(
            {"t": table(new)},
            {"default": KEYSPACE},
            {},
            SetIndexState("t", "gs", "public", 1, (), index_created_at=2),
        )
