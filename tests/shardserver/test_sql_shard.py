"""SQL in a replica group's state machine, driven by hand through its log: the tables
every shard derives from the catalog (kept, created, installed, frozen), write batches
that fail identically and change nothing, exactly-once retries, the schema check, and
the bounds and authorizer of fragments."""

from __future__ import annotations

import sqlite3
from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import crc32c
import msgspec
import pytest

from shardwise.errors import CommandDecodeError, SqlExecutionError, SqlLimitError
from shardwise.model.config import (
    Column,
    Configuration,
    IndexDef,
    ShardId,
    Table,
    initial_configuration,
)
from shardwise.model.kv import Get, Put
from shardwise.model.sql import SqlStatement
from shardwise.net.rpc import CallContext
from shardwise.net.wire import PeerRole
from shardwise.shardserver import sql_checks, sql_serving, sqlshard
from shardwise.shardserver.commands import (
    BATCHED_SQL_VERSION,
    GROUP_COMMAND_VERSION,
    ClientBatch,
    ClientOp,
    Command,
    GroupCommand,
    GroupResult,
    InstallChunk,
    InstallShard,
    Reconfigure,
    SqlWrite,
    SqlWriteResult,
    decode,
    decode_result,
    encode,
)
from shardwise.shardserver.migration.image import export_image
from shardwise.shardserver.protocol import SqlReadRequest, SqlReply, schema_digest
from shardwise.shardserver.server import ShardServer
from shardwise.shardserver.statemachine import ShardGroupStateMachine
from shardwise.sql.shipped import ShippedTable, refusal

S0, S1 = ShardId("default", 0), ShardId("default", 1)
SERVERS: dict[int, tuple[str, ...]] = {1: ("127.0.0.1:1",), 2: ("127.0.0.1:2",)}
ITEMS = Table(
    "items",
    "default",
    "id",
    (Column("id", "INTEGER NOT NULL"), Column("name", "TEXT")),
    (IndexDef("pkey", ("id",), unique=True),),
)
INSERT = 'INSERT INTO "sql_items" (id, name) VALUES (:id, :name)'


def config(
    num: int, owners: dict[int, int], tables: dict[str, Table] | None = None
) -> Configuration:
    """Configuration ``num``: shards 0 and 1 by ``owners``, every other shard group 1's."""
    base = initial_configuration()
    row = [1] * len(base.owners["default"])
    for index, gid in owners.items():
        row[index] = gid
    return Configuration(
        num=num,
        groups=SERVERS,
        keyspaces=base.keyspaces,
        owners={"default": tuple(row)},
        tables=tables or {},
    )


def with_column(table: Table, name: str, declaration: str) -> Table:
    return msgspec.structs.replace(table, columns=(*table.columns, Column(name, declaration)))


class Group:
    def __init__(self, gid: int, directory: Path) -> None:
        self.sm = ShardGroupStateMachine(gid, directory)
        self.index = 0

    def do(self, *commands: Command) -> list[GroupResult]:
        """Apply ``commands`` as one Raft batch (one transaction per shard)."""
        results = []
        for command in commands:
            self.index += 1
            results.append(decode_result(self.sm.apply(self.index, encode(command))))
        self.sm.end_batch()
        return results

    def write(
        self, shard: ShardId, *statements: SqlStatement, client: str = "c/0", seq: int = 1
    ) -> SqlWriteResult:
        (result,) = self.do(self.sql_write(shard, *statements, client=client, seq=seq))
        assert result.outcome == "ok" and result.sql is not None, result
        return result.sql

    def sql_write(
        self, shard: ShardId, *statements: SqlStatement, client: str = "c/0", seq: int = 1
    ) -> SqlWrite:
        num, digest = self.catalog(shard.keyspace)
        return SqlWrite(shard, client, seq, num, digest, statements)

    def catalog(self, keyspace: str = "default") -> tuple[int, int]:
        return self.sm.config.num, schema_digest(self.sm.config.tables, keyspace)

    def read(self, shard: ShardId, sql: str, max_rows: int = 1000) -> list[tuple[Any, ...]]:
        num, digest = self.catalog(shard.keyspace)
        answer = self.sm.sql_read(
            shard, catalog_num=num, schema=digest, sql=sql, params={}, max_rows=max_rows
        )
        assert answer.serving and answer.schema == "", answer
        return answer.rows

    def tables(self, shard: ShardId) -> list[str]:
        store = self.sm.shards[shard].store
        assert store is not None
        sql = "SELECT name FROM sqlite_master WHERE substr(name, 1, 4) = 'sql_' ORDER BY name"
        return [r[0] for r in store._query(sql)]

    def install_from(self, source: Group, shard: ShardId, num: int) -> None:
        store = source.sm.frozen_store(shard, num)
        assert store is not None
        image = export_image(store)
        self.do(InstallChunk(shard, num, 0, image))
        (done,) = self.do(InstallShard(shard, num, len(image), crc32c.crc32c(image)))
        assert done.outcome == "ok"


def row(id_: int, name: str) -> SqlStatement:
    return SqlStatement(INSERT, {"id": id_, "name": name})


@pytest.fixture
def group(tmp_path: Path) -> Group:
    g = Group(1, tmp_path / "g1")
    g.do(Reconfigure(config(1, {0: 1, 1: 1})), Reconfigure(config(2, {}, {"items": ITEMS})))
    return g


def test_every_served_shard_derives_its_tables_from_the_catalog(group: Group) -> None:
    assert group.tables(S0) == group.tables(S1) == ["sql_items", "sql_items__pkey"]
    assert group.write(S0, row(1, "a"), row(2, "b")).rowcount == 2
    wider = with_column(ITEMS, "qty", "INTEGER NOT NULL DEFAULT 5")
    tags = msgspec.structs.replace(ITEMS, name="tags", indexes=())
    group.do(Reconfigure(config(3, {}, {"items": wider, "tags": tags})))
    assert group.read(S0, 'SELECT id, qty FROM "sql_items" ORDER BY id') == [(1, 5), (2, 5)]
    assert "sql_tags" in group.tables(S1)
    group.do(Reconfigure(config(4, {}, {"tags": tags})))
    assert group.tables(S0) == ["sql_tags"]
    # A configuration that changes no table touches no shard.
    store = group.sm.shards[S0].store
    assert store is not None
    before = store.applied_index
    group.do(Reconfigure(config(5, {}, {"tags": tags})))
    assert store.applied_index == before


def test_a_moved_shard_keeps_its_tables_and_is_brought_to_the_new_owners(
    tmp_path: Path,
) -> None:
    g1, g2 = Group(1, tmp_path / "g1"), Group(2, tmp_path / "g2")
    for g in (g1, g2):
        g.do(Reconfigure(config(1, {0: 1, 1: 1})), Reconfigure(config(2, {}, {"items": ITEMS})))
    g1.write(S0, row(1, "a"))
    # Not something the controller makes (catalog changes move nothing), but the shard
    # side must not care: the move and a new column in one configuration.
    wider = {"items": with_column(ITEMS, "qty", "INTEGER DEFAULT 7")}
    for g in (g1, g2):
        g.do(Reconfigure(config(3, {0: 2}, wider)))
    # The frozen copy stays as it was frozen (the target pulls exactly that)...
    frozen = g1.sm.frozen_store(S0, 3)
    assert frozen is not None and "items" in frozen.sql_tables()
    assert frozen.sql_tables()["items"] == ITEMS
    # ...and the target brings it to its own catalog when it installs it.
    g2.install_from(g1, S0, 3)
    assert g2.read(S0, 'SELECT id, name, qty FROM "sql_items"') == [(1, "a", 7)]
    assert g1.read(S1, 'SELECT count(qty) FROM "sql_items"') == [(0,)]


def test_a_new_shard_from_nobody_starts_with_every_table(tmp_path: Path) -> None:
    g = Group(1, tmp_path / "g")
    base = initial_configuration()
    g.do(Reconfigure(msgspec.structs.replace(base, num=1, tables={"items": ITEMS})))
    assert not g.sm.shards
    g.do(Reconfigure(config(2, {}, {"items": ITEMS})))
    assert g.tables(S0) == ["sql_items", "sql_items__pkey"]


def test_a_failing_batch_changes_nothing_the_rest_of_its_raft_batch_applies(
    group: Group,
) -> None:
    num, digest = group.catalog()
    bad = SqlWrite(S0, "c/0", 2, num, digest, (row(5, "new"), row(1, "dup"), row(1, "dup")))
    results = group.do(
        ClientOp(S0, "k/0", 1, Put("before", "1")),
        SqlWrite(S0, "c/0", 1, num, digest, (row(1, "a"),)),
        bad,
        ClientOp(S0, "k/0", 2, Put("after", "2")),
    )
    failed = results[2].sql
    assert failed is not None and failed.constraint and "UNIQUE" in failed.error
    assert failed.rowcount == 0
    assert group.read(S0, 'SELECT id, name FROM "sql_items"') == [(1, "a")]
    got = [group.do(ClientOp(S0, "", 0, Get(k)))[0].result for k in ("before", "after")]
    assert [r.value if r else None for r in got] == ["1", "2"]
    # A retry of the failed batch gets the same answer and still changes nothing.
    (again,) = group.do(bad)
    assert again.sql == failed
    # Statements a batch may not run: another shard table, DDL, two in one text.
    for sql in ("DELETE FROM kv", "DROP TABLE sql_items", "PRAGMA user_version = 2"):
        refused = group.write(S0, SqlStatement(sql), seq=3 + len(sql))
        assert refused.error and not refused.constraint, sql
    two = group.write(S0, SqlStatement(f"{INSERT}; DELETE FROM sql_items"), seq=100)
    assert two.error
    assert group.read(S0, 'SELECT count(*) FROM "sql_items"') == [(1,)]


def test_writes_apply_once_and_schema_refusals_are_not_remembered(group: Group) -> None:
    assert group.write(S0, row(1, "a"), seq=1).rowcount == 1
    assert group.write(S0, row(1, "a"), seq=1).rowcount == 1  # a retry: the first answer
    assert group.write(S0, row(2, "b"), seq=0).stale
    num, digest = group.catalog()
    ahead = SqlWrite(S0, "c/0", 2, num + 1, digest ^ 1, (row(2, "b"),))
    assert group.do(ahead)[0].sql == SqlWriteResult(schema="behind")
    behind = SqlWrite(S0, "c/0", 2, num - 1, digest ^ 1, (row(2, "b"),))
    assert group.do(behind)[0].sql == SqlWriteResult(schema="changed")
    assert group.write(S0, row(2, "b"), seq=2).rowcount == 1  # the same number, now applied
    # After a DDL, the retry of a write applied before it still gets its first answer
    # (it must not be planned again: that would apply it twice).
    group.do(Reconfigure(config(3, {}, {"items": with_column(ITEMS, "z", "INTEGER")})))
    old_plan = SqlWrite(S0, "c/0", 2, num, digest, (row(2, "b"),))
    assert group.do(old_plan)[0].sql == SqlWriteResult(rowcount=1)
    assert group.read(S0, 'SELECT count(*) FROM "sql_items"') == [(2,)]
    # KV and SQL writes share the session table: a number used by the other kind is
    # stale, not misread and not a halt.
    (kv,) = group.do(ClientOp(S0, "c/0", 2, Put("k", "v")))
    assert kv.result is not None and kv.result.stale
    assert group.write(S0, row(3, "c"), client="k/0", seq=1).rowcount == 1
    (kv,) = group.do(ClientOp(S0, "k/0", 1, Put("k", "v")))
    assert kv.result is not None and kv.result.stale


def test_reads_see_only_user_tables_and_stay_within_their_bounds(group: Group) -> None:
    group.write(S0, *(row(i, "x" * 100) for i in range(60)))
    with pytest.raises(SqlLimitError, match="max_rows"):
        group.read(S0, 'SELECT id FROM "sql_items"', max_rows=59)
    assert len(group.read(S0, 'SELECT id FROM "sql_items"', max_rows=60)) == 60
    for sql in (
        "SELECT * FROM kv",
        "SELECT * FROM sessions",
        "SELECT * FROM meta",
        "SELECT * FROM sqlite_master",
        'DELETE FROM "sql_items"',
        "PRAGMA user_version",
        "ATTACH ':memory:' AS other",
    ):
        with pytest.raises(SqlExecutionError):
            group.read(S0, sql)
    assert group.read(S0, 'SELECT count(*) FROM "sql_items"') == [(60,)]
    store = group.sm.shards[S0].store
    assert store is not None
    conn = store._sql_connection()
    sql = 'SELECT a.name FROM "sql_items" a'
    with pytest.raises(SqlLimitError, match="max_reply_bytes"):
        sqlshard.run_read(conn, sql, {}, 1000, shard="s", max_bytes=1000)
    ticks = iter(range(0, 1000, 10))
    slow = 'SELECT count(*) FROM "sql_items" a, "sql_items" b, "sql_items" c'
    with pytest.raises(SqlLimitError, match="max_read_seconds"):
        sqlshard.run_read(conn, slow, {}, 10, shard="s", max_seconds=5, clock=lambda: next(ticks))
    # A stopped read leaves the connection as it found it: writes go on.
    assert group.write(S0, row(100, "y"), seq=7).rowcount == 1


def test_a_unique_index_over_repeated_values_is_skipped_not_a_halt(group: Group) -> None:
    group.write(S0, row(1, "same"), row(2, "same"))
    unique = msgspec.structs.replace(
        ITEMS, indexes=(*ITEMS.indexes, IndexDef("by_name", ("id", "name"), unique=True))
    )
    bad = msgspec.structs.replace(
        ITEMS, indexes=(*ITEMS.indexes, IndexDef("name", ("name",), unique=True))
    )
    group.do(Reconfigure(config(3, {}, {"items": bad})))
    assert "sql_items__name" not in group.tables(S0)  # the repeated names stop it here
    assert "sql_items__name" in group.tables(S1)  # an empty shard has it
    group.do(Reconfigure(config(4, {}, {"items": unique})))
    assert "sql_items__by_name" in group.tables(S0)


def test_snapshots_carry_tables_rows_and_the_recorded_catalog(group: Group, tmp_path: Path) -> None:
    group.write(S0, row(1, "a"))
    copy = ShardGroupStateMachine(1, tmp_path / "copy")
    copy.restore(group.sm.snapshot(), group.index)
    store = copy.shards[S0].store
    assert store is not None and store.sql_tables() == {"items": ITEMS}
    num, digest = group.catalog()
    answer = copy.sql_read(
        S0, catalog_num=num, schema=digest, sql='SELECT * FROM "sql_items"', params={}, max_rows=9
    )
    assert answer.rows == [(1, "a")]


def test_sql_writes_have_a_command_version_of_their_own() -> None:
    write = SqlWrite(S0, "c", 1, 1, 2, (SqlStatement("SELECT 1", {"a": b"\x00", "b": None}),))
    raw = msgspec.msgpack.decode(encode(write))
    assert raw[0] == 2  # not the newest version: the lowest that has SqlWrite
    assert msgspec.msgpack.decode(encode(Reconfigure(config(1, {}))))[0] == 1
    assert decode(encode(write)) == write
    as_v1 = msgspec.msgpack.encode(GroupCommand(1, write))
    with pytest.raises(CommandDecodeError, match="cannot carry"):
        decode(as_v1)
    unknown = GROUP_COMMAND_VERSION + 1
    with pytest.raises(CommandDecodeError, match=f"version {unknown}"):
        decode(msgspec.msgpack.encode(GroupCommand(unknown, write)))


def test_sql_writes_in_a_batch_entry_apply_each_as_alone_one_per_shard(group: Group) -> None:
    """``ClientBatch.sql``: each SQL write applies as an entry of its own would, unless
    something before it in the entry touched its shard (a store applies one entry's
    changes once): then ``ignored``, the same on every replica, and nothing changed."""
    kv = ClientOp(S1, "k/0", 1, Put("key", "v"))
    entry = ClientBatch(
        (kv,),
        sql=(
            group.sql_write(S0, row(1, "a"), client="c/1"),
            group.sql_write(S0, row(2, "b"), client="c/2"),  # S0 again: ignored
            group.sql_write(S1, row(3, "c"), client="c/3"),  # S1 has the KV put: ignored
        ),
    )
    raw = msgspec.msgpack.decode(encode(entry))
    assert raw[0] == BATCHED_SQL_VERSION
    with pytest.raises(CommandDecodeError, match="with SQL writes"):
        decode(msgspec.msgpack.encode(GroupCommand(BATCHED_SQL_VERSION - 1, entry)))
    (result,) = group.do(entry)
    put, first, again, other = result.batch
    assert put.outcome == "ok" and first.outcome == "ok" and first.sql is not None
    assert first.sql.rowcount == 1
    assert again.outcome == other.outcome == "ignored" and again.sql is other.sql is None
    assert group.read(S0, 'SELECT id FROM "sql_items"') == [(1,)]
    assert group.read(S1, 'SELECT id FROM "sql_items"') == []
    # Asked again (the door's "retry"), each applies in an entry of its own, once.
    assert group.write(S0, row(2, "b"), client="c/2").rowcount == 1
    assert group.write(S0, row(1, "a"), client="c/1").rowcount == 1  # (a retry: its result)
    assert group.read(S0, 'SELECT id FROM "sql_items" ORDER BY id') == [(1,), (2,)]


def test_only_errors_of_the_statement_and_data_are_deterministic() -> None:
    assert sqlshard.deterministic(sqlite3.IntegrityError("UNIQUE constraint failed"))
    error = sqlite3.OperationalError("no such column: q")
    error.sqlite_errorcode = sqlite3.SQLITE_ERROR
    assert sqlshard.deterministic(error)
    for code in (sqlite3.SQLITE_FULL, sqlite3.SQLITE_IOERR_WRITE, sqlite3.SQLITE_BUSY):
        error = sqlite3.OperationalError("the machine failed")
        error.sqlite_errorcode = code
        assert not sqlshard.deterministic(error), code
    assert sqlshard.deterministic(OverflowError("Python int too large"))
    assert sql_checks.check_params({"a": 1 << 63}) != ""
    assert sql_checks.check_params({"a": [1]}) != ""
    assert sql_checks.check_params({"a": None, "b": 1.5, "c": b"x", "d": "s", "e": True}) == ""


# --- shipped tables (a broadcast join's small side) --------------------------------------

NAMES = ShippedTable("_sw_t1", (("k", "INTEGER"), ("label", "TEXT")), ((1, "one"), (2, 5)))


def test_a_read_joins_shipped_rows_typed_and_leaves_nothing_behind(group: Group) -> None:
    group.write(S0, row(1, "5"), row(2, "b"), row(3, "c"))
    store = group.sm.shards[S0].store
    assert store is not None
    join = (
        'SELECT i.id, n.label FROM "sql_items" i JOIN _sw_t1 n ON n.k = i.id'
        " WHERE n.label = i.name OR n.label = 'one' ORDER BY i.id"
    )
    # label 5 was stored as '5' by the TEXT column, as it would be in the table it came
    # from, so it equals the name '5'... and 'one' matches itself.
    conn = store._sql_connection()
    assert store.read_sql(join, {}, 10, (NAMES,)) == [(1, "one")]
    assert not conn.in_transaction  # (applied writes committed first, the savepoint gone)
    typed = "SELECT n.k FROM _sw_t1 n WHERE n.label = 5"
    assert store.read_sql(typed, {}, 10, (NAMES,)) == [(2,)]
    # Read without a column of it (SQLite then names no database to the authorizer).
    cross = 'SELECT i.id FROM "sql_items" i CROSS JOIN _sw_t1 WHERE i.id = 1'
    assert store.read_sql(cross, {}, 10, (NAMES,)) == [(1,), (1,)]
    for hostile in (
        "INSERT INTO _sw_t1 VALUES (3, 'x')",
        "DELETE FROM _sw_t1",
        "SELECT * FROM temp.sqlite_master",
        "CREATE TEMP TABLE _sw_t2 (x)",
    ):
        with pytest.raises(SqlExecutionError):
            store.read_sql(hostile, {}, 10, (NAMES,))
    # Gone after each read, however it ended: not in the next read, not in the file.
    with pytest.raises(SqlExecutionError, match="no such table"):
        group.read(S0, "SELECT * FROM _sw_t1")
    assert group.read(S0, 'SELECT count(*) FROM "sql_items"') == [(3,)]
    assert group.write(S0, row(4, "d"), seq=2).rowcount == 1  # writes go on
    assert conn.execute("SELECT count(*) FROM temp.sqlite_master").fetchone() == (0,)


@pytest.mark.parametrize(
    ("tables", "why"),
    [
        ((ShippedTable("sql_items", (("k", "INTEGER"),), ()),), "is not _sw_t<number>"),
        ((ShippedTable('_sw_t1"; DROP TABLE sql_items; --', (("k", "TEXT"),), ()),), "not _sw_t"),
        ((ShippedTable("_sw_t1", (("k", "INTEGER PRIMARY KEY"),), ()),), "not an affinity"),
        ((ShippedTable("_sw_t1", (("k", "INTEGER"), ("K", "TEXT")), ()),), "column twice"),
        ((ShippedTable("_sw_t1", (), ()),), "1 to 256 columns"),
        ((ShippedTable("_sw_t1", (("", "TEXT"),), ()),), "empty, long or has NUL"),
        ((ShippedTable("_sw_t1", (("k", "TEXT"),), ((1, 2),)),), "a row of 2 values"),
        ((ShippedTable("_sw_t1", (("k", "INTEGER"),), ((1 << 63,),)),), "64-bit"),
        ((ShippedTable("_sw_t1", (("k", "INTEGER"),), (([1],),)),), "not a SQL value"),  # type: ignore[arg-type]
        ((NAMES, NAMES), "two shipped tables of one name"),
        (tuple(ShippedTable(f"_sw_t{i}", (("k", "INTEGER"),), ()) for i in range(9)), "more than"),
        ((ShippedTable("_sw_t1", (("k", "INTEGER"),), ((0,),) * 100_001),), "shipped rows"),
        ((ShippedTable("_sw_t1", (("k", "INTEGER"),) * 2, ((0, 0),) * 1),), "column twice"),
        (
            (
                ShippedTable(
                    "_sw_t1", tuple((f"c{i}", "BLOB") for i in range(10)), ((None,) * 10,) * 50_001
                ),
            ),
            "shipped values",
        ),
    ],
)
def test_shipped_tables_are_checked_before_anything_is_made(
    tables: tuple[ShippedTable, ...], why: str
) -> None:
    assert why in refusal(tables)


def test_shipped_rows_that_fill_the_temp_store_lose_no_applied_write(group: Group) -> None:
    """Making shipped tables writes: if that fills the disk (or memory), SQLite rolls
    back the whole open transaction. A store on a cache disk holds applied batches in
    one: the read commits them first, so the failed read loses none of them."""
    cached = group  # (a group's stores are a cache of its log: see ShardGroupStateMachine)
    cached.write(S0, row(1, "a"), row(2, "b"), row(3, "c"))
    store = cached.sm.shards[S0].store
    assert store is not None
    conn = store._sql_connection()
    conn.execute("PRAGMA temp.max_page_count = 3")  # (stands in for a full disk)
    big = ShippedTable(
        "_sw_t0", (("k", "INTEGER"), ("pad", "TEXT")), [(i, "x" * 2000) for i in range(200)]
    )
    with pytest.raises(SqlExecutionError, match="full"):
        store.read_sql('SELECT i.id FROM "sql_items" i JOIN _sw_t0 t ON t.k = i.id', {}, 10, (big,))
    assert cached.read(S0, 'SELECT count(*) FROM "sql_items"') == [(3,)]
    assert cached.write(S0, row(4, "d"), seq=2).rowcount == 1
    store.flush()
    assert cached.read(S0, 'SELECT count(*) FROM "sql_items"') == [(4,)]


def test_a_column_name_cannot_escape_its_quotes(group: Group) -> None:
    store = group.sm.shards[S0].store
    assert store is not None
    name = 'x" INTEGER); DROP TABLE "sql_items"; --'
    table = ShippedTable("_sw_t0", ((name, "TEXT"),), (("v",),))
    assert refusal((table,)) == ""
    assert store.read_sql("SELECT * FROM _sw_t0", {}, 10, (table,)) == [("v",)]
    assert group.read(S0, 'SELECT count(*) FROM "sql_items"') == [(0,)]


MANY = 'INSERT INTO "sql_items" ("id", "name") VALUES (?, ?)'


def test_a_statement_run_for_each_row_applies_whole_or_not_at_all(group: Group) -> None:
    """``SqlStatement.rows``: one compile, every row; a refused row changes nothing, on
    every replica alike (a deterministic result, not a halt)."""
    rows = tuple((n, f"r{n}") for n in range(1, 501))
    done = group.write(S0, SqlStatement(MANY, {}, rows))
    assert done.rowcount == 500 and not done.error
    dup = group.write(S0, SqlStatement(MANY, {}, ((900, "x"), (1, "dup"))), seq=2)
    assert dup.constraint and "UNIQUE" in dup.error and dup.rowcount == 0
    # Hostile shapes: each a result the same everywhere, nothing applied.
    for seq, statement in enumerate(
        (
            SqlStatement(MANY, {}, ((901,), (902, "x"))),  # (too few values in a row)
            SqlStatement('INSERT INTO "sql_items" VALUES (:id, :name)', {}, ((903, "x"),)),
            SqlStatement("DELETE FROM kv WHERE ? = ?", {}, ((1, 1),)),  # (not a user table)
            SqlStatement(f"{MANY}; DELETE FROM sql_items", {}, ((904, "x"),)),
        ),
        start=10,
    ):
        refused = group.write(S0, statement, seq=seq)
        assert refused.error and refused.rowcount == 0, statement
    assert group.read(S0, 'SELECT count(*), max(id) FROM "sql_items"') == [(500, 500)]


def test_rows_that_cannot_be_bound_are_refused_at_the_door() -> None:
    wide = SqlStatement(MANY, {}, ((1, "a"), (2, "b", "c")))
    assert "row 2 has 3 values" in sql_checks.check_batch((wide,))
    huge = SqlStatement(MANY, {}, ((1, "a"), (1 << 63, "b")))
    assert "row 2: 9223372036854775808 does not fit" in sql_checks.check_batch((huge,))
    odd = SqlStatement(MANY, {}, ((1, ["a"]),))
    assert "row 1: a list is not a SQL value" in sql_checks.check_batch((odd,))
    both = SqlStatement(MANY, {"id": 1}, ((1, "a"),))
    assert "no named parameters" in sql_checks.check_batch((both,))
    # Only the plain INSERT of ? marks: nothing named (bound by position today, refused by
    # later Pythons), no literal copied into every row (a 100 KB text x 100,000 rows).
    for other in (
        'INSERT INTO "sql_items" (id, name) VALUES (:id, ?)',
        'INSERT INTO "sql_items" ("id", "name") VALUES (:1, ?)',
        'INSERT INTO "sql_items" ("id", "name") VALUES ($1, ?)',
        'INSERT INTO "sql_items" ("id", "name") VALUES (?, ?) /* */',
        'INSERT INTO "sql_items" ("id", "name") VALUES (?, \'' + "x" * 1000 + "')",
        'INSERT INTO "sql_items" ("id") VALUES (?) -- \n, (?)',
        'DELETE FROM "sql_items" WHERE "id" = ? AND "name" = ?',
        'INSERT INTO "sql_items" ("id", "name") VALUES (?, ?, ?)',
    ):
        refused = sql_checks.check_batch((SqlStatement(other, {}, ((1, "a"),)),))
        assert "INSERT INTO" in refused, other
    quoted = SqlStatement("""INSERT INTO "sql_:t" ("@a", "b"";") VALUES (?, ?)""", {}, ((1, 2),))
    assert sql_checks.check_batch((quoted,)) == ""
    assert sql_checks.check_batch((SqlStatement(MANY, {}, ((1, "a"), (2, None))),)) == ""


def test_a_statement_run_for_each_row_of_another_shape_is_refused_as_it_applies(
    group: Group,
) -> None:
    """Past the door (a leader of another version, a hostile one): the same refusal on
    every replica, nothing applied, the group serving."""
    for seq, sql in enumerate(
        (
            'INSERT INTO "sql_items" ("id", "name") VALUES (?, sqlite_version() || ?)',
            'INSERT INTO "sql_items" ("id", "name") VALUES (?, \'' + "x" * 10_000 + "')",
            'INSERT INTO "sql_items" ("id", "name") VALUES (:id, ?)',
        ),
        start=1,
    ):
        statement = SqlStatement(sql, {}, tuple((n,) * 2 for n in range(50)))
        num, digest = group.catalog()
        (result,) = group.do(SqlWrite(S0, "c/0", seq, num, digest, (statement,), max_steps=10**6))
        assert result.sql is not None and "plain INSERT" in result.sql.error, sql
    assert group.read(S0, 'SELECT count(*) FROM "sql_items"') == [(0,)]


async def test_batched_sql_reads_share_one_frame_and_the_overflow_is_answered_retry(
    group: Group, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``sql_serving.serve_sql_reads``: a batch's reads run at one point and their rows
    share one reply frame; a read whose rows no longer fit is answered ``retry`` (the
    client asks it alone), while a lone read of the same rows gets them all."""
    group.write(S0, *(row(n, "x" * 100) for n in range(20)))
    num, digest = group.catalog()

    async def read_now(fn: Any, timeout_s: float) -> Any:
        return fn(group.sm)

    server: Any = SimpleNamespace(
        host=SimpleNamespace(read=read_now, status=lambda: SimpleNamespace(leader="me")),
        sql_denied=lambda *a, **k: None,
        reads_served=Counter(),
    )
    server.sql_read_reply = lambda shard, answer: ShardServer.sql_read_reply(server, shard, answer)
    monkeypatch.setattr(sql_serving, "MAX_SQL_REPLY_BYTES", 3_000)  # room for about 25 rows
    every = SqlReadRequest(S0, 'SELECT * FROM "sql_items"', {}, 1000, num, digest)
    one = SqlReadRequest(S0, 'SELECT * FROM "sql_items" WHERE id = 1', {}, 1000, num, digest)
    context = CallContext("c", PeerRole.CLIENT, 0.0, None)
    replies: list[SqlReply] = await sql_serving.serve_sql_reads(
        server, [every, every, one], context
    )
    assert [r.status for r in replies] == ["ok", "retry", "ok"]
    assert len(replies[0].rows) == 20 and len(replies[2].rows) == 1
    alone = await sql_serving.serve_sql_reads(server, [every], context)
    assert alone[0].status == "ok" and len(alone[0].rows) == 20  # (its own frame)
