"""Three real controller processes: changes, watches, typed errors, a killed leader."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from shardwise.controller.client import ControllerClient
from shardwise.errors import GroupExistsError, UnknownGroupError, UnknownShardError
from shardwise.model.config import ShardId
from shardwise.testing.procs import ProcessGroup


@pytest.mark.slow
def test_controller_processes(tmp_path: Path) -> None:
    asyncio.run(scenario(tmp_path))


async def scenario(tmp_path: Path) -> None:
    with ProcessGroup(tmp_path, module="shardwise.controller", prefix="c") as group:
        group.start_all()
        async with ControllerClient(group.addresses, group.secret) as client:
            first = await client.join({1: ["a1", "a2", "a3"], 2: ["b1", "b2", "b3"]})
            assert first.num == 1 and len(first.moves) == 64
            watch = asyncio.create_task(client.watch(newer_than=1, wait_s=20))
            joined = await client.join({3: ["c1"]})
            seen = await watch  # the watch wakes on the change, not after its wait
            assert seen.num >= joined.num == 2
            assert len(joined.moves) == 21  # 64 shards: 22/21/21, the minimum moves
            with pytest.raises(GroupExistsError):
                await client.join({3: ["again"]})
            with pytest.raises(UnknownGroupError):
                await client.leave([9])
            with pytest.raises(UnknownShardError):
                await client.move(ShardId("default", 99), 1)
            moved = await client.move(ShardId("default", 0), 3)
            history = [await client.query(n) for n in range(moved.num + 1)]

            leader = client._router.leader
            assert leader is not None
            group.kill(leader)
            assert [await client.query(n, deadline_s=30) for n in range(moved.num + 1)] == history
            after = await client.leave(
                [1],
            )
            assert all(m.source == 1 for m in after.moves)
            group.start(leader)
            latest = await client.query()
            assert latest.num == after.num and set(latest.groups) == {2, 3}
    assert all(code == 0 for code in group.close().values())


@pytest.mark.slow
def test_a_single_replica_controller_keeps_its_configurations(tmp_path: Path) -> None:
    """The embedded single-machine default: one replica, durable across a restart."""

    async def session(group: ProcessGroup, join: bool) -> int:
        async with ControllerClient(group.addresses, group.secret) as client:
            if join:
                await client.join({1: ["a"], 2: ["b"]})
            return (await client.query()).num

    with ProcessGroup(tmp_path, size=1, module="shardwise.controller", prefix="c") as group:
        group.start_all()
        assert asyncio.run(session(group, join=True)) == 1
        group.kill("c1")
        group.start("c1")
        assert asyncio.run(session(group, join=False)) == 1
