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
CONTROL_SEEDS: Final = (3, 4, 5)
"""A crash catches the planted bug only if it cuts acknowledged writes that only the
leader had synced: on real processes that is a matter of timing, and one 30 s run missed
it about one time in six (measured 2026-12-07, before and after that day's changes
alike). The control passes once a run catches it; all three missing is a failure."""


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
    missed = []
    for seed in CONTROL_SEEDS:
        options = RunOptions(
            seed=seed,
            duration_s=30.0,
            groups=1,
            kinds=["crash-group"],
            plant_follower_skips_fsync=True,
            # Short faults and busy clients: more crashes, each with more acknowledged
            # but unsynced writes to lose.
            fault_s=(1.0, 2.0),
            recover_s=1.5,
            think_s=0.01,
        )
        result = await run_faults(tmp_path / f"seed{seed}", options)
        print(result.log())
        print(result.table())
        if result.lost or result.anomalies or result.problems:
            return
        missed.append(f"seed {seed}:\n{result.table()}")
    raise AssertionError("the planted bug went unnoticed in every run:\n" + "\n".join(missed))
