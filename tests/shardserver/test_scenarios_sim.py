"""Every sharded-KV scenario in the simulator: a controller of 3 and groups of 3 servers
in one process, on virtual time."""

from __future__ import annotations

from pathlib import Path

import pytest

from shardwise.shardserver.protocol import READ, ReadRequest
from shardwise.testing import scenarios
from shardwise.testing.cluster import SimCluster

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
