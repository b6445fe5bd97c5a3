"""Drivers for simulated clusters: a recording state machine, proposing with retries, and
agreement checks. Used by shardwise's own tests; handy for anyone testing against the core."""

from __future__ import annotations

import msgspec

from shardwise.errors import NotLeaderError, ProposalDroppedError
from shardwise.raft.ready import RaftConfig
from shardwise.testing.network import Faults
from shardwise.testing.sim import SimRaftGroup


class RecordingMachine:
    """A state machine that remembers every command in order: agreement is list equality."""

    def __init__(self) -> None:
        self.commands: list[bytes] = []
        self.index = 0

    def applied_index(self) -> int:
        return self.index

    def apply(self, index: int, command: bytes) -> bytes:
        self.commands.append(command)
        self.index = index
        return command

    def snapshot(self) -> bytes:
        return msgspec.msgpack.encode([self.index, self.commands])

    def restore(self, data: bytes, index: int) -> None:
        stored_index, commands = msgspec.msgpack.decode(data, type=tuple[int, list[bytes]])
        assert stored_index == index
        self.index, self.commands = stored_index, commands


def make_cluster(
    n: int,
    seed: int,
    *,
    faults: Faults | None = None,
    config: RaftConfig | None = None,
    snapshot_every: int = 0,
) -> SimRaftGroup:
    """``n`` servers named ``n1``..``nN`` running :class:`RecordingMachine`."""
    return SimRaftGroup(
        [f"n{i}" for i in range(1, n + 1)],
        seed,
        make_state_machine=RecordingMachine,
        faults=faults,
        config=config,
        snapshot_every=snapshot_every,
    )


def machine(cluster: SimRaftGroup, node: str) -> RecordingMachine:
    sm = cluster.servers[node].sm
    assert isinstance(sm, RecordingMachine)
    return sm


def try_propose(cluster: SimRaftGroup, data: bytes) -> tuple[str, int] | None:
    leader = cluster.leader()
    if leader is None:
        return None
    try:
        return leader, cluster.node(leader).propose(data)
    except (NotLeaderError, ProposalDroppedError):
        return None


def commit_one(
    cluster: SimRaftGroup, data: bytes, expected: int | None = None, max_ticks: int = 300
) -> int:
    """Propose ``data`` (retrying through leader changes) until ``expected`` (default:
    every live) servers applied it; returns the index it landed at."""
    deadline = cluster.now + cluster.ticks(max_ticks)
    want = expected if expected is not None else sum(s.alive for s in cluster.servers.values())
    while cluster.now < deadline:
        placed = try_propose(cluster, data)
        if placed is None:
            cluster.run(cluster.ticks(1))
            continue
        _, index = placed
        round_end = min(deadline, cluster.now + cluster.ticks(20))
        while cluster.now < round_end:
            holders = [
                s.id
                for s in cluster.servers.values()
                if s.alive and index in s.results and s.results[index][0] == data
            ]
            if len(holders) >= want:
                return index
            cluster.run(1)
    raise AssertionError(
        f"seed={cluster.seed}: {data!r} not committed on {want} servers in {max_ticks} ticks"
    )


def applied_agree(cluster: SimRaftGroup) -> list[bytes]:
    """Every live server's applied commands are prefixes of the longest; return it."""
    logs = [machine(cluster, s.id).commands for s in cluster.servers.values() if s.alive]
    longest = max(logs, key=len)
    for log in logs:
        assert log == longest[: len(log)], f"seed={cluster.seed}: divergent applied logs"
    return longest
