"""A full disk on simulated hosts: writes are refused with ``DiskFullError`` (not a
timeout, not a halt), nothing acknowledged is lost, and the replicas resume by themselves
once there is room again, with no restart.

Runs on :class:`~shardwise.testing.hostsim.HostCluster` (virtual time, one seed), whose
:class:`~shardwise.storage.memory.SimulatedSpace` per server fills on demand.
"""

from __future__ import annotations

import asyncio
import random
from typing import Final

import pytest

from shardwise.errors import RaftError
from shardwise.model.kv import Put
from shardwise.raft.hosting.diskfull import DISK_FULL_RETRY_S
from shardwise.raft.kv import KVStateMachine, encode_command
from shardwise.raft.ready import Role
from shardwise.storage.space import DiskFullError
from shardwise.testing.hostsim import TICK_S, HostCluster

SEED: Final = 21_3
NAMES: Final = ("a", "b", "c")
TIMEOUT_S: Final = 2.0
MAX_TICKS: Final = 400


async def _cluster() -> HostCluster[KVStateMachine]:
    cluster = HostCluster(NAMES, random.Random(SEED), KVStateMachine)
    await cluster.start()
    assert await cluster.run_until(lambda: cluster.leader() is not None, MAX_TICKS)
    return cluster


async def _put(cluster: HostCluster[KVStateMachine], key: str, value: str) -> None:
    """Propose at the leader and drive time until it answers (raises what it raises)."""
    leader = cluster.leader()
    assert leader is not None, f"seed {SEED}: no leader"
    task = asyncio.ensure_future(
        cluster.hosts[leader].propose(encode_command(Put(key, value)), TIMEOUT_S)
    )
    await cluster.run_until(task.done, MAX_TICKS)
    await task


def _values(cluster: HostCluster[KVStateMachine], name: str) -> dict[str, str]:
    return cluster.hosts[name].state_machine.items()


def test_a_full_disk_refuses_writes_and_resumes_without_a_restart() -> None:
    async def run() -> None:
        cluster = await _cluster()
        try:
            acknowledged = {f"k{i}": f"v{i}" for i in range(10)}
            for key, value in acknowledged.items():
                await _put(cluster, key, value)
            for space in cluster.spaces.values():
                space.full = True
            # The next write cannot be persisted: the leader stops, as a crash would.
            with pytest.raises(RaftError):
                await _put(cluster, "lost?", "x")
            await cluster.advance(10)
            statuses = {name: host.status() for name, host in cluster.hosts.items()}
            assert any(s.disk_full for s in statuses.values()), statuses
            assert not any(s.halted for s in statuses.values()), statuses
            # While full: a write is refused at once with the typed error, not a timeout.
            full = next(name for name, s in statuses.items() if s.disk_full)
            with pytest.raises(DiskFullError):
                await cluster.hosts[full].propose(encode_command(Put("k", "v")), TIMEOUT_S)
            assert cluster.restarts == 0
            for space in cluster.spaces.values():
                space.full = False
            resumed = await cluster.run_until(
                lambda: (
                    not any(h.status().disk_full for h in cluster.hosts.values())
                    and cluster.leader() is not None
                ),
                MAX_TICKS + round(DISK_FULL_RETRY_S / TICK_S),
            )
            assert resumed, f"seed {SEED}: replicas did not resume"
            await _put(cluster, "after", "room")
            assert await cluster.run_until(cluster.converged, MAX_TICKS)
            for name in NAMES:
                values = _values(cluster, name)
                for key, value in acknowledged.items():
                    assert values.get(key) == value, (SEED, name, key)
                assert values.get("after") == "room", (SEED, name)
            assert cluster.restarts == 0 and not cluster.halted
            assert all(h.disk_full.stops >= 0 for h in cluster.hosts.values())
        finally:
            await cluster.close()

    asyncio.run(run())


def test_low_space_everywhere_refuses_proposals_and_the_leader_keeps_leading() -> None:
    async def run() -> None:
        cluster = await _cluster()
        try:
            await _put(cluster, "k", "before")
            leader = cluster.leader()
            assert leader is not None
            term = cluster.hosts[leader].status().term
            for name in NAMES:  # no follower has room to take over
                cluster.spaces[name].low = True
            with pytest.raises(DiskFullError):
                await cluster.hosts[leader].propose(encode_command(Put("k", "x")), TIMEOUT_S)
            await cluster.advance(50)  # many election timeouts: heartbeats keep it leading
            status = cluster.hosts[leader].status()
            assert (status.role, status.term) == (Role.LEADER, term), (SEED, status)
            assert not status.disk_full and not status.halted
            # Reads still go through.
            read = asyncio.ensure_future(
                cluster.hosts[leader].read(lambda sm: sm.get("k"), TIMEOUT_S)
            )
            await cluster.run_until(read.done, MAX_TICKS)
            assert read.result() == "before"
            for name in NAMES:
                cluster.spaces[name].low = False
            await _put(cluster, "k", "after")
            assert await cluster.run_until(cluster.converged, MAX_TICKS)
            assert all(_values(cluster, n)["k"] == "after" for n in NAMES), SEED
        finally:
            await cluster.close()

    asyncio.run(run())


def test_a_leader_low_on_space_hands_leadership_to_a_follower_with_room() -> None:
    async def run() -> None:
        cluster = await _cluster()
        try:
            await _put(cluster, "k", "before")
            leader = cluster.leader()
            assert leader is not None
            cluster.spaces[leader].low = True
            assert await cluster.run_until(
                lambda: cluster.leader() not in (None, leader), MAX_TICKS
            ), SEED
            await _put(cluster, "k", "after")  # through the new leader
            assert await cluster.run_until(cluster.converged, MAX_TICKS)
            assert all(_values(cluster, n)["k"] == "after" for n in NAMES), SEED
        finally:
            await cluster.close()

    asyncio.run(run())


def test_one_full_follower_stops_and_catches_up() -> None:
    async def run() -> None:
        cluster = await _cluster()
        try:
            leader = cluster.leader()
            follower = next(n for n in NAMES if n != leader)
            cluster.spaces[follower].full = True
            for i in range(5):  # the other two still make a quorum
                await _put(cluster, f"k{i}", "v")
            assert cluster.hosts[follower].status().disk_full, SEED
            cluster.spaces[follower].full = False
            assert await cluster.run_until(cluster.converged, MAX_TICKS), SEED
            assert _values(cluster, follower) == _values(cluster, leader or "")
            assert not cluster.hosts[follower].status().disk_full
        finally:
            await cluster.close()

    asyncio.run(run())
