"""Hostile tests: statements that run on a keyspace of more than 64 shards, made atomic
(a write to several shards, on its own) or inside ``BEGIN`` ... ``COMMIT``.

A transaction that writes touched at most ``MAX_TXN_PARTICIPANTS`` = 64 shards
(``model/txn.py``; 256 since, and a transaction that only reads is not bound), and a
keyspace may have up to ``MAX_SHARDS_PER_KEYSPACE`` = 4096 (the default keyspace has 64).

Found by a hostile review; each test here failed before its fix (the docstrings
describe the bug as it was found: ``git log`` has the fix)."""

from __future__ import annotations

from pathlib import Path

import pytest

from shardwise.client import Client
from shardwise.errors import SqlLimitError
from shardwise.model.config import CreateKeyspace, Keyspace, Scheme
from shardwise.testing.cluster import SimCluster

SHARDS = 100


async def _big_table(cluster: SimCluster, kv: Client) -> None:
    await cluster.join(1)
    await cluster.admin.change(CreateKeyspace(Keyspace("big", Scheme(shards=SHARDS))))
    await cluster.settled()
    await kv.sql(
        "CREATE TABLE t (id INTEGER PRIMARY KEY, v INTEGER) "
        "WITH (distribution = 'id', keyspace = 'big')"
    )


@pytest.mark.virtual_time
async def test_an_unpruned_write_on_a_keyspace_of_100_shards_runs(
    tmp_path: Path, seed: int
) -> None:
    """``INSERT`` of rows spread over more than 64 shards, or ``UPDATE t SET v = 0`` /
    ``DELETE FROM t`` with no WHERE on a keyspace of 100 shards: the statement is planned
    as one batch per shard and ``sqltxn.write_atomically`` makes it one transaction with
    a blind part per shard; ``Transaction._commit`` -> ``check_parts`` raises
    ``RequestRefusedError: the transaction was refused: a transaction touches at most 64
    shards``. Nothing (no batching, no fallback) lets such a statement run at all.

    Cause: ``client/sqltxn.py`` ``write_atomically`` (via ``client/sql.py``
    ``ClusterShards.write``) with ``model/txn.py`` ``MAX_TXN_PARTICIPANTS``."""
    cluster = SimCluster(tmp_path, groups=1, seed=seed)
    async with cluster, cluster.client() as kv:
        await _big_table(cluster, kv)
        result = await kv.sql("INSERT INTO t VALUES " + ", ".join(f"({i}, 1)" for i in range(400)))
        assert result.rowcount == 400
        assert (await kv.sql("UPDATE t SET v = 0")).rowcount == 400
        assert (await kv.sql("DELETE FROM t")).rowcount == 400


@pytest.mark.virtual_time
async def test_a_full_scan_of_a_keyspace_of_100_shards_commits_in_a_transaction(
    tmp_path: Path, seed: int
) -> None:
    """``BEGIN; SELECT count(*) FROM t; COMMIT`` on a keyspace of 100 shards: each shard
    the scan visits is kept (``Transaction.saw_sql``), which refuses the 65th: the
    SELECT itself fails with ``RequestRefusedError: a transaction touches at most 64
    shards``. The DB-API has autocommit off by default, so
    every read there is in a transaction: ``pandas.read_sql`` then ``conn.commit()``
    fails on such a table. In the default keyspace (64 shards) any full scan plus one
    row of another keyspace does the same.

    Cause: ``client/txn.py`` ``saw_sql`` / ``parts`` (a shard only read counts as a
    participant; a read-only transaction need not prepare anywhere)."""
    cluster = SimCluster(tmp_path, groups=1, seed=seed)
    async with cluster, cluster.client() as kv:
        await _big_table(cluster, kv)
        assert (await kv.sql("SELECT count(*) FROM t")).rows == [(0,)]  # (control)
        await kv.sql("BEGIN")
        assert (await kv.sql("SELECT count(*) FROM t")).rows == [(0,)]
        await kv.sql("COMMIT")


@pytest.mark.virtual_time
async def test_an_insert_of_8_mib_over_8_shards_is_refused_whole_and_says_why(
    tmp_path: Path, seed: int
) -> None:
    """Eight rows of 1 MiB each, on eight different shards: every shard's share (~1 MiB)
    is under ``MAX_SQL_BATCH_BYTES``, but a write to several shards is one transaction,
    bound by ``MAX_TXN_BYTES`` (4 MiB in all: its prepares ride in one log entry per
    group). The review found it refused with a transaction's generic message; it is now
    a ``SqlLimitError`` that names the limit and says to split the write, raised before
    anything is sent (docs/sql.md, "Transactions", limits)."""
    cluster = SimCluster(tmp_path, groups=1, seed=seed)
    async with cluster, cluster.client() as kv:
        await cluster.join(1)
        await cluster.settled()
        await kv.sql("CREATE TABLE b (id INTEGER PRIMARY KEY, v TEXT) WITH (distribution = 'id')")
        config = await cluster.configuration()
        from shardwise.model.schemes import shard_map  # noqa: PLC0415

        shards = shard_map(config.keyspaces["default"])
        ids: list[int] = []
        for i in range(1, 10_000):
            if all(shards.shard(str(i)) != shards.shard(str(j)) for j in ids):
                ids.append(i)
            if len(ids) == 8:
                break
        big = "x" * (1 << 20)
        params: list[object] = []
        for i in ids:
            params += [i, big]
        marks = ", ".join("(?, ?)" for _ in ids)
        with pytest.raises(SqlLimitError, match="atomic up to 4194304 bytes: split it"):
            await kv.sql(f"INSERT INTO b VALUES {marks}", params, deadline_s=20)
        assert (await kv.sql("SELECT count(*) FROM b")).rows == [(0,)]
        half = ", ".join("(?, ?)" for _ in ids[:3])
        done = await kv.sql(f"INSERT INTO b VALUES {half}", params[:6], deadline_s=20)
        assert done.rowcount == 3


@pytest.mark.virtual_time
async def test_a_write_past_the_participant_bound_is_refused_whole_and_says_why(
    tmp_path: Path, seed: int
) -> None:
    """On a keyspace of 300 shards an unpruned UPDATE would be a transaction of 300
    participants: refused before anything is sent, naming the bound and what to do."""
    cluster = SimCluster(tmp_path, groups=1, seed=seed)
    async with cluster, cluster.client() as kv:
        await cluster.join(1)
        await cluster.admin.change(CreateKeyspace(Keyspace("huge", Scheme(shards=300))))
        await cluster.settled()
        await kv.sql(
            "CREATE TABLE h (id INTEGER PRIMARY KEY, v INTEGER) "
            "WITH (distribution = 'id', keyspace = 'huge')"
        )
        await kv.sql("INSERT INTO h VALUES (1, 1), (2, 2)")
        with pytest.raises(SqlLimitError, match=r"touches 300 shards .* at most 256: narrow it"):
            await kv.sql("UPDATE h SET v = 0")
        assert (await kv.sql("SELECT v FROM h ORDER BY id")).rows == [(1,), (2,)]
        assert (await kv.sql("UPDATE h SET v = 0 WHERE id IN (1, 2)")).rowcount == 2
