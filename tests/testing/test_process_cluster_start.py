"""A process cluster whose start fails half way stops what it had started."""

from __future__ import annotations

from pathlib import Path

import pytest

from shardwise.testing.cluster import ProcessCluster


async def test_a_cluster_whose_start_fails_stops_the_servers_it_started(tmp_path: Path) -> None:
    # The controllers start; the group's first server refuses its flags and exits.
    cluster = ProcessCluster(tmp_path, groups=1, server_args=("--no-such-flag",))
    with pytest.raises(RuntimeError, match="closed its output"):
        async with cluster:
            pass
    controllers = list(cluster.controllers)
    assert controllers
    assert not [name for name in controllers if cluster.running(name)]
