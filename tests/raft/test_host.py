"""RaftHost: three hosts over an in-process network, in virtual time.

Time moves only when a test advances the shared ManualClock, one tick at a time, and
between ticks the cluster is allowed to settle (every host idle), so these tests take no
real time waiting and every condition is waited for with a deadline counted in ticks.
Messages go through the wire encoding, so they are known to survive it.
"""

from __future__ import annotations

import asyncio
import functools
import threading
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import msgspec
import pytest

from shardwise.clock import ManualClock
from shardwise.errors import (
    NotLeaderError,
    ProposalDroppedError,
    RaftTimeoutError,
    ReplicaHaltedError,
    ReplicaStoppedError,
)
from shardwise.model.kv import Append, Get, Put
from shardwise.raft import ConfChange, ConfChangeKind, Membership, Message, Role
from shardwise.raft.host import DEFAULT_TICK_INTERVAL_S, HostOptions, RaftHost, run_inline
from shardwise.raft.hosting.snapshots import snapshot_interval
from shardwise.raft.kv import KVStateMachine, decode_result, encode_command
from shardwise.raft.messages import AppendEntries, Heartbeat
from shardwise.storage import MemoryStorage, RaftStorage
from shardwise.storage.file import FileStorage

T = TypeVar("T")

TICK_S = DEFAULT_TICK_INTERVAL_S
TIMEOUT_S = 30.0
"""Long enough never to fire in a test that expects success (300 virtual ticks)."""
MAX_TICKS = 400
"""Deadline, in ticks, for any condition a test waits for."""
MAX_SETTLE_ROUNDS = 10_000
GATE_TIMEOUT_S = 30.0
"""Real seconds a worker thread may wait on the test (only if the test is broken)."""
_wire_encode = msgspec.msgpack.Encoder().encode
_wire_decode = msgspec.msgpack.Decoder(Message).decode


def async_test(fn: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> None:
        asyncio.run(fn(*args, **kwargs))

    return run


class CountingKV(KVStateMachine):
    """Records every apply and restore, to prove nothing is applied twice."""

    def __init__(self) -> None:
        super().__init__()
        self.applied: list[int] = []
        self.restores: list[int] = []

    def apply(self, index: int, command: bytes) -> bytes:
        result = super().apply(index, command)
        self.applied.append(index)
        return result

    def restore(self, data: bytes, index: int) -> None:
        super().restore(data, index)
        self.restores.append(index)


class Network:
    """Delivers each message at once, through the wire codec; isolated nodes hear nothing."""

    def __init__(self) -> None:
        self.hosts: dict[str, RaftHost[CountingKV]] = {}
        self.isolated: set[str] = set()
        self.drop: Callable[[Message], bool] = lambda message: False
        self.delivered: Counter[str] = Counter()

    def send(self, message: Message) -> None:
        if message.sender in self.isolated or message.to in self.isolated:
            return
        if self.drop(message):
            return
        host = self.hosts.get(message.to)
        if host is not None:
            self.delivered[type(message).__name__] += 1
            host.deliver(_wire_decode(_wire_encode(message)))


class Cluster:
    def __init__(
        self,
        tmp_path: Path,
        names: Iterable[str] = ("a", "b", "c"),
        *,
        seed: int,
        file_storage: bool = False,
        options: HostOptions | None = None,
    ) -> None:
        self.tmp_path = tmp_path
        self.seed = seed
        self.names = list(names)
        self.membership = Membership(frozenset(self.names))
        self.file_storage = file_storage
        self.options = options or HostOptions()
        self.clock = ManualClock()
        self.net = Network()
        self.blocking_runs: Counter[str] = Counter()
        """Calls of each host's ``run_blocking`` (fsyncs off the loop, snapshot saves)."""

    async def __aenter__(self) -> Cluster:
        for name in self.names:
            await self.start(name)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for host in list(self.net.hosts.values()):
            await host.stop()

    def open_storage(self, name: str) -> RaftStorage:
        if self.file_storage:
            return FileStorage(self.tmp_path / name)
        return MemoryStorage()

    async def start(
        self,
        name: str,
        *,
        storage: RaftStorage | None = None,
        state_machine: CountingKV | None = None,
        membership: Membership | None = None,
        options: HostOptions | None = None,
    ) -> RaftHost[CountingKV]:
        host = RaftHost(
            name,
            membership or self.membership,
            storage or self.open_storage(name),
            state_machine or CountingKV(),
            self.net.send,
            clock=self.clock,
            options=options or self.options,
            seed=self.seed,
            run_blocking=self._counting_runner(name),
        )
        self.net.hosts[name] = host
        await host.start()
        return host

    def _counting_runner(self, name: str) -> Callable[[Callable[[], None]], Awaitable[None]]:
        runner = asyncio.to_thread if self.file_storage else run_inline

        def run(fn: Callable[[], None]) -> Awaitable[None]:
            self.blocking_runs[name] += 1
            return runner(fn)

        return run

    async def stop(self, name: str) -> RaftHost[CountingKV]:
        host = self.net.hosts.pop(name)
        await host.stop()
        return host

    def __getitem__(self, name: str) -> RaftHost[CountingKV]:
        return self.net.hosts[name]

    def hosts(self) -> list[RaftHost[CountingKV]]:
        return list(self.net.hosts.values())

    async def settle(self) -> None:
        for _ in range(MAX_SETTLE_ROUNDS):
            for _ in range(3):  # let woken tasks and the callbacks they schedule run
                await asyncio.sleep(0)
            busy = [host for host in self.hosts() if not host.is_idle()]
            if not busy:
                return
            for host in busy:
                await host.idle()
        raise AssertionError("the cluster never settled")

    async def run_until(self, condition: Callable[[], bool], what: str = "") -> None:
        for _ in range(MAX_TICKS):
            await self.settle()
            if condition():
                return
            self.clock.advance(TICK_S)
        raise AssertionError(f"not reached within {MAX_TICKS} ticks: {what or condition}")

    async def complete(self, operation: Awaitable[T]) -> T:
        """Run ``operation`` while time moves; its result, or its exception raised."""
        task = asyncio.ensure_future(operation)
        await self.run_until(task.done, "operation to finish")
        return task.result()

    def leader_or_none(self) -> RaftHost[CountingKV] | None:
        leaders = [h for h in self.hosts() if h.status().role is Role.LEADER]
        top = max((h.status().term for h in self.hosts()), default=0)
        current = [h for h in leaders if h.status().term == top]
        return current[0] if len(current) == 1 else None

    async def elect(self, among: Iterable[str] | None = None) -> RaftHost[CountingKV]:
        """Wait until one leader is known to every (chosen) running host."""
        names = set(among) if among is not None else set(self.net.hosts)

        def agreed() -> bool:
            leader = self.leader_or_none()
            return leader is not None and all(self[n].status().leader == leader.id for n in names)

        await self.run_until(agreed, "a leader all agree on")
        leader = self.leader_or_none()
        assert leader is not None
        return leader

    def followers(self) -> list[RaftHost[CountingKV]]:
        return [h for h in self.hosts() if h.status().role is not Role.LEADER]

    async def caught_up(self, leader: RaftHost[CountingKV]) -> None:
        await self.run_until(
            lambda: all(h.status().applied == leader.status().applied for h in self.hosts()),
            "every host to apply what the leader applied",
        )


def put(key: str, value: str, seq: int, client: str = "client") -> bytes:
    return encode_command(Put(key, value), client_id=client, seq=seq)


def append(key: str, value: str, seq: int, client: str = "client") -> bytes:
    return encode_command(Append(key, value), client_id=client, seq=seq)


# --- elections, replication, errors ----------------------------------------------------


@async_test
async def test_a_leader_is_elected_and_proposals_are_applied_everywhere(
    tmp_path: Path, seed: int
) -> None:
    async with Cluster(tmp_path, seed=seed) as cluster:
        leader = await cluster.elect()
        for seq in range(1, 6):
            result = await cluster.complete(leader.propose(put(f"k{seq}", str(seq), seq), 5.0))
            assert decode_result(result).ok
        got = await cluster.complete(
            leader.propose(encode_command(Get("k3"), client_id="client", seq=6), 5.0)
        )
        assert decode_result(got).value == "3"
        await cluster.caught_up(leader)
        expected = {f"k{i}": str(i) for i in range(1, 6)}
        for host in cluster.hosts():
            assert host.state_machine.items() == expected
            status = host.status()
            assert status.leader == leader.id
            assert status.commit == status.applied == leader.status().applied
        assert cluster.net.delivered["InstallSnapshot"] == 0


@async_test
@pytest.mark.parametrize("in_loop", [False, True], ids=["thread", "in-loop"])
async def test_followers_may_sync_in_the_loop_while_a_leader_syncs_off_it(
    tmp_path: Path, seed: int, in_loop: bool
) -> None:
    options = HostOptions(sync_in_loop_unless_leading=in_loop)
    async with Cluster(tmp_path, seed=seed, file_storage=True, options=options) as cluster:
        leader = await cluster.elect()
        cluster.blocking_runs.clear()
        for seq in range(1, 6):
            result = await cluster.complete(leader.propose(put(f"k{seq}", str(seq), seq), 5.0))
            assert decode_result(result).ok
        await cluster.caught_up(leader)
        followers = [h.id for h in cluster.followers()]
        assert cluster.blocking_runs[leader.id] >= 1  # its appends overlapped its fsyncs
        synced_off_loop = [cluster.blocking_runs[f] for f in followers]
        if in_loop:
            assert synced_off_loop == [0, 0]
        else:
            assert all(n > 0 for n in synced_off_loop)
        for follower in followers:  # durable all the same: the log reopens with every entry
            await cluster.stop(follower)
            restarted = await cluster.start(follower)
            await cluster.caught_up(leader)
            assert restarted.state_machine.get("k5") == "5"


@async_test
async def test_a_follower_refuses_work_naming_the_leader(tmp_path: Path, seed: int) -> None:
    async with Cluster(tmp_path, seed=seed) as cluster:
        leader = await cluster.elect()
        follower = cluster.followers()[0]
        with pytest.raises(NotLeaderError) as caught:
            await follower.propose(put("k", "v", 1), 5.0)
        assert caught.value.leader == leader.id
        with pytest.raises(NotLeaderError):
            await follower.change_membership(ConfChange(ConfChangeKind.REMOVE, "a"), 5.0)
        with pytest.raises(NotLeaderError):
            await follower.transfer_leadership(follower.id, 5.0)


@async_test
async def test_a_read_after_a_write_sees_it_on_leader_and_followers(
    tmp_path: Path, seed: int
) -> None:
    async with Cluster(tmp_path, seed=seed) as cluster:
        leader = await cluster.elect()
        expected = ""
        for seq, host in enumerate(cluster.hosts(), start=1):
            await cluster.complete(leader.propose(append("k", str(seq), seq), 5.0))
            expected += str(seq)
            assert await cluster.complete(host.read(lambda sm: sm.get("k"), 5.0)) == expected


@async_test
async def test_a_follower_read_waits_until_it_has_applied_the_read_index(
    tmp_path: Path, seed: int
) -> None:
    async with Cluster(tmp_path, seed=seed) as cluster:
        leader = await cluster.elect()
        follower = cluster.followers()[0]
        await cluster.complete(leader.propose(append("k", "x", 1), 5.0))
        await cluster.caught_up(leader)
        # The follower stops hearing about new entries, but its reads still get through.
        cluster.net.drop = lambda m: (
            m.to == follower.id and isinstance(m, AppendEntries | Heartbeat)
        )
        await cluster.complete(leader.propose(append("k", "y", 2), 5.0))
        assert follower.state_machine.get("k") == "x"
        read = asyncio.ensure_future(follower.read(lambda sm: sm.get("k"), TIMEOUT_S))
        for _ in range(3):
            await cluster.settle()
            cluster.clock.advance(TICK_S)
        assert not read.done(), "served a read before applying up to its read index"
        cluster.net.drop = lambda m: False
        assert await cluster.complete(read) == "xy"


@async_test
async def test_a_retried_command_is_applied_once_and_returns_the_first_result(
    tmp_path: Path, seed: int
) -> None:
    async with Cluster(tmp_path, seed=seed) as cluster:
        leader = await cluster.elect()
        first = await cluster.complete(leader.propose(append("k", "x", 1), 5.0))
        again = await cluster.complete(leader.propose(append("k", "x", 1), 5.0))
        assert first == again
        await cluster.complete(leader.propose(append("k", "x", 2), 5.0))
        stale = await cluster.complete(leader.propose(append("k", "z", 1), 5.0))
        assert decode_result(stale).stale
        await cluster.caught_up(leader)
        for host in cluster.hosts():
            assert host.state_machine.get("k") == "xx"
            assert host.state_machine.last_seq("client") == 2


# --- restart and snapshots -------------------------------------------------------------


@async_test
async def test_a_restarted_host_recovers_from_its_files_and_catches_up(
    tmp_path: Path, seed: int
) -> None:
    options = HostOptions(snapshot_every=5)
    async with Cluster(tmp_path, seed=seed, file_storage=True, options=options) as cluster:
        leader = await cluster.elect()
        for seq in range(1, 13):
            await cluster.complete(leader.propose(append("log", "x", seq), 5.0))
        await cluster.caught_up(leader)
        restarted, durable = (h.id for h in cluster.followers())

        # One follower loses its in-memory state machine: it must come back from its
        # snapshot plus the log after it. The other keeps its state machine, as a durable
        # one would: nothing at or below its applied index may be applied again.
        await cluster.stop(restarted)
        survivor = (await cluster.stop(durable)).state_machine
        applied_before = list(survivor.applied)
        leader_seq = 13
        # The leader alone has no quorum: start the durable one first, then write more.
        await cluster.start(durable, state_machine=survivor)
        for _ in range(6):
            await cluster.complete(leader.propose(append("log", "x", leader_seq), 5.0))
            leader_seq += 1
        fresh = CountingKV()
        host = await cluster.start(restarted, state_machine=fresh)
        assert fresh.restores, "the state machine was not restored from the snapshot"
        snapshot_index = fresh.restores[0]
        assert snapshot_index >= options.snapshot_every
        await cluster.caught_up(leader)

        for h in cluster.hosts():
            assert h.state_machine.get("log") == "x" * 18
            assert h.state_machine.last_seq("client") == 18
        assert all(index > snapshot_index for index in fresh.applied)
        assert len(survivor.applied) == len(set(survivor.applied))
        assert survivor.applied[: len(applied_before)] == applied_before
        assert not survivor.restores
        assert host.status().applied == leader.status().applied
        # The de-duplication table came back with the snapshot: a retry is not re-applied.
        await cluster.complete(leader.propose(append("log", "x", 18), 5.0))
        await cluster.caught_up(leader)
        assert host.state_machine.get("log") == "x" * 18


@async_test
async def test_a_lagging_follower_and_a_new_learner_get_the_snapshot(
    tmp_path: Path, seed: int
) -> None:
    options = HostOptions(snapshot_every=4, defer_leader_snapshots=False)
    async with Cluster(tmp_path, seed=seed, options=options) as cluster:
        leader = await cluster.elect()
        laggard = cluster.followers()[0]
        cluster.net.isolated.add(laggard.id)
        for seq in range(1, 11):
            await cluster.complete(leader.propose(put("k", str(seq), seq), 5.0))
        assert leader.node.log.first_index() > 2, "the leader never compacted its log"
        cluster.net.isolated.clear()
        await cluster.caught_up(leader)
        assert laggard.state_machine.restores
        assert laggard.state_machine.get("k") == "10"
        assert cluster.net.delivered["InstallSnapshot"] >= 1

        # A brand-new node joins as a learner (its bootstrap membership leaves it out, so
        # it never campaigns), receives the snapshot, and is promoted.
        newcomer = await cluster.start("d", membership=cluster.membership)
        await cluster.complete(
            leader.change_membership(ConfChange(ConfChangeKind.ADD_LEARNER, "d"), 5.0)
        )
        await cluster.caught_up(leader)
        await cluster.complete(
            leader.change_membership(ConfChange(ConfChangeKind.PROMOTE, "d"), 5.0)
        )
        await cluster.caught_up(leader)
        assert newcomer.state_machine.restores
        assert newcomer.state_machine.items() == {"k": "10"}
        assert "d" in newcomer.node.membership.voters
        assert "d" in leader.node.membership.voters


# --- halting on what cannot be applied ----------------------------------------------------


@pytest.mark.parametrize("payload", ["undecodable command", "unknown entry kind"])
@async_test
async def test_an_undecodable_committed_entry_halts_every_replica(
    tmp_path: Path, seed: int, payload: str
) -> None:
    async with Cluster(tmp_path, seed=seed) as cluster:
        leader = await cluster.elect()
        await cluster.complete(leader.propose(put("k", "v", 1), 5.0))
        waiting = []
        if payload == "undecodable command":
            waiting.append(asyncio.ensure_future(leader.propose(b"\xc1 junk", TIMEOUT_S)))
        else:
            leader.node._propose(b"\xff")  # no public way to write a bad kind, on purpose
        # Proposed after the bad entry: it must fail, never be applied past it.
        waiting.append(asyncio.ensure_future(leader.propose(put("k", "w", 3), TIMEOUT_S)))
        await cluster.run_until(
            lambda: all(h.status().halted for h in cluster.hosts()), "every replica halted"
        )
        for task in waiting:
            with pytest.raises(ReplicaHaltedError):
                await task
        for host in cluster.hosts():
            assert host.state_machine.get("k") == "v"
            with pytest.raises(ReplicaHaltedError):
                await host.propose(put("k", "x", 4), 5.0)
            with pytest.raises(ReplicaHaltedError):
                await host.read(lambda sm: sm.get("k"), 5.0)


# --- timeouts, overload and lost leadership ---------------------------------------------


@async_test
async def test_operations_time_out_without_a_quorum(tmp_path: Path, seed: int) -> None:
    async with Cluster(tmp_path, seed=seed) as cluster:
        leader = await cluster.elect()
        cluster.net.isolated.update(h.id for h in cluster.followers())
        started = cluster.clock.now()
        with pytest.raises(RaftTimeoutError):
            await cluster.complete(leader.propose(put("k", "v", 1), 0.5))
        waited = cluster.clock.now() - started
        assert 0.5 <= waited <= 0.5 + 2 * TICK_S
        with pytest.raises(RaftTimeoutError):
            await cluster.complete(leader.read(lambda sm: sm.get("k"), 0.3))


@async_test
async def test_proposals_and_reads_past_the_limits_are_refused(tmp_path: Path, seed: int) -> None:
    limits = HostOptions(max_pending_proposals=3, max_pending_reads=2)
    async with Cluster(tmp_path, seed=seed, options=limits) as cluster:
        leader = await cluster.elect()
        cluster.net.isolated.update(h.id for h in cluster.followers())
        waiting = [asyncio.ensure_future(leader.propose(put("k", "v", s), 0.5)) for s in (1, 2, 3)]
        reads = [asyncio.ensure_future(leader.read(lambda sm: sm.get("k"), 0.5)) for _ in "ab"]
        await cluster.settle()
        with pytest.raises(ProposalDroppedError, match="overloaded"):
            await leader.propose(put("k", "v", 4), 0.5)
        with pytest.raises(ProposalDroppedError, match="reads pending"):
            await leader.read(lambda sm: sm.get("k"), 0.5)
        for task in waiting + reads:
            with pytest.raises(RaftTimeoutError):
                await cluster.complete(task)
        assert leader.status().role is Role.LEADER
        # Timed-out operations no longer hold their slots.
        again = asyncio.ensure_future(leader.propose(put("k", "v", 5), TIMEOUT_S))
        cluster.net.isolated.clear()
        assert decode_result(await cluster.complete(again)).ok


@async_test
async def test_an_overwritten_proposal_fails_as_dropped(tmp_path: Path, seed: int) -> None:
    async with Cluster(tmp_path, seed=seed) as cluster:
        old = await cluster.elect()
        cluster.net.isolated.add(old.id)
        doomed = asyncio.ensure_future(old.propose(put("k", "old", 1), TIMEOUT_S))
        others = [h.id for h in cluster.hosts() if h is not old]
        await cluster.run_until(
            lambda: any(
                cluster[n].status().role is Role.LEADER
                and cluster[n].status().term > old.status().term
                for n in others
            ),
            "a new leader on the majority side",
        )
        new = next(cluster[n] for n in others if cluster[n].status().role is Role.LEADER)
        await cluster.complete(new.propose(put("k", "new", 2), 5.0))
        cluster.net.isolated.clear()
        with pytest.raises(ProposalDroppedError, match="overwritten"):
            await cluster.complete(doomed)
        await cluster.caught_up(new)
        assert old.state_machine.get("k") == "new"


@async_test
async def test_leadership_moves_to_the_chosen_follower(tmp_path: Path, seed: int) -> None:
    async with Cluster(tmp_path, seed=seed) as cluster:
        leader = await cluster.elect()
        target = cluster.followers()[0]
        await cluster.complete(leader.propose(put("k", "v", 1), 5.0))
        await cluster.complete(leader.transfer_leadership(target.id, 5.0))
        assert leader.status().leader == target.id
        await cluster.run_until(lambda: target.status().role is Role.LEADER)
        result = await cluster.complete(target.propose(put("k", "w", 2), 5.0))
        assert decode_result(result).ok


@async_test
async def test_stop_fails_waiting_operations_and_refuses_new_ones(
    tmp_path: Path, seed: int
) -> None:
    async with Cluster(tmp_path, seed=seed) as cluster:
        leader = await cluster.elect()
        cluster.net.isolated.update(h.id for h in cluster.followers())
        waiting = asyncio.ensure_future(leader.propose(put("k", "v", 1), TIMEOUT_S))
        await cluster.settle()
        await cluster.stop(leader.id)
        with pytest.raises(ReplicaStoppedError):
            await waiting
        with pytest.raises(ReplicaStoppedError):
            await leader.propose(put("k", "v", 2), 5.0)


# --- group commit -------------------------------------------------------------------------


class GatedStorage(MemoryStorage):
    """A sync that blocks (in its worker thread) until the test opens the gate."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.gate.set()
        self.syncing = threading.Event()

    def sync(self) -> None:
        self.syncing.set()
        assert self.gate.wait(GATE_TIMEOUT_S), "the test never opened the gate"
        super().sync()


@async_test
async def test_proposals_arriving_during_an_fsync_share_the_next_one(
    tmp_path: Path, seed: int
) -> None:
    cluster = Cluster(tmp_path, names=["solo"], seed=seed)
    storage = GatedStorage()
    host = RaftHost(
        "solo",
        cluster.membership,
        storage,
        CountingKV(),
        cluster.net.send,
        clock=cluster.clock,
        seed=seed,
    )
    cluster.net.hosts["solo"] = host
    await host.start()
    try:
        await cluster.elect()
        storage.gate.clear()
        storage.syncing.clear()
        first = asyncio.ensure_future(host.propose(put("k0", "v", 1), TIMEOUT_S))
        assert await asyncio.to_thread(storage.syncing.wait, GATE_TIMEOUT_S)  # fsync blocked
        syncs_before = storage.syncs
        rest = [
            asyncio.ensure_future(host.propose(put(f"k{s}", "v", s), TIMEOUT_S))
            for s in range(2, 22)
        ]
        for _ in range(5):
            await asyncio.sleep(0)
        # The loop kept running: every proposal reached the core during the fsync.
        assert host.node.log.last_index() >= 21
        assert not first.done()
        storage.gate.set()
        await cluster.complete(asyncio.gather(first, *rest))
        assert storage.syncs - syncs_before == 2  # the blocked one, then one for all 20
        assert len(host.state_machine.items()) == 21
    finally:
        storage.gate.set()
        await host.stop()


def test_a_groups_replicas_snapshot_at_different_indexes() -> None:
    every = 10_000
    intervals = {snapshot_interval(f"127.0.0.1:{7200 + i}", every) for i in range(1, 4)}
    assert len(intervals) == 3
    assert all(every <= n <= every + every // 5 for n in intervals)
    assert snapshot_interval("a", 1) in (1, 2)


@async_test
async def test_a_large_state_is_snapshotted_again_only_once_the_log_is_as_large(
    tmp_path: Path, seed: int
) -> None:
    options = HostOptions(snapshot_every=4, defer_leader_snapshots=False)
    async with Cluster(tmp_path, seed=seed, options=options) as cluster:
        leader = await cluster.elect()
        await cluster.complete(leader.propose(put("big", "x" * 50_000, 1), 5.0))
        for seq in range(2, 8):
            await cluster.complete(leader.propose(put("k", str(seq), seq), 5.0))
        first = leader.node.log.first_index()
        assert first > 2, "the first snapshot (of a 50 KB state) was not taken"
        # Twenty small writes: more than snapshot_every entries, but a few hundred bytes
        # of log against a 50 KB state: copying it all again would not pay.
        for seq in range(8, 28):
            await cluster.complete(leader.propose(put("k", str(seq), seq), 5.0))
        assert leader.node.log.first_index() == first
        # A log as large as the state: now it snapshots.
        await cluster.complete(leader.propose(put("big", "y" * 60_000, 28), 5.0))
        for seq in range(29, 34):
            await cluster.complete(leader.propose(put("k", str(seq), seq), 5.0))
        assert leader.node.log.first_index() > first


@async_test
async def test_a_leader_leaves_regular_snapshots_to_its_followers(
    tmp_path: Path, seed: int
) -> None:
    options = HostOptions(snapshot_every=4)
    async with Cluster(tmp_path, seed=seed, options=options) as cluster:
        leader = await cluster.elect()
        for seq in range(1, 13):
            await cluster.complete(leader.propose(put("k", str(seq), seq), 5.0))
        await cluster.caught_up(leader)
        assert leader.node.log.first_index() <= 2, "the leader paused its group to snapshot"
        assert all(f.node.log.first_index() > 2 for f in cluster.followers())
        # At the hard limit (ten intervals of entries) the leader snapshots too.
        for seq in range(13, 13 + 10 * 4):
            await cluster.complete(leader.propose(put("k", str(seq), seq), 5.0))
        assert leader.node.log.first_index() > 2


# --- a follower's held-back applies ----------------------------------------------------


async def _commit_without_ticks(cluster: Cluster, leader: RaftHost[CountingKV], n: int) -> None:
    """Propose and commit ``n`` puts k1..kn while the clock stands still (no tick runs)."""
    for seq in range(1, n + 1):
        proposal = asyncio.ensure_future(leader.propose(put(f"k{seq}", str(seq), seq), 5.0))
        await cluster.settle()
        assert proposal.done()
        assert decode_result(proposal.result()).ok


@async_test
async def test_a_follower_holds_committed_entries_until_a_tick_or_a_read_needs_them(
    tmp_path: Path, seed: int
) -> None:
    options = HostOptions(follower_apply_batch=100)
    async with Cluster(tmp_path, seed=seed, options=options) as cluster:
        leader = await cluster.elect()
        await cluster.caught_up(leader)
        await _commit_without_ticks(cluster, leader, 5)
        reader, other = cluster.followers()
        for follower in (reader, other):
            # Each holds k5; it learns that k5 is committed with the next append or tick
            # (the append that brought k5 said k4 was).
            assert follower.status().commit == leader.status().applied - 1
            assert follower.status().applied < leader.status().applied  # held back
            assert follower.state_machine.get("k5") is None
        # A read on a follower applies what it holds at once, without waiting for a tick
        # (the leader sends it the commit index with the read's answer).
        read = asyncio.ensure_future(reader.read(lambda sm: sm.get("k5"), TIMEOUT_S))
        await cluster.settle()
        assert read.done() and read.result() == "5"
        assert reader.status().applied == leader.status().applied
        assert other.status().applied < leader.status().applied
        # The next ticks tell the other the commit index (a heartbeat) and apply the rest.
        for _ in range(2):
            cluster.clock.advance(TICK_S)
            await cluster.settle()
        assert other.status().applied == leader.status().applied
        assert other.state_machine.get("k5") == "5"


@async_test
async def test_a_follower_applies_what_it_holds_before_it_snapshots(
    tmp_path: Path, seed: int
) -> None:
    options = HostOptions(follower_apply_batch=1000, snapshot_every=5)
    async with Cluster(tmp_path, seed=seed, options=options) as cluster:
        leader = await cluster.elect()
        await cluster.caught_up(leader)
        await _commit_without_ticks(cluster, leader, 12)
        for follower in cluster.followers():  # no tick ran: only the snapshot applied these
            snapshot = follower.node.log.snapshot.index
            assert snapshot >= 5
            assert follower.status().applied >= snapshot
            assert follower.state_machine.get("k4") == "4"


@async_test
async def test_a_leader_never_holds_entries_back(tmp_path: Path, seed: int) -> None:
    options = HostOptions(follower_apply_batch=100)
    async with Cluster(tmp_path, seed=seed, options=options) as cluster:
        leader = await cluster.elect()
        await _commit_without_ticks(cluster, leader, 3)
        assert leader.state_machine.get("k3") == "3"
        assert leader.status().applied == leader.status().commit
