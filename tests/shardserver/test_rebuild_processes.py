"""A shard server that lost its whole data directory, rebuilt from its peers as
docs/operations.md says ("A replica that lost data"): stopped, its data directory
deleted, started again empty. It must catch up (by snapshot: the group compacts often
here) and then hold the group's data: with another replica down, the group still
serves every key, which needs the rebuilt one in the majority.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Final

import pytest

from shardwise.testing.cluster import ProcessCluster, wait_until

pytestmark = [pytest.mark.timeout(240), pytest.mark.slow]

KEYS: Final = 300
CATCH_UP_S: Final = 60.0


async def test_a_shard_server_rebuilt_from_empty_catches_up_and_holds_the_data(
    tmp_path: Path,
) -> None:
    async with ProcessCluster(tmp_path, groups=1, snapshot_every=50) as cluster:
        await cluster.join(1)
        await cluster.settled()
        async with cluster.client() as kv:
            for i in range(KEYS):
                await kv.put(f"key-{i}", f"value-{i}")
            leader = await cluster.group_status(1)
            assert leader is not None
            lost, other = [s for s in cluster.servers[1] if s != leader.node_id]
            await cluster.crash(lost)
            shutil.rmtree(cluster.data_dir(lost))
            await kv.put("while-it-was-gone", "yes")
            await cluster.restart(lost)

            async def caught_up() -> bool:
                mine, theirs = await cluster.status(lost), await cluster.group_status(1)
                return (
                    mine is not None
                    and theirs is not None
                    and not mine.halted
                    and mine.applied >= theirs.commit
                )

            await wait_until(caught_up, CATCH_UP_S, f"{lost} to catch up")
            await cluster.crash(other)  # the majority is now the leader and the rebuilt one
            assert await kv.get("while-it-was-gone") == "yes"
            for i in range(0, KEYS, 7):
                assert await kv.get(f"key-{i}") == f"value-{i}"
            await kv.put("after", "ok")
            assert await kv.get("after") == "ok"
