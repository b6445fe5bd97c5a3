"""A client's pause when a group's leader is killed with SIGKILL, on real processes.

The pause must be about the election (an election timeout of 0.5 to 1.0 s at the 50 ms
tick, plus a round trip), not the client's per-attempt timeout (2.0 s): a call to the
dead leader fails as soon as the connection breaks or the dial is refused, and the
client moves on to the other servers at once. ``bench/failover.py`` measures the same
over more trials.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from pathlib import Path
from typing import Final

import pytest

from shardwise.client import Client
from shardwise.net.leader import ATTEMPT_TIMEOUT_S
from shardwise.testing.cluster import Cluster, ProcessCluster, wait_until

pytestmark = pytest.mark.timeout(240)

MAX_PAUSE_S: Final = 1.6
"""The longest gap allowed between two successful writes around the kill: the election
timeout's upper end (1.0 s) plus room for a loaded machine, and well under the 2.0 s
attempt timeout a client used to wait out."""

TRIALS: Final = 2
STEADY_S: Final = 0.5
RECOVERY_S: Final = 20.0


async def _longest_gap_around_a_kill(cluster: Cluster, client: Client, trial: int) -> float:
    successes: list[float] = []
    stop = asyncio.Event()

    async def writer(n: int) -> None:
        i = 0
        while not stop.is_set():
            i += 1
            # A failure would raise and fail the test: no write may fail through a kill.
            await client.put(f"t{trial}-w{n}-{i % 16}", str(i))
            successes.append(time.monotonic())

    tasks = [asyncio.create_task(writer(n)) for n in range(3)]
    try:
        await wait_until(lambda: _true(len(successes) >= 20), RECOVERY_S, "steady writes")
        status = await cluster.group_status(1)
        assert status is not None, "group 1 has no leader"
        leader = status.node_id
        killed_at = time.monotonic()
        await cluster.crash(leader)
        await wait_until(
            lambda: _true(bool(successes) and successes[-1] > killed_at + STEADY_S),
            RECOVERY_S,
            "writes to resume after the kill",
        )
    finally:
        stop.set()
        await asyncio.gather(*tasks)
    before = [t for t in successes if t < killed_at]
    points = before[-1:] + [t for t in successes if t >= killed_at]
    await cluster.restart(leader)
    return max(b - a for a, b in itertools.pairwise(points))


async def _true(value: bool) -> bool:
    return value


async def test_a_killed_leader_pauses_writes_for_about_an_election(tmp_path: Path) -> None:
    assert ATTEMPT_TIMEOUT_S > MAX_PAUSE_S  # else this test could not tell the two apart
    async with ProcessCluster(tmp_path, groups=1) as cluster:
        await cluster.join(1)
        await cluster.settled()
        async with cluster.client() as client:
            gaps = []
            for trial in range(TRIALS):
                gaps.append(await _longest_gap_around_a_kill(cluster, client, trial))
                await cluster.settled()
    # The shortest of the trials: one slow election on a loaded machine does not fail
    # the test, while a client that waits out its attempt timeout fails every trial.
    assert min(gaps) < MAX_PAUSE_S, f"pauses of {[round(g, 3) for g in gaps]} s"
