"""The sharded store's fault sweep: random joins, leaves, moves, crashes, isolation and
an unreliable network in the simulator, every client history checked for linearizability
and every acknowledged append applied at most once. A failure names its seed;
``run_shard_sweep(seed, dir)`` on a virtual-time loop replays it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Final

import pytest

from shardwise.model.config import ShardId
from shardwise.shardserver.lifecycle import ShardState
from shardwise.shardserver.statemachine import ShardGroupStateMachine
from shardwise.testing.linearizability import Verdict
from shardwise.testing.shardsweep import run_shard_sweep

CI_SEEDS: Final = 100
CONTROL_SEEDS: Final = 10
SOAK_SEEDS: Final = int(os.environ.get("SHARDWISE_SOAK_SEEDS", "1000"))
SOAK_RANGE: Final = (
    range(CI_SEEDS, CI_SEEDS + SOAK_SEEDS) if os.environ.get("SHARDWISE_SOAK") else range(1)
)
"""The soak's seeds; outside ``make soak`` one placeholder, skipped, not a thousand."""


@pytest.mark.virtual_time
@pytest.mark.parametrize("seed", range(CI_SEEDS))
async def test_shard_sweep(seed: int, tmp_path: Path) -> None:
    result = await run_shard_sweep(seed, tmp_path)
    assert result.ok, result.describe()
    assert result.operations > 50, result.describe()


@pytest.mark.soak
@pytest.mark.virtual_time
@pytest.mark.parametrize("seed", SOAK_RANGE)
async def test_shard_sweep_soak(seed: int, tmp_path: Path) -> None:
    """More seeds, each on a virtual clock of its own (one clock for all would run out)."""
    result = await run_shard_sweep(seed, tmp_path)
    assert result.ok, result.describe()


@pytest.mark.virtual_time
async def test_the_sweep_catches_a_group_that_keeps_serving_a_lost_shard(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The control: a group that still takes writes for a shard it has frozen (so they
    never reach the new owner) must fail some seed."""

    def serves_frozen_too(self: ShardGroupStateMachine, shard: ShardId) -> bool:
        record = self.shards.get(shard)
        return record is not None and record.state in (ShardState.SERVING, ShardState.FROZEN)

    monkeypatch.setattr(ShardGroupStateMachine, "serves", serves_frozen_too)
    for seed in range(CONTROL_SEEDS):
        result = await run_shard_sweep(seed, tmp_path / str(seed))
        if result.verdict is Verdict.NOT_LINEARIZABLE:
            return
    raise AssertionError(f"no seed in range({CONTROL_SEEDS}) caught the broken group")
