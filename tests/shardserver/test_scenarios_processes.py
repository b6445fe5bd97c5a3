"""A representative subset of the sharded-KV scenarios against real processes: a
controller of 3 and groups of 3 servers, each its own process on loopback."""

from __future__ import annotations

from pathlib import Path

import pytest

from shardwise.testing import scenarios
from shardwise.testing.cluster import ProcessCluster

pytestmark = pytest.mark.timeout(300)


@pytest.mark.parametrize(
    "scenario",
    [
        scenarios.join_then_leave,
        scenarios.full_restart,
        scenarios.retry_across_a_migration_applies_once,
        scenarios.leaders_killed_mid_migration,
    ],
    ids=lambda s: s.__name__,
)
async def test_scenario_on_processes(scenario: scenarios.Scenario, tmp_path: Path) -> None:
    async with ProcessCluster(tmp_path, groups=3, snapshot_every=50) as cluster:
        await scenario(cluster)
