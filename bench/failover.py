"""The pause a client sees when a group's leader is killed (``kill -9``), on real processes.

    python bench/failover.py                 # 5 trials
    python bench/failover.py --trials 10 --writers 8

A controller of 3 and one replica group of 3 servers run as processes on loopback (the
default tick of 50 ms: an election timeout of 0.5 to 1.0 s). Writers (``--writers``, one
put in flight each, on one shared ``Client``) write without pause; once they run
steadily, the group's leader gets SIGKILL. Per trial the script reports the longest gap
between two successful operations (of any writer) from just before the kill until the
writers have run steadily again, how long the group took to have a new leader (as the
servers report it), and whether any operation failed. The killed server is restarted
and caught up before the next trial.

The gap is bounded below by the election (the survivors must notice the leader is gone:
at least the election timeout after its last heartbeat) and above, before the client
noticed dead connections at once, by the client's per-attempt timeout (2.0 s).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from shardwise.client import Client
from shardwise.errors import ShardwiseError
from shardwise.testing.cluster import Cluster, ProcessCluster

STEADY_S: Final = 1.0
"""How long the writers run before the kill, and after the first success after it."""

TRIAL_DEADLINE_S: Final = 30.0
"""A trial that has not recovered by then is reported as failed."""


@dataclass
class Trial:
    gap_s: float
    election_s: float
    ops: int
    errors: int


async def _leader(cluster: Cluster, gid: int) -> str | None:
    status = await cluster.group_status(gid)
    return status.node_id if status is not None else None


async def _wait_for_leader(cluster: Cluster, gid: int, not_this: str | None) -> float:
    start = time.monotonic()
    while time.monotonic() - start < TRIAL_DEADLINE_S:
        leader = await _leader(cluster, gid)
        if leader is not None and leader != not_this:
            return time.monotonic() - start
        await asyncio.sleep(0.01)
    raise TimeoutError(f"group {gid} has no leader after {TRIAL_DEADLINE_S} s")


async def _caught_up(cluster: Cluster, gid: int) -> None:
    """Every server of the group answers and has applied what the leader committed."""
    start = time.monotonic()
    while time.monotonic() - start < TRIAL_DEADLINE_S:
        replies = await asyncio.gather(*(cluster.status(s) for s in cluster.servers[gid]))
        if all(r is not None for r in replies):
            commit = max(r.commit for r in replies if r is not None)
            if all(r is not None and r.applied >= commit - 1 for r in replies):
                return
        await asyncio.sleep(0.05)
    raise TimeoutError(f"group {gid} did not catch up in {TRIAL_DEADLINE_S} s")


async def one_trial(cluster: Cluster, client: Client, writers: int, trial: int) -> Trial:
    gid = 1
    successes: list[float] = []
    errors = 0
    stop = asyncio.Event()

    async def writer(n: int) -> None:
        nonlocal errors
        i = 0
        while not stop.is_set():
            i += 1
            try:
                await client.put(f"failover-{trial}-{n}-{i % 64}", f"v{i}")
            except ShardwiseError:
                errors += 1
                continue
            successes.append(time.monotonic())

    tasks = [asyncio.create_task(writer(n)) for n in range(writers)]
    try:
        await asyncio.sleep(STEADY_S)
        leader = await _leader(cluster, gid)
        if leader is None:
            raise RuntimeError("no leader to kill")
        killed_at = time.monotonic()
        await cluster.crash(leader)
        election_s = await _wait_for_leader(cluster, gid, leader)
        deadline = killed_at + TRIAL_DEADLINE_S
        while time.monotonic() < deadline and not (successes and successes[-1] > killed_at):
            await asyncio.sleep(0.01)
        await asyncio.sleep(STEADY_S)
    finally:
        stop.set()
        await asyncio.gather(*tasks)
    around = [t for t in successes if t >= killed_at - STEADY_S / 2]
    before = [t for t in successes if t < killed_at]
    points = ([before[-1]] if before else []) + [t for t in around if t >= killed_at]
    gap = max((b - a for a, b in itertools.pairwise(points)), default=float("inf"))
    await cluster.restart(leader)
    await _caught_up(cluster, gid)
    return Trial(gap, election_s, len(around), errors)


async def run(args: argparse.Namespace) -> list[Trial]:
    with tempfile.TemporaryDirectory(prefix="shardwise-failover-") as base:
        async with ProcessCluster(Path(base), groups=1, tick_ms=args.tick_ms) as cluster:
            await cluster.join(1)
            await cluster.settled()
            async with cluster.client() as client:
                await client.put("warm-up", "x")
                trials = []
                for trial in range(1, args.trials + 1):
                    result = await one_trial(cluster, client, args.writers, trial)
                    print(
                        f"trial {trial}: longest gap {result.gap_s * 1000:7.0f} ms, "
                        f"new leader after {result.election_s * 1000:5.0f} ms, "
                        f"{result.ops} ops, {result.errors} errors",
                        flush=True,
                    )
                    trials.append(result)
                return trials


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--writers", type=int, default=4, help="puts in flight at once")
    parser.add_argument("--tick-ms", type=int, default=50, help="the servers' Raft tick")
    args = parser.parse_args(argv)
    print(
        f"# {platform.node()}, {platform.processor() or platform.machine()}, "
        f"Python {sys.version.split()[0]}, {time.strftime('%Y-%m-%d')}; "
        f"{args.writers} writers, tick {args.tick_ms} ms (election timeout "
        f"{10 * args.tick_ms}-{20 * args.tick_ms} ms)"
    )
    trials = asyncio.run(run(args))
    gaps = [t.gap_s * 1000 for t in trials]
    print()
    print("| trial | longest gap (ms) | new leader after (ms) | ops | errors |")
    print("|---:|---:|---:|---:|---:|")
    for n, t in enumerate(trials, 1):
        print(f"| {n} | {t.gap_s * 1000:.0f} | {t.election_s * 1000:.0f} | {t.ops} | {t.errors} |")
    print(
        f"\nlongest gap: median {statistics.median(gaps):.0f} ms, max {max(gaps):.0f} ms "
        f"over {len(gaps)} trials"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
