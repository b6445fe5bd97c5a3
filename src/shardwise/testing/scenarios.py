"""The sharded-KV scenarios, written once against :class:`~shardwise.testing.cluster.Cluster`
so they run on both kinds of cluster: each is an ``async`` function of a fresh cluster
that raises ``AssertionError`` when the store misbehaves. The test suite runs them all in
the simulator and a representative subset on real processes; run them against your own
build the same way::

    async with SimCluster(tmp, seed=1) as cluster:
        await scenarios.join_then_leave(cluster)
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable

from shardwise.client import Client
from shardwise.errors import ClientTimeoutError
from shardwise.model.config import Configuration, ShardId
from shardwise.model.kv import Append
from shardwise.model.schemes import shard_map
from shardwise.shardserver.protocol import (
    HANDED_OFF,
    PULL,
    WRITE,
    HandedOffRequest,
    KVReply,
    PullRequest,
    WriteRequest,
)
from shardwise.testing.cluster import Cluster, wait_until

Scenario = Callable[[Cluster], Awaitable[None]]

KEYS = [f"key-{i}" for i in range(40)]


def shard_of(config: Configuration, key: str) -> ShardId:
    return shard_map(config.keyspaces["default"]).shard(key)


async def fill(kv: Client, keys: list[str] = KEYS) -> dict[str, str]:
    data = {k: f"value of {k}" for k in keys}
    await kv.mput(data)
    return data


async def check(kv: Client, data: dict[str, str]) -> None:
    found = await kv.mget(list(data))
    missing = {k: (v, found[k]) for k, v in data.items() if found[k] != v}
    assert not missing, f"{len(missing)} keys wrong, e.g. {list(missing.items())[:3]}"


async def static_shards(cluster: Cluster) -> None:
    """Shutting a group down makes exactly its own shards unavailable."""
    await cluster.join(1, 2)
    async with cluster.client() as kv:
        data = await fill(kv)
        config = await cluster.configuration()
        await cluster.shutdown_group(1)
        for key, value in data.items():
            if config.owner(shard_of(config, key)) == 1:
                try:
                    await kv.get(key, deadline_s=1.0)
                except ClientTimeoutError:
                    continue
                raise AssertionError(f"{key} of a stopped group was served")
            assert await kv.get(key) == value
        await cluster.start_group(1)
        await check(kv, data)


async def wrong_group_is_refused(cluster: Cluster) -> None:
    """A group refuses a shard it does not own, naming its configuration."""
    await cluster.join(1, 2)
    config = await cluster.configuration()
    shard = next(s for s in config.shards_of(1))
    await cluster.settled()
    request = WriteRequest(shard, "probe", 1, Append("k", "x"))

    async def refused_by_group_2() -> bool:
        for server in cluster.servers[2]:
            reply: KVReply = await cluster.call(server, WRITE, request)
            if reply.status == "wrong_group":
                assert reply.config_num == config.num
                return True
        return False

    await wait_until(refused_by_group_2, 20, "group 2 to refuse a shard of group 1")


async def join_then_leave(cluster: Cluster) -> None:
    """Everything is still there after the groups that held it have left and stopped."""
    await cluster.join(1)
    async with cluster.client() as kv:
        data = await fill(kv)
        await cluster.join(2, 3)
        await check(kv, data)
        await cluster.leave(1)
        await cluster.settled()
        await cluster.shutdown_group(1)
        await check(kv, data)
        await cluster.leave(2)
        await cluster.settled()
        await cluster.shutdown_group(2)
        await check(kv, data)


async def moved_shards_are_deleted(cluster: Cluster) -> None:
    """After moves settle, each shard is held by exactly one group: nothing left behind."""
    await cluster.join(1)
    async with cluster.client() as kv:
        await fill(kv)
        await cluster.join(2, 3)
        await cluster.leave(1)
        await cluster.join(1)
        await cluster.settled()
    config = await cluster.configuration()
    held: list[ShardId] = []
    for gid in cluster.servers:
        status = await cluster.group_status(gid)
        assert status is not None
        held += [info.shard for info in status.shards]
    assert sorted(held) == sorted(ShardId("default", i) for i in range(64))
    assert all(config.owner(s) != 0 for s in held)


async def full_restart(cluster: Cluster) -> None:
    """Every server of every group and of the controller crashes; all comes back."""
    await cluster.join(1, 2)
    async with cluster.client() as kv:
        data = await fill(kv)
        for i in range(60):  # past the test clusters' snapshot interval
            await kv.append("log", f"{i},")
        everyone = [s for servers in cluster.servers.values() for s in servers]
        for server in everyone:
            await cluster.crash(server)
        for server in everyone:
            await cluster.restart(server)
        await check(kv, data)
        assert await kv.get("log") == "".join(f"{i}," for i in range(60))


async def server_misses_changes(cluster: Cluster) -> None:
    """A server down during several configuration changes catches up and is needed."""
    await cluster.join(1)
    laggard = cluster.servers[1][0]
    async with cluster.client() as kv:
        data = await fill(kv)
        await cluster.crash(laggard)
        await cluster.join(2)
        await cluster.leave(2)
        await cluster.join(3)
        await cluster.settled(gids=[1, 3])
        await cluster.restart(laggard)
        await cluster.settled(gids=[1, 3])
        for other in cluster.servers[1][1:2]:  # the laggard is now needed for a majority
            await cluster.crash(other)
        await check(kv, data)


async def concurrent_appends(cluster: Cluster, seed: int) -> None:
    """Appends from many clients during joins, leaves and restarts: each acknowledged
    append is there exactly once, in the order its client made them."""
    rng = random.Random(seed)
    await cluster.join(1)
    done = asyncio.Event()
    acked: dict[str, list[str]] = {}

    async def appender(n: int, kv: Client) -> None:
        key = f"append-{n % 5}"
        i = 0
        while not done.is_set():
            token = f"<{n}.{i}>"
            await kv.append(key, token)
            acked.setdefault(key, []).append(token)
            i += 1

    async with cluster.client() as kv:
        tasks = [asyncio.create_task(appender(n, kv)) for n in range(8)]
        await cluster.join(2)
        await cluster.join(3)
        victim = rng.choice(cluster.servers[2])
        await cluster.crash(victim)
        await cluster.leave(1)
        await cluster.restart(victim)
        await cluster.join(1)
        await cluster.leave(3)
        await cluster.settled()
        done.set()
        await asyncio.gather(*tasks)
        for key, tokens in acked.items():
            value = str(await kv.get(key) or "")
            for token in tokens:
                assert value.count(token) == 1, f"{token} in {key}: {value.count(token)} times"


async def unaffected_shards_keep_serving(cluster: Cluster) -> None:
    """A shard stuck in a move (its source is down) blocks nothing else."""
    await cluster.join(1, 2)
    async with cluster.client() as kv:
        data = await fill(kv)
        await cluster.settled()
        config = await cluster.configuration()
        stuck = config.shards_of(1)[0]
        await cluster.shutdown_group(1)
        await cluster.move(stuck, 2)
        for key in data:
            if config.owner(shard_of(config, key)) == 2:
                await kv.put(key, "new")
                assert await kv.get(key) == "new"


async def shard_serves_as_soon_as_it_arrives(cluster: Cluster) -> None:
    """Group 3 gains shards from groups 1 and 2; 2 is down, yet those from 1 serve."""
    await cluster.join(1, 2)
    async with cluster.client() as kv:
        data = await fill(kv)
        await cluster.settled()
        await cluster.shutdown_group(2)
        result = await cluster.join(3)
        config = await cluster.configuration()
        from_1 = {m.shard for m in result.moves if m.source == 1}
        assert from_1 and any(m.source == 2 for m in result.moves)
        for key, value in data.items():
            if shard_of(config, key) in from_1:
                assert await kv.get(key) == value
                await kv.put(key, "moved and written")


async def leave_with_ring_moves_only_the_leavers_shards(cluster: Cluster) -> None:
    await cluster.admin.rebalance("ring")
    await cluster.join(1, 2, 3)
    await cluster.settled()
    before = await cluster.configuration()
    result = await cluster.leave(3)
    assert {m.shard for m in result.moves} == set(before.shards_of(3))
    assert all(m.source == 3 for m in result.moves)
    await cluster.settled()


async def retry_across_a_migration_applies_once(cluster: Cluster) -> None:
    """The same request (client id, sequence number) sent before and after its shard
    moved is applied once: the de-duplication table moved with the shard."""
    await cluster.join(1)
    await cluster.settled()
    config = await cluster.configuration()
    key = "retried"
    shard = shard_of(config, key)
    request = WriteRequest(shard, "retrier", 7, Append(key, "x"))
    assert (await cluster.call_group(1, WRITE, request)).status == "ok"
    await cluster.join(2)
    await cluster.move(shard, 2)
    await cluster.settled()
    reply = await cluster.call_group(2, WRITE, request)
    assert reply.status == "ok" and reply.result is not None and not reply.result.stale
    async with cluster.client() as kv:
        assert await kv.get(key) == "x"


async def leaders_killed_mid_migration(cluster: Cluster) -> None:
    """The source's and then the target's leader die while shards move."""
    await cluster.join(1)
    async with cluster.client() as kv:
        data = await fill(kv)
        await cluster.join(2)
        source = await cluster.group_status(1)
        if source is not None:
            await cluster.crash(source.node_id)
        target = await cluster.group_status(2)
        if target is not None:
            await cluster.crash(target.node_id)
        await check(kv, data)
        for gid in (1, 2):
            await cluster.start_group(gid)
        await cluster.settled()
        await check(kv, data)


async def group_restarted_mid_migration(cluster: Cluster) -> None:
    await cluster.join(1)
    async with cluster.client() as kv:
        data = await fill(kv)
        await cluster.join(2)
        await cluster.shutdown_group(2)
        await cluster.start_group(2)
        await cluster.settled()
        await check(kv, data)


async def clients_cannot_pull_or_drop_shards(cluster: Cluster) -> None:
    """Shard images and hand-offs are for other groups: a client (even one with the
    secret) is refused both."""
    await cluster.join(1)
    await cluster.settled()
    shard = ShardId("default", 0)
    for server in cluster.servers[1]:
        pulled = await cluster.call(server, PULL, PullRequest(shard, 1))
        assert pulled.status == "forbidden" and not pulled.data
        dropped = await cluster.call(server, HANDED_OFF, HandedOffRequest(shard, 1))
        assert dropped.status == "forbidden"
    async with cluster.client() as kv:
        await kv.put("still", "here")
        assert await kv.get("still") == "here"
