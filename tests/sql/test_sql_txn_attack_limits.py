"""Hostile tests: the limits of a transaction's visit (``txn.sql``) to a shard's SQL.

A plain SQL write is timed by the leader before it is logged (``sqlshard.time_trial``,
``MAX_WRITE_SECONDS`` = 0.25 s) and a read fragment stops at its time limit; a visit
runs the transaction's pending writes and the statement tried on the leader's event loop
under a *step* limit only (``SqlStoreMixin.sql_visit``: ``run_batch(max_steps=...)``),
and a step's cost grows with the values it handles (``tests/security/test_big_value_work``).

Found by a hostile review; each test here failed before its fix (the docstrings
describe the bug as it was found: ``git log`` has the fix)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from shardwise.model.config import Configuration, ShardId
from shardwise.model.schemes import shard_map
from shardwise.model.sql import SqlStatement
from shardwise.net.leader import CallDeadline
from shardwise.shardserver.protocol import (
    SQL_WRITE,
    TXN_SQL,
    SqlWriteRequest,
    TxnSqlRequest,
    schema_digest,
)
from shardwise.testing.cluster import SimCluster

ROWS = 30  # 30 x 30 hex() calls on ~2 MB: ~2 s of one event loop here


def _costly() -> str:
    values = ",".join(f"({i})" for i in range(1, ROWS + 1))
    return (
        'INSERT INTO "sql_h" ("id", "i") SELECT 1, (SELECT sum(length(hex(zeroblob('
        "1000000 + a.column1 + b.column1)))) "
        f"FROM (VALUES {values}) a, (VALUES {values}) b)"
    )


def _shard(config: Configuration, key: object) -> ShardId:
    return shard_map(config.keyspaces["default"]).shard(str(key))


@pytest.mark.virtual_time
async def test_a_visit_cannot_hold_the_leader_for_seconds(tmp_path: Path, seed: int) -> None:
    """The same statement, sent as a plain ``shard.sql_write``, is refused by the leader's
    time trial (> 0.25 s); sent as a transaction's visit (``txn.sql`` with it as the
    statement to try, or 1000 times over in ``pending``), it runs to its end on the
    leader's event loop, seconds per visit, and again on every later visit of the
    transaction -- a client holds a group's leader (Raft heartbeats, every other
    request) for as long as it likes.

    Cause: ``shardserver/txn/handlers.py`` ``_sql`` (no ``time_trial`` as ``_sql_refused``
    does for a prepare) / ``sqlstore.py`` ``sql_visit`` (``run_batch`` with a step limit
    only)."""
    cluster = SimCluster(tmp_path, groups=1, seed=seed)
    async with cluster, cluster.client() as kv:
        await cluster.join(1)
        await cluster.settled()
        await kv.sql(
            "CREATE TABLE h (id INTEGER PRIMARY KEY, i INTEGER) WITH (distribution = 'id')"
        )
        config = await cluster.configuration()
        shard = _shard(config, 1)
        digest = schema_digest(config.tables, "default")
        statement = SqlStatement(_costly(), {})
        call = CallDeadline.starting_now("test", asyncio.get_running_loop().time() + 30)

        plain = SqlWriteRequest(shard, "w", 1, (statement,), config.num, digest)
        refused = await kv._router.call(shard, SQL_WRITE, plain, call)
        assert refused.failure is not None and "0.25 s" in refused.failure.message  # control

        visit = TxnSqlRequest(shard, statements=(statement,), catalog_num=config.num, schema=digest)
        started = time.monotonic()
        reply = await kv._router.call(shard, TXN_SQL, visit, call)
        elapsed = time.monotonic() - started
        assert reply.failure is not None or elapsed < 1.0, (
            f"a visit held the leader's event loop {elapsed:.1f} s: {reply}"
        )
