"""SQL on the simulated cluster: controller and replica groups in one process on virtual
time, driven through ``Client.sql`` exactly as on real servers.

The differential test loads the difftest kit's data through ``INSERT`` statements, moves
shards holding rows to other groups, and compares generated queries with one SQLite
database. The others check DDL on every shard (including one that moves afterwards), a
failing batch that changes nothing, exactly-once retries, and the schema check that
keeps a statement from running against tables other than those it was planned with.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from shardwise.client import Client
from shardwise.client.sql import ClusterShards
from shardwise.errors import (
    ClientTimeoutError,
    SqlCatalogError,
    SqlConstraintError,
)
from shardwise.model.config import Configuration, ShardId
from shardwise.model.schemes import shard_map
from shardwise.model.sql import SqlStatement
from shardwise.shardserver import group_reads
from shardwise.shardserver.protocol import (
    SQL_GROUP_READ,
    SQL_READ,
    SQL_WRITE,
    ShippedRows,
    SqlGroupReadReply,
    SqlGroupReadRequest,
    SqlReadRequest,
    SqlReply,
    SqlWriteRequest,
    schema_digest,
)
from shardwise.shardserver.sqlshard import MAX_SQL_REPLY_BYTES
from shardwise.sql.difftest import (
    DEFAULT_TABLES,
    QueryGenerator,
    Row,
    compare_queries,
    create_statements,
    make_rows,
    reference_database,
)
from shardwise.sql.difftest_joins import (
    JoinQueryGenerator,
    join_reference,
    load_join_tables,
    make_join_rows,
)
from shardwise.sql.plans import Fragment
from shardwise.sql.values import SqlValue
from shardwise.testing.cluster import SimCluster

QUERIES = 1_000
"""Generated queries against the simulated cluster per run (the issue asks for at least
1,000; the in-process differential test runs 2,400 more over LocalShards). About 35 ms
each on 2 cores: most fan out to the 64 shards, each fragment a ReadIndex round through
the simulated network."""

MOVES = 3
"""Shards holding rows moved to another group between loading and querying."""


async def _load(kv: Client, data: dict[str, list[Row]], rng: random.Random) -> None:
    for ddl in create_statements(DEFAULT_TABLES):
        await kv.sql(ddl)
    for name, rows in data.items():
        start = 0
        while start < len(rows):
            chunk = rows[start : start + rng.randint(20, 120)]
            start += len(chunk)
            marks = ", ".join("(" + ", ".join("?" * len(chunk[0])) + ")" for _ in chunk)
            params = [value for row in chunk for value in row]
            result = await kv.sql(f"INSERT INTO {name} VALUES {marks}", params)
            assert result.rowcount == len(chunk)


def _shard(config: Configuration, key: object) -> ShardId:
    return shard_map(config.keyspaces["default"]).shard(str(key))


async def _move_some(cluster: SimCluster, keys: list[object], count: int) -> list[ShardId]:
    """Move ``count`` shards that hold some of ``keys`` to another group; settle."""
    config = await cluster.configuration()
    moved: list[ShardId] = []
    for key in keys:
        shard = _shard(config, key)
        if shard in moved:
            continue
        owner = config.owner(shard)
        target = min(g for g in config.groups if g != owner)
        await cluster.move(shard, target)
        moved.append(shard)
        if len(moved) == count:
            break
    await cluster.settled()
    return moved


@pytest.mark.virtual_time
async def test_generated_queries_match_single_sqlite_across_a_shard_move(
    tmp_path: Path, seed: int, rng: random.Random
) -> None:
    data = make_rows(rng, DEFAULT_TABLES)
    reference = reference_database(data)
    cluster = SimCluster(tmp_path, groups=3, seed=seed)
    async with cluster:
        await cluster.join(1, 2, 3)
        await cluster.settled()
        async with cluster.client(deadline_s=30.0) as kv:
            await _load(kv, data, rng)
            before = await cluster.configuration()
            moved = await _move_some(cluster, [r[0] for r in data["t"]], MOVES)
            after = await cluster.configuration()
            assert all(before.owner(s) != after.owner(s) for s in moved)
            total = await kv.sql("SELECT count(*) FROM t")
            assert total.rows == [(len(data["t"]),)]
            for key in [r[0] for r in data["t"]]:  # each row of a moved shard, pinned
                if _shard(after, key) in moved:
                    found = await kv.sql("SELECT id FROM t WHERE id = $1", [key])
                    assert found.rows == [(key,)]
            generator = QueryGenerator(rng, data)
            started = time.monotonic()

            async def execute(sql: str, params: Sequence[SqlValue]) -> list[Row]:
                return (await kv.sql(sql, params)).rows

            await compare_queries(execute, reference, generator, QUERIES, seed)
            print(f"{QUERIES} queries in {time.monotonic() - started:.1f}s (real time)")
    reference.close()


JOIN_QUERIES = 250
"""Generated join and subquery queries against the simulated cluster per run (each reads
two or three tables over 64 shards; the in-process suite runs 1,200 more)."""


@pytest.mark.virtual_time
async def test_generated_joins_match_single_sqlite_across_shard_moves(
    tmp_path: Path, seed: int, rng: random.Random
) -> None:
    data = make_join_rows(rng)
    reference = join_reference(data)
    cluster = SimCluster(tmp_path, groups=3, seed=seed)
    async with cluster:
        await cluster.join(1, 2, 3)
        await cluster.settled()
        async with cluster.client(deadline_s=30.0) as kv:

            async def execute(sql: str, params: Sequence[SqlValue]) -> list[Row]:
                return (await kv.sql(sql, params)).rows

            await load_join_tables(execute, data)
            # Customers' shards move, with their orders (co-located: the same shards).
            moved = await _move_some(cluster, [r[0] for r in data["c"]], MOVES)
            assert moved

            generator = JoinQueryGenerator(rng)
            await compare_queries(execute, reference, generator, JOIN_QUERIES, seed)
    reference.close()


async def _rows(kv: Client, sql: str, params: list[object] | None = None) -> list[Row]:
    return (await kv.sql(sql, params)).rows


@pytest.mark.virtual_time
async def test_ddl_reaches_every_shard_including_one_that_moves(tmp_path: Path, seed: int) -> None:
    cluster = SimCluster(tmp_path, groups=2, seed=seed)
    async with cluster:
        await cluster.join(1, 2)
        await cluster.settled()
        async with cluster.client() as kv, cluster.client() as other:
            await _rows(other, "SELECT 1")  # caches the configuration before any table
            await kv.sql(
                "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT) WITH (distribution = 'id')"
            )
            marks = ", ".join("(?, ?)" for _ in range(100))
            params: list[object] = [v for i in range(100) for v in (i, f"n{i}")]
            assert (await kv.sql(f"INSERT INTO items VALUES {marks}", params)).rowcount == 100
            await kv.sql("ALTER TABLE items ADD COLUMN qty INTEGER NOT NULL DEFAULT 5")
            # Every shard of the keyspace has the column (a read of all 64 shards).
            assert await _rows(kv, "SELECT count(*), sum(qty) FROM items") == [(100, 500)]
            assert (await kv.sql("UPDATE items SET qty = id WHERE id < 10")).rowcount == 10
            # A client whose configuration predates the table plans again and sees it.
            assert await _rows(other, "SELECT qty FROM items WHERE id = 7") == [(7,)]

            # A shard that moves after the DDL keeps its column, rows and index.
            config = await cluster.configuration()
            shard = _shard(config, 3)
            target = 2 if config.owner(shard) == 1 else 1
            await cluster.move(shard, target)
            await cluster.settled()
            assert await _rows(kv, "SELECT name, qty FROM items WHERE id = 3") == [("n3", 3)]
            with pytest.raises(SqlConstraintError):
                await kv.sql("INSERT INTO items VALUES (3, 'again', 1)")
            # DDL after the move reaches the moved shard in its new group.
            await kv.sql("ALTER TABLE items ADD COLUMN note TEXT")
            await kv.sql("UPDATE items SET note = 'moved' WHERE id = 3")
            assert await _rows(kv, "SELECT note, qty FROM items WHERE id = 3") == [("moved", 3)]
            await kv.sql(
                "CREATE TABLE tags (id INTEGER PRIMARY KEY, tag TEXT) WITH (distribution = 'id')"
            )
            await kv.sql("INSERT INTO tags VALUES (3, 'x'), (4, 'y')")
            assert await _rows(kv, "SELECT tag FROM tags ORDER BY id") == [("x",), ("y",)]

            # DROP TABLE empties every shard: a table of the same name starts afresh.
            await kv.sql("DROP TABLE items")
            with pytest.raises(SqlCatalogError):
                await kv.sql("SELECT * FROM items")
            await kv.sql(
                "CREATE TABLE items (id INTEGER PRIMARY KEY, price REAL) WITH (distribution = 'id')"
            )
            assert await _rows(kv, "SELECT count(*) FROM items") == [(0,)]
            # The other client planned with the old definition: its shards say so, it
            # plans again with the new one.
            result = await other.sql("SELECT * FROM items")
            assert result.columns == ("id", "price") and result.rows == []
            assert await _rows(other, "SELECT count(*) FROM tags") == [(2,)]


@pytest.mark.virtual_time
async def test_a_failing_batch_changes_nothing_and_the_group_keeps_serving(
    tmp_path: Path, seed: int
) -> None:
    cluster = SimCluster(tmp_path, groups=2, seed=seed)
    async with cluster:
        await cluster.join(1, 2)
        await cluster.settled()
        async with cluster.client() as kv:
            await kv.sql(
                "CREATE TABLE acct (id INTEGER PRIMARY KEY, owner TEXT NOT NULL, v INTEGER) "
                "WITH (distribution = 'id')"
            )
            await kv.sql("INSERT INTO acct VALUES (1, 'a', 10), (2, 'b', 20)")
            config = await cluster.configuration()
            # A new key on the shard of key 1: its batch holds a new row and a duplicate.
            fresh = next(k for k in range(3, 10_000) if _shard(config, k) == _shard(config, 1))
            with pytest.raises(SqlConstraintError, match="UNIQUE"):
                await kv.sql("INSERT INTO acct VALUES ($1, 'c', 30), (1, 'd', 40)", [fresh])
            assert await _rows(kv, "SELECT id FROM acct WHERE id = $1", [fresh]) == []
            assert await _rows(kv, "SELECT owner, v FROM acct WHERE id = 1") == [("a", 10)]

            # One shard's batch fails: a write to several shards is one transaction, so
            # no shard applies its batch (each tried it at prepare; one refused).
            keys = list(range(100, 140))
            assert len({_shard(config, k) for k in keys}) > 2
            bad = keys[7]
            values = ", ".join(f"({k}, {'NULL' if k == bad else repr(str(k))}, 0)" for k in keys)
            with pytest.raises(
                SqlConstraintError, match=r"NOT NULL constraint failed: acct\.owner"
            ):
                await kv.sql(f"INSERT INTO acct VALUES {values}")
            assert await _rows(kv, "SELECT id FROM acct WHERE id >= 100") == []
            good = ", ".join(f"({k}, {str(k)!r}, 0)" for k in keys)
            assert (await kv.sql(f"INSERT INTO acct VALUES {good}")).rowcount == len(keys)
            stored = {r[0] for r in await _rows(kv, "SELECT id FROM acct WHERE id >= 100")}
            assert stored == set(keys)

            # Every replica applied the failures alike and none halted; the group serves.
            for gid in (1, 2):
                for server in cluster.servers[gid]:
                    status = await cluster.status(server)
                    assert status is not None and not status.halted, server
            await kv.sql("INSERT INTO acct VALUES ($1, 'c', 30)", [fresh])
            assert await _rows(kv, "SELECT owner FROM acct WHERE id = $1", [fresh]) == [("c",)]
            await kv.put("a-key", "and KV still works")
            assert await kv.get("a-key") == "and KV still works"


@pytest.mark.virtual_time
async def test_a_retried_sql_write_applies_once(tmp_path: Path, seed: int) -> None:
    cluster = SimCluster(tmp_path, groups=2, seed=seed)
    async with cluster:
        await cluster.join(1, 2)
        await cluster.settled()
        async with cluster.client(deadline_s=60.0) as kv:
            # No unique key: a write applied twice would show as two rows.
            await kv.sql("CREATE TABLE log (id INTEGER, note TEXT) WITH (distribution = 'id')")
            config = await cluster.configuration()
            shard = _shard(config, 7)
            statement = SqlStatement('INSERT INTO "sql_log" VALUES (:a, :b)', {"a": 7, "b": "x"})
            digest = schema_digest(config.tables, "default")
            request = SqlWriteRequest(shard, "retrier/0", 1, (statement,), config.num, digest)
            gid = config.owner(shard)
            for _ in range(2):
                reply: SqlReply = await cluster.call_group(gid, SQL_WRITE, request)
                assert reply.status == "ok" and reply.rowcount == 1 and reply.failure is None
            # The de-duplication state moves with the shard: a retry at the new owner is
            # answered from it, not applied again.
            target = 2 if gid == 1 else 1
            await cluster.move(shard, target)
            await cluster.settled()
            reply = await cluster.call_group(target, SQL_WRITE, request)
            assert reply.status == "ok" and reply.rowcount == 1
            assert await _rows(kv, "SELECT count(*) FROM log WHERE id = 7") == [(1,)]

            # Through the client on a network that drops, duplicates and reorders.
            cluster.unreliable()
            for i in range(100, 140):
                await kv.sql("INSERT INTO log VALUES ($1, 'y')", [i])
            cluster.unreliable(False)
            rows = await _rows(kv, "SELECT id, count(*) FROM log WHERE id >= 100 GROUP BY id")
            assert sorted(rows) == [(i, 1) for i in range(100, 140)]


@pytest.mark.virtual_time
async def test_a_shard_runs_a_statement_only_against_the_tables_it_was_planned_with(
    tmp_path: Path, seed: int
) -> None:
    cluster = SimCluster(tmp_path, groups=2, seed=seed)
    async with cluster:
        await cluster.join(1, 2)
        await cluster.settled()
        async with cluster.client() as kv:
            await kv.sql("CREATE TABLE t (id INTEGER, v INTEGER) WITH (distribution = 'id')")
            await kv.sql("INSERT INTO t VALUES (1, 1), (2, 2), (3, 3), (4, 4)")
            config = await cluster.configuration()
            digest = schema_digest(config.tables, "default")
            shard = _shard(config, 1)
            gid = config.owner(shard)
            fragment = 'SELECT count(*) FROM "sql_t"'

            def read(num: int, schema: int) -> SqlReadRequest:
                return SqlReadRequest(shard, fragment, {}, 10, num, schema)

            reply: SqlReply = await cluster.call_group(gid, SQL_READ, read(config.num, digest))
            assert reply.schema == "" and reply.rows and reply.rows[0][0] >= 1
            ahead = await cluster.call_group(gid, SQL_READ, read(config.num + 1, digest ^ 1))
            assert ahead.schema == "behind" and not ahead.rows
            older = await cluster.call_group(gid, SQL_READ, read(config.num - 1, digest ^ 1))
            assert older.schema == "changed" and older.config_num == config.num
            # A refused write is not remembered: the same id and number apply later.
            statement = SqlStatement('INSERT INTO "sql_t" VALUES (1, 9)')
            write = SqlWriteRequest(shard, "w/0", 1, (statement,), config.num + 1, digest ^ 1)
            refused = await cluster.call_group(gid, SQL_WRITE, write)
            assert refused.schema == "behind" and refused.rowcount == 0
            write = SqlWriteRequest(shard, "w/0", 1, (statement,), config.num, digest)
            applied = await cluster.call_group(gid, SQL_WRITE, write)
            assert applied.schema == "" and applied.rowcount == 1

            # A group cut off from the controller stays at the old tables: the DDL
            # statement says so when its deadline passes, and statements on that group's
            # shards wait for it instead of running against the old tables.
            lagging = cluster.servers[2]
            cluster.partition(lagging, cluster.controllers)
            with pytest.raises(ClientTimeoutError, match="group 2 had not applied it"):
                await kv.sql("ALTER TABLE t ADD COLUMN w INTEGER DEFAULT 7", deadline_s=3.0)
            with pytest.raises(ClientTimeoutError, match="yet to reach configuration"):
                await kv.sql("SELECT sum(w) FROM t", deadline_s=2.0)
            waiting = asyncio.ensure_future(kv.sql("SELECT sum(w) FROM t", deadline_s=30.0))
            await asyncio.sleep(1.0)
            assert not waiting.done()
            cluster.heal()
            assert (await waiting).rows == [(5 * 7,)]


@pytest.mark.virtual_time
async def test_shipped_rows_are_refused_at_the_door_when_hostile_and_joined_when_not(
    tmp_path: Path, seed: int
) -> None:
    """A broadcast join's rows travel in the read request: the server checks them before
    the read reaches the state machine, and the group serves on either way."""
    cluster = SimCluster(tmp_path, groups=1, seed=seed)
    async with cluster:
        await cluster.join(1)
        await cluster.settled()
        async with cluster.client() as kv:
            await kv.sql("CREATE TABLE t (id INTEGER, v TEXT) WITH (distribution = 'id')")
            await kv.sql("INSERT INTO t VALUES (1, '1'), (2, 'b')")
            config = await cluster.configuration()
            digest = schema_digest(config.tables, "default")
            shard = _shard(config, 1)
            gid = config.owner(shard)
            join = 'SELECT t.id, s.n FROM "sql_t" t JOIN _sw_t0 s ON s.n = t.v'

            def read(*rows: tuple[object, ...], name: str = "_sw_t0") -> SqlReadRequest:
                shipped = ShippedRows(name, (("n", "TEXT"),), rows)
                return SqlReadRequest(shard, join, {}, 10, config.num, digest, (shipped,))

            hostile = [
                read((1,), name="sql_t"),
                read((1, 2)),
                read(((1 << 64) - 1,)),
            ]
            for request in hostile:
                reply: SqlReply = await cluster.call_group(gid, SQL_READ, request)
                assert reply.error and not reply.rows, reply
            # 1 travels as an integer and is stored as '1' by the TEXT column, as in t.
            reply = await cluster.call_group(gid, SQL_READ, read((1,), ("zz",)))
            assert reply.error == "" and [tuple(r) for r in reply.rows] == [(1, "1")], reply
            assert (await _rows(kv, "SELECT count(*) FROM t")) == [(2,)]


@pytest.mark.virtual_time
async def test_a_scatter_read_is_one_request_per_group_and_a_shard_it_cannot_settle_goes_alone(
    tmp_path: Path, seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    cluster = SimCluster(tmp_path, groups=2, seed=seed)
    async with cluster:
        await cluster.join(1, 2)
        await cluster.settled()
        async with cluster.client() as kv:
            await kv.sql("CREATE TABLE t (id INTEGER, v TEXT) WITH (distribution = 'id')")
            values = ", ".join(f"({i}, '{'x' * 40}')" for i in range(200))
            await kv.sql(f"INSERT INTO t VALUES {values}")
            # (Until the INSERT's transaction is resolved everywhere, its shards answer
            # `locked` and are read alone, after a pause: wait for that first.)
            assert await _rows(kv, "SELECT count(*) FROM t") == [(200,)]
            alone: list[ShardId] = []
            original = ClusterShards.read

            async def counted(
                self: ClusterShards, shard: ShardId, fragment: Fragment, max_rows: int
            ) -> list[Row]:
                alone.append(shard)
                return await original(self, shard, fragment, max_rows)

            monkeypatch.setattr(ClusterShards, "read", counted)
            assert await _rows(kv, "SELECT count(*) FROM t") == [(200,)]
            assert alone == []  # (each group's shards in one request)
            # Rows past a shared frame: the shards that do not fit are read alone.
            monkeypatch.setattr(group_reads, "MAX_SQL_REPLY_BYTES", 600)
            rows = await _rows(kv, "SELECT id FROM t")
            assert sorted(int(str(r[0])) for r in rows) == list(range(200))
            assert alone, "some shards did not fit a shared frame of 600 bytes"
            monkeypatch.setattr(group_reads, "MAX_SQL_REPLY_BYTES", MAX_SQL_REPLY_BYTES)
            # Hostile requests are refused at the door; the group serves on.
            config = await cluster.configuration()
            digest = schema_digest(config.tables, "default")
            gid = config.owner(_shard(config, 1))
            mine = [i for i in range(64) if config.owner(ShardId("default", i)) == gid]
            other = next(i for i in range(64) if config.owner(ShardId("default", i)) != gid)
            sql = 'SELECT count(*) FROM "sql_t"'

            def read(shards: Sequence[int], max_rows: int = 10) -> SqlGroupReadRequest:
                return SqlGroupReadRequest("default", tuple(shards), sql, {}, max_rows,
                                           config.num, digest)  # fmt: skip

            for hostile in (read([]), read(range(2000)), read([mine[0]] * 2), read(mine, -1)):
                refused: SqlGroupReadReply = await cluster.call_group(gid, SQL_GROUP_READ, hostile)
                assert refused.error and not refused.replies, refused
            mixed: SqlGroupReadReply = await cluster.call_group(
                gid, SQL_GROUP_READ, read([mine[0], other, mine[1]])
            )
            assert [r.status for r in mixed.replies] == ["ok", "wrong_group", "ok"]
            assert await _rows(kv, "SELECT count(*) FROM t") == [(200,)]
