"""A write numbered past 64 bits, sent to real servers over the real transport.

It used to pass every check, commit, and halt every replica of the group as it applied
(SQLite has no such INTEGER), again at every restart. Now no server decodes it: each
answers ``bad_request`` and the group goes on serving.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from shardwise.errors import RemoteCallError
from shardwise.model.config import ShardId
from shardwise.model.kv import Put
from shardwise.shardserver.protocol import BATCH, WRITE, BatchRequest, WriteRequest
from shardwise.testing.cluster import ProcessCluster

pytestmark = pytest.mark.timeout(240)


async def test_a_write_numbered_past_64_bits_is_refused_and_the_group_keeps_serving(
    tmp_path: Path,
) -> None:
    async with ProcessCluster(tmp_path, groups=1) as cluster:
        await cluster.join(1)
        await cluster.settled()
        servers = (await cluster.configuration()).groups[1]
        poison = WriteRequest(ShardId("default", 0), "poisoner", 2**63, Put("k", "poison"))
        for server in servers:
            with pytest.raises(RemoteCallError) as refused:
                await cluster.call(server, WRITE, poison)
            assert refused.value.code == "bad_request", refused.value
            with pytest.raises(RemoteCallError) as refused:
                await cluster.call(server, BATCH, BatchRequest(writes=(poison,)))
            assert refused.value.code == "bad_request", refused.value
        async with cluster.client() as client:
            for i in range(20):  # every shard's group still applies writes
                await client.put(f"k{i}", "fine")
            assert await client.mget([f"k{i}" for i in range(20)]) == {
                f"k{i}": "fine" for i in range(20)
            }
        await cluster.settled()
        for server in servers:
            status = await cluster.status(server)
            assert status is not None and not status.halted, status
