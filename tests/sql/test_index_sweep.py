"""Global indexes on the simulated cluster: consistent after random writes under
crashes, partitions and shard moves (``testing/indexsweep.py``, 50 seeds a run, a third
of them building an index online while the clients write), UNIQUE under concurrent
inserts of one value, and a control run whose planted bug the sweep must catch."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Final

import pytest

from shardwise.errors import ClientError, ShardwiseError, SqlConstraintError
from shardwise.sql import index_tables
from shardwise.testing.cluster import SimCluster
from shardwise.testing.indexsweep import IndexSweepOptions, run_index_sweep

CHUNKS: Final = 2
SEEDS_PER_CHUNK: Final = 25
"""50 seeds a run, in two tests (a failure names its seed)."""
SWEEP: Final = IndexSweepOptions(duration_s=1.2, clients=2, build=False)
BUILDING: Final = IndexSweepOptions(duration_s=1.2, clients=2, build=True)
CONTROL_SEEDS: Final = 4


@pytest.mark.virtual_time
@pytest.mark.parametrize("chunk", range(CHUNKS))
async def test_indexes_stay_consistent_under_faults(tmp_path: Path, seed: int, chunk: int) -> None:
    outcomes: dict[str, int] = {}
    for n in range(chunk * SEEDS_PER_CHUNK, (chunk + 1) * SEEDS_PER_CHUNK):
        options = BUILDING if n % 3 == 0 else SWEEP
        result = await run_index_sweep(seed + n, tmp_path / str(n), options)
        assert result.ok, result.describe()
        for what, count in result.outcomes.items():
            outcomes[what] = outcomes.get(what, 0) + count
    print(f"seeds {seed + chunk * SEEDS_PER_CHUNK}..: {outcomes}")
    assert outcomes.get("ok", 0) > 20 * SEEDS_PER_CHUNK and outcomes.get("duplicate", 0) > 0


@pytest.mark.virtual_time
async def test_control_maintenance_that_skips_deletes_is_caught(
    tmp_path: Path, seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The planted bug: writes insert new entries but never delete old ones."""
    monkeypatch.setattr(index_tables, "_deletes", lambda entries: [])
    for n in range(CONTROL_SEEDS):
        result = await run_index_sweep(seed + n, tmp_path / str(n), SWEEP)
        if not result.ok:
            print(result.describe().splitlines()[0])
            return
    pytest.fail(f"the planted bug went unnoticed over {CONTROL_SEEDS} seeds from {seed}")


@pytest.mark.virtual_time
async def test_concurrent_inserts_of_one_unique_value_exactly_one_wins(
    tmp_path: Path, seed: int
) -> None:
    """Eight clients insert rows (on different shards) with the same email at once,
    ten rounds: each round exactly one row commits, every other insert is refused as a
    duplicate (or conflicts and is retried into one)."""
    cluster = SimCluster(tmp_path, groups=3, seed=seed)
    async with cluster:
        await cluster.join(1, 2, 3)
        await cluster.settled()
        clients = [cluster.client() for _ in range(8)]
        for client in clients:
            await client.__aenter__()
        try:
            await clients[0].sql(
                "CREATE TABLE u (id INTEGER, email TEXT UNIQUE) WITH (distribution = 'id')"
            )
            for round_ in range(10):
                email = f"same{round_}@x"

                async def insert(n: int, email: str = email, round_: int = round_) -> str:
                    try:
                        await clients[n].sql(
                            "INSERT INTO u VALUES (?, ?)", [round_ * 100 + n, email]
                        )
                    except SqlConstraintError:
                        return "duplicate"
                    except (ClientError, ShardwiseError) as exc:
                        return type(exc).__name__
                    return "ok"

                outcomes = await asyncio.gather(*(insert(n) for n in range(8)))
                assert outcomes.count("ok") == 1, outcomes
                assert outcomes.count("duplicate") == 7, outcomes
                rows = (
                    await clients[0].sql("SELECT count(*) FROM u WHERE email = ?", [email])
                ).rows
                assert rows == [(1,)]
        finally:
            for client in clients:
                await client.__aexit__(None, None, None)


@pytest.mark.virtual_time
async def test_a_lookup_over_several_index_shards_reads_them_as_of_one_moment(
    tmp_path: Path, seed: int
) -> None:
    """``IN`` over values on several index shards: their entries read in one read-only
    transaction (``read_snapshot``), then only the matching rows' shards; in a session's
    transaction too."""
    cluster = SimCluster(tmp_path, groups=2, seed=seed)
    async with cluster:
        await cluster.join(1, 2)
        await cluster.settled()
        async with cluster.client() as kv:
            await kv.sql(
                "CREATE TABLE u (id INTEGER, email TEXT UNIQUE, n INTEGER) "
                "WITH (distribution = 'id')"
            )
            await kv.sql("INSERT INTO u VALUES (1, 'a', 1), (2, 'b', 2), (3, 'c', 3), (4, 'd', 4)")
            select = "SELECT id, n FROM u WHERE email IN ('a', 'b', 'c', 'zz') ORDER BY id"
            plan = "\n".join(str(r[0]) for r in (await kv.sql("EXPLAIN ANALYZE " + select)).rows)
            assert "index: 4 shard(s) read" in plan and "3 shard(s) to read" in plan, plan
            assert (await kv.sql(select)).rows == [(1, 1), (2, 2), (3, 3)]
            await kv.sql("BEGIN")
            both = "SELECT id FROM u WHERE email IN ('a', 'd') ORDER BY id"
            assert (await kv.sql(both)).rows == [(1,), (4,)]
            await kv.sql("COMMIT")
