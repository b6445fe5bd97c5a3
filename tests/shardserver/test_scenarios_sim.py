"""Every sharded-KV scenario in the simulator: a controller of 3 and groups of 3 servers
in one process, on virtual time."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from shardwise.errors import RemoteCallError
from shardwise.model.config import Configuration
from shardwise.model.kv import MAX_BATCH_OPS, Append
from shardwise.shardserver.protocol import (
    BATCH,
    READ,
    BatchRequest,
    ReadRequest,
    WriteRequest,
)
from shardwise.testing import scenarios
from shardwise.testing.cluster import Cluster, SimCluster

ALL = [
    scenarios.static_shards,
    scenarios.wrong_group_is_refused,
    scenarios.join_then_leave,
    scenarios.moved_shards_are_deleted,
    scenarios.full_restart,
    scenarios.server_misses_changes,
    scenarios.unaffected_shards_keep_serving,
    scenarios.shard_serves_as_soon_as_it_arrives,
    scenarios.leave_with_ring_moves_only_the_leavers_shards,
    scenarios.retry_across_a_migration_applies_once,
    scenarios.leaders_killed_mid_migration,
    scenarios.group_restarted_mid_migration,
    scenarios.clients_cannot_pull_or_drop_shards,
]


@pytest.mark.virtual_time
@pytest.mark.parametrize("scenario", ALL, ids=lambda s: s.__name__)
async def test_scenario_in_the_simulator(
    scenario: scenarios.Scenario, tmp_path: Path, seed: int
) -> None:
    async with SimCluster(tmp_path, groups=3, seed=seed) as cluster:
        await scenario(cluster)


@pytest.mark.virtual_time
async def test_concurrent_appends_in_the_simulator(tmp_path: Path, seed: int) -> None:
    async with SimCluster(tmp_path, groups=3, seed=seed) as cluster:
        await scenarios.concurrent_appends(cluster, seed)


@pytest.mark.virtual_time
async def test_a_follower_serves_a_read_and_names_the_leader(tmp_path: Path, seed: int) -> None:
    async with SimCluster(tmp_path, groups=1, seed=seed) as cluster:
        await cluster.join(1)
        await cluster.settled()
        config = await cluster.configuration()
        async with cluster.client() as kv:
            await kv.put("k", "v")
        leader = await cluster.group_status(1)
        assert leader is not None
        follower = next(s for s in cluster.servers[1] if s != leader.node_id)
        shard = scenarios.shard_of(config, "k")
        reply = await cluster.call(follower, READ, ReadRequest(shard, "k"))
        assert (reply.status, reply.value, reply.leader) == ("ok", "v", leader.node_id)
        reply = await cluster.call(leader.node_id, READ, ReadRequest(shard, "k"))
        assert (reply.status, reply.value, reply.leader) == ("ok", "v", None)


async def _leader_of_first(cluster: Cluster, *gids: int) -> tuple[Configuration, str]:
    """Join ``gids``; the configuration and the first group's leader."""
    await cluster.join(*gids)
    await cluster.settled()
    config = await cluster.configuration()
    leader = await cluster.group_status(gids[0])
    assert leader is not None
    return config, leader.node_id


def _keys_of_group(config: Configuration, gid: int, count: int) -> list[str]:
    keys = (f"key-{n}" for n in range(10_000))
    owned = (k for k in keys if config.owner(scenarios.shard_of(config, k)) == gid)
    return list(itertools.islice(owned, count))


@pytest.mark.virtual_time
async def test_a_batch_answers_each_operation_as_if_it_came_alone(
    tmp_path: Path, seed: int
) -> None:
    async with SimCluster(tmp_path, groups=2, seed=seed) as cluster:
        config, leader = await _leader_of_first(cluster, 1, 2)
        mine, theirs = _keys_of_group(config, 1, 2), _keys_of_group(config, 2, 1)[0]

        def write(key: str, seq: int, value: str) -> WriteRequest:
            return WriteRequest(scenarios.shard_of(config, key), "batcher", seq, Append(key, value))

        # Two appends to one key and one to another in a single entry, and a write and a
        # read of a shard this group does not serve.
        batch = BatchRequest(
            reads=(ReadRequest(scenarios.shard_of(config, theirs), theirs),),
            writes=(write(mine[0], 1, "a"), write(mine[0], 2, "b"), write(mine[1], 3, "c"),
                    write(theirs, 4, "x")),
        )  # fmt: skip
        reply = await cluster.call(leader, BATCH, batch)
        assert [r.status for r in reply.writes] == ["ok", "ok", "ok", "wrong_group"]
        assert all(r.result is not None and r.result.ok for r in reply.writes[:3])
        assert reply.writes[3].config_num == config.num
        assert [r.status for r in reply.reads] == ["wrong_group"]
        # A write again (a retry): answered from the session table, not applied again.
        again = BatchRequest(
            reads=tuple(ReadRequest(scenarios.shard_of(config, k), k) for k in mine),
            writes=(write(mine[1], 3, "c"),),
        )
        reply = await cluster.call(leader, BATCH, again)
        assert [r.status for r in reply.writes] == ["ok"]
        assert [(r.status, r.value) for r in reply.reads] == [("ok", "ab"), ("ok", "c")]
        async with cluster.client() as kv:
            assert await kv.mget(mine) == {mine[0]: "ab", mine[1]: "c"}


@pytest.mark.virtual_time
async def test_concurrent_operations_of_a_client_travel_in_batches(
    tmp_path: Path, seed: int
) -> None:
    async with SimCluster(tmp_path, groups=2, seed=seed) as cluster:
        await cluster.join(1, 2)
        await cluster.settled()
        async with cluster.client() as kv:
            data = {f"k{n}": f"v{n}" for n in range(40)}
            await kv.mput(data)
            written = kv.batches_sent
            assert written > 0, "40 writes at once over 2 groups went one by one"
            assert await kv.mget(list(data)) == data
            assert kv.batches_sent > written
            batched = kv.batches_sent
            await kv.put("alone", "1")  # a lone operation goes as the plain call
            assert await kv.get("alone") == "1"
            assert kv.batches_sent == batched


@pytest.mark.virtual_time
async def test_a_batch_over_the_limit_is_refused(tmp_path: Path, seed: int) -> None:
    async with SimCluster(tmp_path, groups=1, seed=seed) as cluster:
        config, leader = await _leader_of_first(cluster, 1)
        shard = scenarios.shard_of(config, "k")
        reads = tuple(ReadRequest(shard, "k") for _ in range(MAX_BATCH_OPS + 1))
        with pytest.raises(RemoteCallError, match="at most"):
            await cluster.call(leader, BATCH, BatchRequest(reads=reads))
        status = await cluster.status(leader)
        assert status is not None  # and the server goes on serving
