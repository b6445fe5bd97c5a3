"""The Raft core's CPU cost: proposals committed per CPU second, 3 nodes in memory.

    python bench/raft_core.py            # the run recorded in docs/benchmarks.md
    python bench/raft_core.py --quick    # a smoke run

No disks and no sockets: three RaftNode cores hand each other messages directly and a
host loop persists nothing, so the figure is the cost of the protocol itself (encoding
is not included either: messages are passed as objects). Proposals are made in batches
of B between two Ready rounds, which is how the host batches under load; the table shows
how batching amortizes the per-round cost. CPU time is process time, not wall time, so
a noisy machine disturbs it less.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time

from shardwise.raft import Membership, RaftNode

PAYLOAD = b"x" * 100


def make_group() -> dict[str, RaftNode]:
    ids = ["a", "b", "c"]
    membership = Membership(frozenset(ids))
    nodes = {i: RaftNode(i, membership, seed=1) for i in ids}
    for _ in range(100):
        for node in nodes.values():
            node.tick()
        pump(nodes)
        if any(n.is_leader() for n in nodes.values()):
            break
    return nodes


MAX_SETTLE_TICKS = 100
"""Ticks the leader may take to tell the followers the last commit index."""


def pump(nodes: dict[str, RaftNode]) -> int:
    """Run Ready rounds until the group is quiet; returns the entries applied."""
    applied = 0
    busy = True
    while busy:
        busy = False
        for node in nodes.values():
            if not node.has_ready():
                continue
            busy = True
            ready = node.ready()
            node.advance(ready)
            applied += len(ready.committed)
            for message in [*ready.early_messages, *ready.messages]:
                nodes[message.to].step(message)
    return applied


def run(batch: int, proposals: int) -> tuple[float, float]:
    nodes = make_group()
    leader = next(n for n in nodes.values() if n.is_leader())
    start_cpu, start_wall = time.process_time(), time.perf_counter()
    done = 0
    while done < proposals:
        for _ in range(batch):
            leader.propose(PAYLOAD)
        pump(nodes)
        done += batch
    cpu = time.process_time() - start_cpu
    wall = time.perf_counter() - start_wall
    # Followers learn the last commit index with the next heartbeat (none of its own).
    for _ in range(MAX_SETTLE_TICKS):
        if all(n.log.committed == leader.log.committed for n in nodes.values()):
            break
        leader.tick()
        pump(nodes)
    assert all(n.log.committed == leader.log.committed for n in nodes.values())
    return proposals / cpu, proposals / wall


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    proposals = 2_000 if args.quick else 100_000
    print(
        f"# raft core benchmark ({time.strftime('%Y-%m-%d')}, {platform.machine()}, "
        f"Python {platform.python_version()})\n"
    )
    print(f"3-node group in memory, {proposals:,} proposals of {len(PAYLOAD)} bytes\n")
    print("| proposals per round | committed / CPU second | committed / wall second |")
    print("|---:|---:|---:|")
    for batch in (1, 16, 256):
        per_cpu, per_wall = run(batch, proposals)
        print(f"| {batch} | {per_cpu:,.0f} | {per_wall:,.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
