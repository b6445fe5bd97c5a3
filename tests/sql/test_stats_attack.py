"""Attacks on table statistics: ``ANALYZE`` (``sql/stats.py``, the coordinator's
``_count_rows``), ``SetStats`` in the controller, the expected rows ``EXPLAIN`` shows, and
``Table.created_at``. Five failed when written, each for a bug since fixed: ANALYZE
(and INSERT) of a table whose name holds a dot, quote or semicolon (the name was parsed
as SQL); tables whose names differ only in case sharing one SQLite table (DROP TABLE "D"
dropped d's rows); a count of a table dropped and created again while ANALYZE counted
recorded for the new one; float rounding in the expected rows past 2**53; a table
recorded before ``created_at`` existed dropped and re-created on a log replay."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import msgspec
import pytest

from shardwise.controller.access import change_denied
from shardwise.controller.statemachine import ControllerStateMachine, decode_result, encode_command
from shardwise.errors import SqlCatalogError, SqlError, UnsupportedSqlError
from shardwise.model.access import AccessCatalog, Role, User, parse_grant
from shardwise.model.config import (
    COMMAND_VERSION,
    AddColumn,
    ChangeResult,
    Column,
    Configuration,
    CreateKeyspace,
    CreateTable,
    DropTable,
    Join,
    Keyspace,
    Move,
    Op,
    Scheme,
    SetStats,
    ShardId,
    Table,
    TableStats,
    initial_configuration,
)
from shardwise.model.scram import make_verifier
from shardwise.sql import Coordinator, LocalShards
from shardwise.sql.catalog import Catalog
from shardwise.sql.plans import CatalogOp
from shardwise.sql.shard_schema import schema_changes
from shardwise.testing.cluster import SimCluster

SHARDS = 8
OTHER_SHARDS = 4


@pytest.fixture
def local() -> Iterator[LocalShards]:
    shards = LocalShards(
        [
            Keyspace("default", Scheme(kind="hash", shards=SHARDS)),
            Keyspace("other", Scheme(kind="hash", shards=OTHER_SHARDS)),
        ]
    )
    yield shards
    shards.close()


async def run(coordinator: Coordinator, *statements: str) -> None:
    for sql in statements:
        await coordinator.execute(sql)


async def loaded(local: LocalShards) -> Coordinator:
    coordinator = Coordinator(local, local)
    await run(
        coordinator,
        "CREATE TABLE d (k INTEGER, r INTEGER) WITH (distribution = 'k')",
        "CREATE TABLE r (id INTEGER PRIMARY KEY, name TEXT) WITH (reference = true)",
        "INSERT INTO r VALUES (0, 'a'), (1, 'b'), (2, 'c')",
        "INSERT INTO d VALUES " + ", ".join(f"({i}, {i % 4})" for i in range(160)),
    )
    return coordinator


async def explain(coordinator: Coordinator, sql: str) -> str:
    return "\n".join(str(r[0]) for r in (await coordinator.execute(f"EXPLAIN {sql}")).rows)


async def counts(local: LocalShards) -> dict[str, int]:
    return {name: s.rows for name, s in (await local.catalog()).stats.items()}


class Driver:
    """Feeds commands to one controller state machine as a log would."""

    def __init__(self) -> None:
        self.sm = ControllerStateMachine()
        self.index = 0
        self.seq = 0

    def do(self, op: Op) -> ChangeResult:
        self.seq += 1
        return self.raw(encode_command(op, client_id="admin", seq=self.seq))

    def raw(self, command: bytes) -> ChangeResult:
        self.index += 1
        return decode_result(self.sm.apply(self.index, command))


ID = (Column("id", "INTEGER"),)


# --- ANALYZE through the coordinator ------------------------------------------------------


async def test_analyze_with_no_tables_and_of_empty_tables(local: LocalShards) -> None:
    coordinator = Coordinator(local, local)
    nothing = await coordinator.execute("ANALYZE")
    assert nothing.columns == ("table", "rows") and nothing.rows == []
    assert not (await local.catalog()).stats
    await run(coordinator, "CREATE TABLE e (k INTEGER) WITH (distribution = 'k')")
    await run(coordinator, "CREATE TABLE er (k INTEGER) WITH (reference = true)")
    assert (await coordinator.execute("ANALYZE")).rows == [("e", 0), ("er", 0)]
    assert "expected rows read: e ~0\n" in await explain(coordinator, "SELECT * FROM e")
    joined = await explain(coordinator, "SELECT e.k FROM e JOIN er ON er.k = e.k")
    assert "expected rows read: e ~0, er ~0\n" in joined


async def test_analyze_names_fold_case_and_duplicates_count_once(local: LocalShards) -> None:
    coordinator = await loaded(local)
    result = await coordinator.execute('ANALYZE D, d, "d", R')
    assert result.rows == [("d", 160), ("r", 3)]
    assert await counts(local) == {"d": 160, "r": 3}
    with pytest.raises(SqlCatalogError, match="there is no table 'D'"):
        await coordinator.execute('ANALYZE "D"')


async def test_analyze_with_one_missing_table_records_nothing(local: LocalShards) -> None:
    coordinator = await loaded(local)
    with pytest.raises(SqlCatalogError, match="nope"):
        await coordinator.execute("ANALYZE d, nope, r")
    assert not (await local.catalog()).stats


@pytest.mark.parametrize("name", ["a.b", 'q"t', "a;b", "a'b"])
async def test_analyze_of_a_table_with_an_odd_quoted_name(local: LocalShards, name: str) -> None:
    coordinator = await loaded(local)
    quoted = '"' + name.replace('"', '""') + '"'
    await run(coordinator, f"CREATE TABLE {quoted} (k INTEGER) WITH (distribution = 'k')")
    assert (await coordinator.execute(f"ANALYZE {quoted}")).rows == [(name, 0)]
    every = await coordinator.execute("ANALYZE")  # one odd name must not break the rest
    assert dict(every.rows) == {name: 0, "d": 160, "r": 3}  # type: ignore[arg-type]


async def test_tables_differing_only_in_case_do_not_share_rows(local: LocalShards) -> None:
    coordinator = await loaded(local)
    try:
        await run(coordinator, "CREATE TABLE \"D\" (k INTEGER) WITH (distribution = 'k')")
    except SqlError:
        return  # refused: fine
    assert (await coordinator.execute('ANALYZE "D"')).rows == [("D", 0)]
    await run(coordinator, 'DROP TABLE "D"')
    assert (await coordinator.execute("SELECT count(*) FROM d")).rows == [(160,)]


async def test_drop_and_create_again_forgets_the_count(local: LocalShards) -> None:
    coordinator = await loaded(local)
    await run(coordinator, "ANALYZE")
    await run(
        coordinator,
        "DROP TABLE d",
        "CREATE TABLE d (k INTEGER, r INTEGER) WITH (distribution = 'k')",
    )
    assert await counts(local) == {"r": 3}
    assert "d not analyzed (ANALYZE counts rows)" in await explain(coordinator, "SELECT * FROM d")


class ControllerCatalog:
    """A catalog store whose catalog is a real controller state machine's (the shards'
    schema follows through ``local``); ``before_stats`` runs just before a ``SetStats`` is
    committed, as another client's statements could land between the count and it."""

    def __init__(self, local: LocalShards) -> None:
        self.local = local
        self.driver = Driver()
        keyspace = Keyspace("other", Scheme(kind="hash", shards=OTHER_SHARDS))
        assert not self.driver.do(CreateKeyspace(keyspace)).error  # as ``local`` has it
        self.before_stats: Callable[[], Awaitable[None]] | None = None

    async def catalog(self) -> Catalog:
        return Catalog.from_configuration(self.driver.sm.latest())

    async def change(self, op: CatalogOp) -> Catalog:
        if isinstance(op, SetStats) and self.before_stats is not None:
            hook, self.before_stats = self.before_stats, None
            await hook()
        result = self.driver.do(op)
        if result.error:
            raise SqlCatalogError(result.message)
        if not isinstance(op, SetStats):
            await self.local.change(op)
        return await self.catalog()


async def test_a_count_of_a_dropped_table_is_not_recorded_for_its_successor(
    local: LocalShards,
) -> None:
    store = ControllerCatalog(local)
    coordinator = Coordinator(local, store)
    other = Coordinator(local, store)
    await run(
        coordinator,
        "CREATE TABLE t (k INTEGER) WITH (distribution = 'k', keyspace = 'other')",
        "INSERT INTO t VALUES " + ", ".join(f"({i})" for i in range(100)),
    )

    async def drop_and_create() -> None:
        create = "CREATE TABLE t (k INTEGER) WITH (distribution = 'k', keyspace = 'other')"
        await run(other, "DROP TABLE t", create)

    store.before_stats = drop_and_create
    # Was: the old table's 100 rows recorded for the new, empty one.
    with pytest.raises(SqlCatalogError, match="dropped and created again"):
        await coordinator.execute("ANALYZE t")
    latest = store.driver.sm.latest()
    assert (await coordinator.execute("SELECT count(*) FROM t")).rows == [(0,)]
    assert latest.tables["t"].created_at > 2  # a new table
    assert "t" not in latest.stats or latest.stats["t"].rows == 0


# --- EXPLAIN's expected rows --------------------------------------------------------------


async def test_expected_rows_in_another_keyspace_and_of_reference_copies(
    local: LocalShards,
) -> None:
    coordinator = Coordinator(local, local)
    await run(
        coordinator,
        "CREATE TABLE o (k INTEGER, v INTEGER) WITH (distribution = 'k', keyspace = 'other')",
        "CREATE TABLE ro (k INTEGER) WITH (reference = true, keyspace = 'other')",
        "INSERT INTO o VALUES " + ", ".join(f"({i}, {i % 3})" for i in range(40)),
        "INSERT INTO ro VALUES (0), (1)",
    )
    assert (await coordinator.execute("ANALYZE ro, o")).rows == [("ro", 2), ("o", 40)]
    # One shard of 4 (not of the default keyspace's 8) holds about a quarter.
    assert "expected rows read: o ~10\n" in await explain(
        coordinator, "SELECT * FROM o WHERE k = 1"
    )
    # A reference table read alone: one copy; joined on every shard: one copy per shard.
    assert "expected rows read: ro ~2\n" in await explain(coordinator, "SELECT * FROM ro")
    joined = await explain(coordinator, "SELECT o.k FROM o JOIN ro ON ro.k = o.v")
    assert f"expected rows read: o ~40, ro ~{2 * OTHER_SHARDS}\n" in joined
    pruned = await explain(coordinator, "SELECT o.k FROM o JOIN ro ON ro.k = o.v WHERE o.k = 1")
    assert "expected rows read: o ~10, ro ~2\n" in pruned


async def test_expected_rows_of_limit_0_self_joins_and_coordinator_joins(
    local: LocalShards,
) -> None:
    coordinator = await loaded(local)
    await run(coordinator, "ANALYZE")
    nothing = await explain(coordinator, "SELECT * FROM d LIMIT 0")
    assert "expected rows" not in nothing and "shards:" not in nothing  # no shard is read
    self_join = await explain(
        coordinator, "SELECT a.k FROM d AS a JOIN d AS b ON a.k = b.k WHERE a.k = 5"
    )
    assert "shards: 1 of 8" in self_join
    assert "expected rows read: d AS a ~20, d AS b ~20\n" in self_join
    # A self-join of a reference table at the coordinator: two single-copy scans.
    refs = await explain(coordinator, "SELECT a.id FROM r AS a JOIN r AS b ON a.id = b.id")
    assert refs.count("expected rows read: r ~3\n") == 2
    assert "at the coordinator, over the scans (at most ~6 rows sent):" in refs
    # One scan never analyzed: no total is claimed.
    await run(coordinator, "CREATE TABLE n (k INTEGER) WITH (distribution = 'k')")
    partly = await explain(coordinator, "SELECT d.k FROM d JOIN n ON n.k = d.r")
    assert "n not analyzed" in partly
    assert "(at most ~" not in partly


@pytest.mark.parametrize("rows", [2**53 + 1, 2**63 - 1])
def test_expected_rows_of_huge_counts_are_exact_on_every_shard(rows: int) -> None:
    table = Table("t", "default", "id", ID)
    catalog = Catalog({"t": table}, {}, {"t": TableStats(rows)})
    assert catalog.expected_rows(table, 1, 1) == rows
    assert catalog.expected_rows(table, 8, 8) == rows


# --- SetStats in the controller -----------------------------------------------------------


def test_set_stats_out_of_range_or_partly_missing_changes_nothing() -> None:
    d = Driver()
    assert not d.do(CreateTable(Table("t", "default", "id", ID))).error
    before = d.sm.latest()
    # A count past Int64 never decodes: the same refusal on every replica, no new config.
    op = msgspec.to_builtins(SetStats({"t": 0}))
    op["rows"]["t"] = 2**63
    assert d.raw(msgspec.msgpack.encode([COMMAND_VERSION, "admin", 99, op])).error == "controller"
    for bad in ({"t": 5, "nope": 1}, {"T": 5}, {"t": -(2**63)}):
        assert d.do(SetStats(bad)).error == "catalog", bad
    assert d.sm.latest() == before
    assert not d.do(SetStats({"t": 2**63 - 1})).error
    assert d.sm.latest().stats == {"t": TableStats(2**63 - 1, before.num + 1)}


def test_counts_outlive_other_changes_and_move_no_change_number() -> None:
    d = Driver()
    assert not d.do(CreateTable(Table("t", "default", "id", ID))).error
    assert not d.do(CreateTable(Table("u", "default", "id", ID))).error
    assert not d.do(SetStats({"t": 7, "u": 9})).error
    stats = d.sm.latest().stats
    for op in (
        Join({1: ("a",), 2: ("b",)}),
        Move(ShardId("default", 0), 2),
        CreateKeyspace(Keyspace("ks2", Scheme(shards=4))),
        AddColumn("t", Column("x", "TEXT")),
    ):
        assert not d.do(op).error, op
        assert d.sm.latest().stats == stats, op
    before = d.sm.latest()
    assert not d.do(SetStats({"t": 8})).error
    after = d.sm.latest()
    assert after.num == before.num + 1
    assert (after.catalog_changed_at, after.shard_map_changed_at) == (
        before.catalog_changed_at,
        before.shard_map_changed_at,
    )
    assert after.tables == before.tables
    # DROP takes only its table's count; the table made again is new and uncounted.
    assert not d.do(DropTable("t")).error
    assert set(d.sm.latest().stats) == {"u"}
    assert not d.do(CreateTable(Table("t", "default", "id", ID))).error
    again = d.sm.latest()
    assert set(again.stats) == {"u"} and again.tables["t"].created_at == again.num
    assert d.do(SetStats({"t": 1})).error == ""


def test_snapshots_keep_counts_and_old_encodings_decode() -> None:
    d = Driver()
    assert not d.do(CreateTable(Table("t", "default", "id", ID))).error
    assert not d.do(SetStats({"t": 42})).error
    restored = ControllerStateMachine()
    restored.restore(d.sm.snapshot(), d.index)
    assert restored.latest() == d.sm.latest()
    assert restored.latest().stats == {"t": TableStats(42, 2)}
    # A configuration encoded before stats (7 fields) holding a table encoded before
    # created_at (5 fields).
    table_fields = list(msgspec.structs.astuple(Table("t", "default", "id", ID)))[:5]
    old_fields = list(msgspec.structs.astuple(d.sm.latest()))[:7]
    old_fields[4] = {"t": table_fields}
    old = msgspec.msgpack.decode(msgspec.msgpack.encode(old_fields), type=Configuration)
    assert old.stats == {} and old.tables["t"].created_at == 0


def test_a_table_recorded_before_created_at_is_not_dropped_on_replay() -> None:
    d = Driver()
    assert not d.do(CreateTable(Table("t", "default", "id", ID))).error
    replayed = d.sm.latest().tables
    recorded_fields = list(msgspec.structs.astuple(replayed["t"]))[:5]  # old encoding
    recorded = msgspec.msgpack.decode(
        msgspec.msgpack.encode({"t": recorded_fields}), type=dict[str, Table]
    )
    assert schema_changes(recorded, replayed, "default") == []


def test_analyze_needs_write_on_every_keyspace_it_counts() -> None:
    verifier = make_verifier("pw", salt=b"s" * 16)
    access = AccessCatalog(
        1,
        {
            "reader": User("reader", verifier, ("r",)),
            "writer": User("writer", verifier, ("w",)),
            "both": User("both", verifier, ("w", "w2")),
        },
        {
            "r": Role("r", (parse_grant("read:default"), parse_grant("read:ks2"))),
            "w": Role("w", (parse_grant("write:default"),)),
            "w2": Role("w2", (parse_grant("write:ks2"),)),
        },
    )
    tables = {
        "t": Table("t", "default", "id", ID),
        "o": Table("o", "ks2", "id", ID),
        "ref": Table("ref", "ks2", "", ID),
    }
    config = msgspec.structs.replace(initial_configuration(), tables=tables)
    assert change_denied(access, "writer", SetStats({"t": 1}), config) == ""
    assert "may not ANALYZE" in change_denied(access, "writer", SetStats({"t": 1, "o": 1}), config)
    assert "may not ANALYZE" in change_denied(access, "writer", SetStats({"ref": 1}), config)
    assert "may not ANALYZE" in change_denied(access, "reader", SetStats({"t": 1}), config)
    assert change_denied(access, "both", SetStats({"t": 1, "o": 2, "ref": 3}), config) == ""


# --- on the simulated cluster -------------------------------------------------------------


def deadline(budget_s: float = 10.0) -> float:
    return asyncio.get_running_loop().time() + budget_s


@pytest.mark.virtual_time
async def test_analyze_on_the_cluster(tmp_path: Path, seed: int) -> None:
    cluster = SimCluster(tmp_path, groups=2, seed=seed)
    async with cluster, cluster.client() as kv:
        await cluster.join(1, 2)
        await cluster.settled()
        await kv.sql("CREATE TABLE t (k INTEGER, v INTEGER) WITH (distribution = 'k')")
        await kv.sql("CREATE TABLE r (k INTEGER) WITH (reference = true)")
        await kv.sql("INSERT INTO t VALUES (1, 1), (2, 2), (3, 3)")
        await kv.sql("INSERT INTO r VALUES (1), (2)")
        before = await cluster.configuration()
        assert (await kv.sql("ANALYZE")).rows == [("r", 2), ("t", 3)]
        after = await cluster.configuration()
        assert after.num == before.num + 1
        assert after.catalog_changed_at == before.catalog_changed_at
        assert {n: s.rows for n, s in after.stats.items()} == {"r": 2, "t": 3}
        plan = "\n".join(str(row[0]) for row in (await kv.sql("EXPLAIN SELECT * FROM r")).rows)
        assert "expected rows read: r ~2\n" in plan
        # A transaction that has written may not record counts of its own writes.
        session = kv.sql_session()
        await session.execute("BEGIN", None, deadline())
        await session.execute("INSERT INTO t VALUES (4, 4)", None, deadline())
        with pytest.raises(UnsupportedSqlError):
            await session.execute("ANALYZE t", None, deadline())
        await session.execute("ROLLBACK", None, deadline())
        assert (await cluster.configuration()).stats == after.stats
        # Dropped and made again: a new table, uncounted.
        await kv.sql("DROP TABLE t")
        await kv.sql("CREATE TABLE t (k INTEGER) WITH (distribution = 'k')")
        latest = await cluster.configuration()
        assert set(latest.stats) == {"r"}
        assert latest.tables["t"].created_at == latest.num
        assert (await kv.sql("SELECT count(*) FROM t")).rows == [(0,)]
