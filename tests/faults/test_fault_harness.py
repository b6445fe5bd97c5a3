"""The fault harness on real processes (``shardwise.testing.faults``), short runs for CI.

``test_every_nemesis_once``: every nemesis at least once (partitions only where nftables
runs: root and Debian's ``nftables``, which ``make test`` installs; full disks where a
tmpfs can be mounted: root), with shard moves,
joins and leaves meanwhile and the loss of unsynced writes on: zero anomalies, zero lost
writes. ``test_control_run_catches_a_follower_that_acknowledges_before_fsync``: the same
harness with a planted bug must fail. Long runs: ``make jepsen``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

import pytest

from shardwise.testing.faults.nemesis import DISK_FAULTS, KINDS, PARTITIONS
from shardwise.testing.faults.run import RunOptions, run_faults

pytestmark = [pytest.mark.timeout(400), pytest.mark.slow]

SEED: Final = 21
CONTROL_SEED: Final = 3


async def test_every_nemesis_once(tmp_path: Path) -> None:
    # Each fault is held about 1.5 s and followed by 1.5 s of recovery: ~3.5 s a fault.
    options = RunOptions(seed=SEED, duration_s=len(KINDS) * 3.5, fault_s=(1.0, 2.0), recover_s=1.5)
    result = await run_faults(tmp_path, options)
    print(result.log())
    print(result.table())
    injected = {f.kind for f in result.faults}
    expected = set(KINDS)
    for skipped, kinds in (("partitions", PARTITIONS), ("full disks", DISK_FAULTS)):
        if any(s.startswith(skipped) for s in result.skipped):
            expected -= set(kinds)
    assert expected <= injected, f"seed {SEED}: not injected: {expected - injected}"
    assert result.ok, f"seed {SEED}:\n{result.table()}"


async def test_control_run_catches_a_follower_that_acknowledges_before_fsync(
    tmp_path: Path,
) -> None:
    options = RunOptions(
        seed=CONTROL_SEED,
        duration_s=30.0,
        groups=1,
        kinds=["crash-group"],
        plant_follower_skips_fsync=True,
    )
    result = await run_faults(tmp_path, options)
    print(result.log())
    print(result.table())
    caught = result.lost or result.anomalies or result.problems
    assert caught, f"seed {CONTROL_SEED}: the planted bug went unnoticed:\n{result.table()}"
