"""Hostile tests: SQL transactions left prepared by a client that went away, and the
replicas' agreement afterwards (each of these passes: they pin down the behaviour)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from shardwise.model.config import Configuration, ShardId
from shardwise.model.sql import SqlStatement
from shardwise.model.txn import TxnPart, TxnSql, new_txn_id
from shardwise.net.leader import CallDeadline
from shardwise.shardserver.protocol import TXN_PREPARE, TxnPrepareRequest, schema_digest
from shardwise.testing.cluster import SimCluster

# pytest (--import-mode=importlib) imports this file as part of the namespace package
# tests.sql; mypy, with no __init__.py in tests/, sees a top-level module instead.
from .test_sql_txn_sim import deadline, setup_accounts, shard_of  # type: ignore[import-not-found]


def _digest(config: Configuration) -> int:
    return schema_digest(config.tables, "default")


def replica_rows(cluster: SimCluster, gid: int, shard: ShardId, sql: str) -> dict[str, Any]:
    """Each live replica of group ``gid``: the rows ``sql`` reads on its copy of ``shard``."""
    out: dict[str, Any] = {}
    for server in cluster.servers[gid]:
        service = cluster._live.get(server)
        if service is None:
            continue
        record = service.state_machine.shards.get(shard)
        if record is None or record.store is None:
            out[server] = None
            continue
        out[server] = sorted(record.store.read_sql(sql, {}, 1000))
    return out


async def _replicas_agree(cluster: SimCluster, gid: int, shard: ShardId, sql: str) -> None:
    for _ in range(100):
        seen = replica_rows(cluster, gid, shard, sql)
        if len({repr(v) for v in seen.values()}) == 1:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"replicas differ: {seen}")


@pytest.mark.virtual_time
async def test_a_half_prepared_sql_transaction_is_recovered_and_frees_the_shard(
    tmp_path: Path, seed: int
) -> None:
    """A client prepares its SQL on shard A (exclusive lock), lists shard B as the other
    participant, and dies before preparing B. Plain SQL on A must get through once the
    leader's recovery (``RECOVER_AFTER_S``) fences B and aborts A; the prepared INSERT
    must never apply; every replica agrees."""
    cluster = SimCluster(tmp_path, groups=2, seed=seed)
    async with cluster, cluster.client() as kv:
        a, b = await setup_accounts(cluster, kv)
        config = await cluster.configuration()
        sa, sb = shard_of(config, a), shard_of(config, b)
        call = CallDeadline.starting_now("test", deadline())
        txn = new_txn_id()
        insert = SqlStatement('INSERT INTO "sql_acct" VALUES (:k, 1)', {"k": a + 10_000_000})
        part = TxnPart(
            sa, sql=TxnSql(statements=(insert,), catalog_num=config.num, schema=_digest(config))
        )
        reply = await kv._router.call(
            sa, TXN_PREPARE, TxnPrepareRequest(txn, (sa, sb), (part,)), call
        )
        assert [v.state for v in reply.votes] == ["prepared"]

        start = asyncio.get_running_loop().time()
        done = await kv.sql("UPDATE acct SET balance = 5 WHERE id = ?", [a], deadline_s=15)
        assert done.rowcount == 1
        assert asyncio.get_running_loop().time() - start < 10
        rows = (await kv.sql("SELECT id, balance FROM acct ORDER BY id")).rows
        assert sorted(tuple(r) for r in rows) == sorted([(a, 5), (b, 100)])
        await cluster.settled()
        await _replicas_agree(cluster, config.owner(sa), sa, 'SELECT * FROM "sql_acct"')


@pytest.mark.virtual_time
async def test_two_sessions_crossing_sql_transactions_do_not_deadlock(
    tmp_path: Path, seed: int
) -> None:
    """Two sessions each write A then B and B then A, and commit at once, many times:
    each commit ends (committed or conflict) well within its deadline."""
    cluster = SimCluster(tmp_path, groups=2, seed=seed)
    async with cluster, cluster.client() as kv:
        a, b = await setup_accounts(cluster, kv)
        one, two = kv.sql_session(), kv.sql_session()
        outcomes: list[str] = []

        async def run(session: Any, first: int, second: int) -> None:
            for _ in range(10):
                try:
                    await session.execute("BEGIN", None, deadline())
                    for key in (first, second):
                        await session.execute(
                            "UPDATE acct SET balance = balance + 1 WHERE id = ?", [key], deadline()
                        )
                    await session.execute("COMMIT", None, deadline(5))
                    outcomes.append("committed")
                except Exception as exc:
                    outcomes.append(type(exc).__name__)
                    await session.execute("ROLLBACK", None, deadline())

        await asyncio.gather(run(one, a, b), run(two, b, a))
        assert set(outcomes) <= {"committed", "TransactionConflictError"}, outcomes
        rows: dict[Any, Any] = dict((await kv.sql("SELECT id, balance FROM acct")).rows)  # type: ignore[arg-type]
        assert rows[a] == rows[b] == 100 + outcomes.count("committed")


@pytest.mark.virtual_time
async def test_a_retried_prepare_answers_as_the_first(tmp_path: Path, seed: int) -> None:
    """The client's router sends a request again when an attempt times out or the leader
    changes (the first may have been applied). A shard that already recorded the
    transaction answers from its record (``txn/state.py`` ``prepare``: ``if known is not
    None: return TxnVote(part.shard, known.state)``), without the rows its statements
    change nor, for a refused one, the reason and the SQL error's code. So after such a
    retry ``Transaction._two_phase`` sums a rowcount of 0 for that shard (an
    ``UPDATE`` on several shards reports too few rows) and a constraint failure is seen
    as a bare conflict (``sql_failure`` unset: ``write_atomically`` retries it instead of
    raising the constraint error).

    Cause: ``src/shardwise/shardserver/txn/state.py`` ``prepare`` (the ``known`` branch;
    the rowcount and code are not recorded)."""
    cluster = SimCluster(tmp_path, groups=2, seed=seed)
    async with cluster, cluster.client() as kv:
        a, b = await setup_accounts(cluster, kv)
        config = await cluster.configuration()
        sa, sb = shard_of(config, a), shard_of(config, b)
        call = CallDeadline.starting_now("test", deadline())

        def prepare_on(shard: ShardId, sql: str, key: int) -> TxnPrepareRequest:
            statement = SqlStatement(sql, {"k": key})
            part_sql = TxnSql(
                statements=(statement,), catalog_num=config.num, schema=_digest(config)
            )
            return TxnPrepareRequest(new_txn_id(), (sa, sb), (TxnPart(shard, sql=part_sql),))

        request = prepare_on(sa, 'UPDATE "sql_acct" SET "balance" = 1 WHERE "id" = :k', a)
        first = await kv._router.call(sa, TXN_PREPARE, request, call)
        again = await kv._router.call(sa, TXN_PREPARE, request, call)
        refused = prepare_on(sb, 'UPDATE "sql_acct" SET "balance" = NULL WHERE "id" = :k', b)
        no = await kv._router.call(sb, TXN_PREPARE, refused, call)
        no_again = await kv._router.call(sb, TXN_PREPARE, refused, call)

        assert (first.votes[0].state, first.votes[0].rowcount) == ("prepared", 1)
        assert (no.votes[0].state, no.votes[0].code) == ("aborted", "constraint")
        assert (again.votes[0].state, again.votes[0].rowcount) == ("prepared", 1)
        assert (no_again.votes[0].state, no_again.votes[0].code) == ("aborted", "constraint")
