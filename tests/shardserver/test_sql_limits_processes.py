"""Hostile SQL writes sent to a real 3-replica group over the real transport.

A write the replicas could disagree on is refused before the log (``nondeterministic``);
a 3-way cross join is stopped at its work limit quickly, the same way on every replica
(``statement_too_costly``) while the group keeps its leader and serves; seeded hostile
batches go through the leader; a replica killed and restarted replays all of it; and at
the end every replica's shard files hold the same content (``shardserver/digest.py``).
"""

from __future__ import annotations

import random
import time
from collections import defaultdict
from pathlib import Path

import pytest

from shardwise.errors import NondeterministicSqlError, SqlWriteTooCostlyError
from shardwise.model.config import ShardId
from shardwise.model.sql import SqlStatement
from shardwise.shardserver.digest import file_digest, vacuumed_digest
from shardwise.shardserver.protocol import (
    SQL_WRITE,
    SqlReply,
    SqlWriteRequest,
    schema_digest,
)
from shardwise.testing.cluster import ProcessCluster, wait_until
from shardwise.testing.hostile_sql import HostileWrites

pytestmark = pytest.mark.timeout(240)

S0 = ShardId("default", 0)
ROWS = 300
CROSS_JOIN = 'UPDATE "sql_t" SET n = (SELECT count(*) FROM "sql_t" a, "sql_t" b, "sql_t" c)'
HOSTILE_BATCHES = 60


async def test_hostile_sql_writes_on_real_processes(
    tmp_path: Path, rng: random.Random, seed: int
) -> None:
    async with ProcessCluster(tmp_path, groups=1) as cluster:
        await cluster.join(1)
        await cluster.settled()
        await create_tables(cluster)
        config = await cluster.configuration()
        digest = schema_digest(config.tables, "default")
        seq = 0

        async def raw(*statements: SqlStatement) -> SqlReply:
            nonlocal seq
            seq += 1
            request = SqlWriteRequest(S0, "hostile", seq, statements, config.num, digest)
            reply: SqlReply = await cluster.call_group(1, SQL_WRITE, request)
            return reply

        # A raw write calling random() never reaches the log.
        refused = await raw(SqlStatement('INSERT INTO "sql_t" (id, v) VALUES (1, random())'))
        assert refused.failure is not None and refused.failure.code == "nondeterministic"
        rows = ", ".join(f"({i}, 'r', {i})" for i in range(1000, 1000 + ROWS))
        filled = await raw(SqlStatement(f'INSERT INTO "sql_t" (id, v, n) VALUES {rows}'))
        assert filled.failure is None and filled.rowcount == ROWS, filled

        before = await cluster.group_status(1)
        assert before is not None
        started = time.monotonic()
        costly = await raw(SqlStatement(CROSS_JOIN))
        took = time.monotonic() - started
        assert costly.failure is not None, costly
        # The leader's trial stops it before the log (max_write_ms); were it logged, the
        # step limit would stop it the same way on every replica (test_apply_failures).
        assert costly.failure.code == SqlWriteTooCostlyError.code
        assert (costly.failure.limit, costly.failure.value) == ("max_write_ms", 250), costly
        assert took < 3.0, f"the stopped write took {took:.2f} s"
        seq -= 1  # the same write again: the same answer
        again = await raw(SqlStatement(CROSS_JOIN))
        assert again.failure is not None and again.failure.code == costly.failure.code
        after = await cluster.group_status(1)
        assert after is not None and (after.node_id, after.term) == (before.node_id, before.term)

        writes = HostileWrites(rng)
        outcomes: dict[str, int] = defaultdict(int)
        for _ in range(HOSTILE_BATCHES):
            reply = await raw(*writes.batch().statements)
            assert reply.status == "ok", reply
            outcomes[reply.failure.code if reply.failure else "ok"] += 1
        assert outcomes["ok"] and outcomes["nondeterministic"], outcomes

        # A replica killed mid-way replays every entry, failed ones included.
        follower = next(s for s in cluster.servers[1] if s != after.node_id)
        await cluster.crash(follower)
        for _ in range(5):
            await raw(*writes.batch().statements)
        await cluster.restart(follower)
        async with cluster.client(deadline_s=30.0) as client:
            result = await client.sql("SELECT count(*) FROM t")
            assert result.rows == [(ROWS + 1,)]

        async def caught_up() -> bool:
            statuses = [await cluster.status(s) for s in cluster.servers[1]]
            applied = {s.applied for s in statuses if s is not None and not s.halted}
            return len(applied) == 1 and all(s is not None for s in statuses)

        await wait_until(caught_up, 60.0, "every replica to apply the same entries")
    assert_replicas_identical(tmp_path, seed)


async def create_tables(cluster: ProcessCluster) -> None:
    async with cluster.client(deadline_s=30.0) as client:
        await client.sql(
            "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT, n INTEGER) WITH (distribution = 'id')"
        )
        await client.sql(
            "CREATE TABLE h (id INTEGER PRIMARY KEY, i INTEGER, t TEXT, r REAL, b BLOB, "
            "x BLOB, m NUMERIC) WITH (distribution = 'id')"
        )
        # Through the coordinator: the time is fixed there, once.
        await client.sql("INSERT INTO t (id, v) VALUES (21, 'x')")
        await client.sql("UPDATE t SET v = strftime('%H:%M:%f') WHERE id = 21")
        with pytest.raises(NondeterministicSqlError):
            await client.sql("UPDATE t SET v = sqlite_version() WHERE id = 21")


def assert_replicas_identical(base: Path, seed: int) -> None:
    """Every replica's shard files (the cluster stopped), compared by content."""
    by_shard: dict[str, set[str]] = defaultdict(set)
    replicas = {p.parent.parent for p in base.glob("group1/*/shards/*.db")}
    assert len(replicas) == 3, replicas
    vacuumed: dict[str, set[str]] = defaultdict(set)
    for path in base.glob("group1/*/shards/*.db"):
        by_shard[path.name].add(file_digest(str(path)))
        vacuumed[path.name].add(vacuumed_digest(str(path)))
    assert by_shard and all(len(d) == 1 for d in by_shard.values()), f"seed {seed}: {by_shard}"
    # Byte for byte, too, once each file is rewritten without its history.
    assert all(len(d) == 1 for d in vacuumed.values()), f"seed {seed}: {vacuumed}"
