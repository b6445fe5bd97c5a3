"""a node of the cluster that is not the shard's new owner makes a group drop the
frozen copy of a moving shard (``shard.handed_off`` checks only the node role, while
``shard.pull`` checks that the caller gains the shard). With TLS, any node certificate of
another group is enough. Found by a hostile review; fails without the check."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from shardwise.model.config import Configuration, ShardId
from shardwise.net.rpc import CallContext
from shardwise.net.wire import PeerRole
from shardwise.shardserver.protocol import HandedOffRequest
from shardwise.shardserver.server import ShardServer
from shardwise.testing.cluster import SimCluster


@pytest.mark.virtual_time
async def test_handed_off_from_a_node_that_gains_nothing_is_forbidden(
    tmp_path: Path,
) -> None:
    cluster = SimCluster(tmp_path, groups=3, seed=7)
    async with cluster:
        await cluster.join(1, 2, 3)
        await cluster.settled()
        async with cluster.client(deadline_s=30.0) as kv:
            await kv.put("k", "precious")
        config = await cluster.configuration()
        shard = next(s for s in _shards(config) if config.owner(s) == 1)
        # Group 2 (the gainer) cannot reach group 1 yet: the shard stays frozen there.
        cluster.partition(cluster.servers[1], cluster.servers[2])
        result = await cluster.move(shard, 2)
        num = result.num
        g1 = [s for s in cluster._live.values() if isinstance(s, ShardServer) and s.gid == 1]
        for _ in range(600):
            if all(s.state_machine.frozen_store(shard, num) is not None for s in g1):
                break
            await asyncio.sleep(0.05)
        assert all(s.state_machine.frozen_store(shard, num) is not None for s in g1)
        leader = next(s for s in g1 if s.host.status().leader == s.host.id)

        # A node of group 3 (not the gainer) says the hand-off is done.
        outsider = cluster.servers[3][0]
        context = CallContext(outsider, PeerRole.NODE, asyncio.get_running_loop().time() + 10)
        reply = await leader._handed_off(HandedOffRequest(shard, num), context)
        await asyncio.sleep(1.0)
        still_there = [s.state_machine.frozen_store(shard, num) is not None for s in g1]
        assert reply.status == "forbidden" and all(still_there), (
            f"{reply.status}: group 1 dropped the only copy of {shard} on a non-member's word "
            f"(frozen copy kept: {still_there})"
        )


def _shards(config: Configuration) -> list[ShardId]:
    return [ShardId(ks, i) for ks, owners in config.owners.items() for i in range(len(owners))]
