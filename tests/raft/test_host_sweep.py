"""The fault sweep of the real server: RaftHost under a random nemesis, every client
history checked for linearizability.

Each run is decided by its seed alone (see :mod:`shardwise.testing.hostsim`): a few
concurrent clients send get / put / append / cas on a few keys to a group of hosts
running :class:`KVStateMachine`, through the host's own API (``propose``, and ``read`` for
half the gets), while a nemesis partitions the network (random halves, an isolated
leader, one-way cuts, a bridge), makes it lossy, slow or duplicating, slows the disks,
crashes servers (the leader too, and now and then all of them at once) and restarts
them, and moves leadership. Clients retry every failure with the same client id and
sequence number, as the host's errors prescribe, so a write takes effect exactly once
between its first call and the answer that ends it. Call and return times come from the
shared clock; operations that touch in time count as concurrent.

At the end the network heals, every server restarts, the clients finish, a final read
of every key joins the history, and the run must show: a linearizable history, all
replicas with the same map, no halted replica, and a cluster that answers again. The
control tests break one safety rule each and show that some seed then fails.

A failure names its seed; ``run_host_sweep(seed)`` replays it exactly.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import os
import random
from collections import Counter
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, Final

import pytest

from shardwise.errors import (
    CommandDecodeError,
    NotLeaderError,
    ProposalDroppedError,
    ProposalOutcomeUnknownError,
    RaftError,
    RaftTimeoutError,
    ReplicaHaltedError,
    ReplicaStoppedError,
)
from shardwise.model.kv import KVResult
from shardwise.raft import host as host_module
from shardwise.raft.client_sessions import SessionTable
from shardwise.raft.host import HostOptions, RaftHost
from shardwise.raft.hosting.reads import HostReads
from shardwise.raft.hosting.waiting import Proposals
from shardwise.raft.kv import KVStateMachine, decode_result, encode_command
from shardwise.raft.log import RaftLog
from shardwise.raft.messages import Heartbeat, Message, ReadIndexResponse
from shardwise.raft.node import RaftNode
from shardwise.raft.reads import ReadIndex
from shardwise.raft.ready import ReadState, Ready
from shardwise.raft.tracker import ProgressTracker
from shardwise.testing.history import UNKNOWN_OUTPUT, KvOp, Operation, kv_model
from shardwise.testing.hostsim import (
    HEALTHY_NETWORK,
    STEP_S,
    STEPS_PER_TICK,
    TICK_S,
    HostCluster,
    LivelockError,
)
from shardwise.testing.kvsweep import model_output, state_machine_op
from shardwise.testing.linearizability import CheckResult, Verdict, check
from shardwise.testing.network import Faults

CI_SEEDS: Final = 30
SOAK_SEEDS: Final = int(os.environ.get("SHARDWISE_SOAK_SEEDS", "2000"))
"""About ten minutes on one core (``make soak`` allows two hours)."""
KNOWN_BAD_SEEDS: Final[frozenset[int]] = frozenset()
"""Seeds that expose an open bug, kept out of the CI range until it is fixed."""

DURATION_TICKS: Final = 1000
"""Faulty part of a run (125 virtual seconds, about 60 nemesis actions and 500 operations):
a seed takes a quarter of a second, so 30 of them stay well under a minute even on two
slow cores."""
FIRST_FAULT_TICKS: Final = 20
"""Let the first leader be elected and some work be done before the nemesis starts."""
MIN_FAULT_GAP_TICKS: Final = 3
MAX_FAULT_GAP_TICKS: Final = 30
"""Ticks between two nemesis actions: from faster than an election to several."""
MIN_OP_TIMEOUT_TICKS: Final = 3
MAX_OP_TIMEOUT_TICKS: Final = 24
"""A client gives up on one attempt after a time drawn from this range, then retries:
from a few round trips (many timeouts, retries racing their own first attempt) to more
than two election timeouts (most attempts outlive a leader change)."""
MAX_THINK_STEPS: Final = 3 * STEPS_PER_TICK
"""Longest pause of a client between two operations, in clock steps."""
STEPS_WITHOUT_LEADER: Final = STEPS_PER_TICK
"""Backoff, in clock steps, when nobody knows a leader (an election is under way)."""
STEPS_AFTER_FAILURE: Final = 2 * STEPS_PER_TICK
"""Largest backoff, in clock steps, after a timeout, a drop or a stopped replica."""
FINISH_TICKS: Final = 300
"""After the heal, how long clients have to finish, and then each final read: a
healthy cluster needs a few election timeouts at most."""
CONVERGE_TICKS: Final = 100
"""After the final reads, how long the replicas have to apply the same entries."""
CHECK_MAX_STEPS: Final = 2_000_000
"""Search budget of the linearizability check; past it the verdict is unknown (a failure)."""
NETWORK_SHARE: Final = 0.52
"""Share of nemesis actions on the network; the rest crash, restart, move leadership or
slow the disks."""
DROP_CHOICES: Final = (0.0, 0.05, 0.2)
DUPLICATE_CHOICES: Final = (0.0, 0.05, 0.2)
MAX_DELAY_STEP_CHOICES: Final = (3, 8, 16)
"""Up to 16 steps (4 ticks): a round trip can take most of an election timeout."""
BULK_EXTRA_STEP_CHOICES: Final = (0, 8, 24)
"""Extra delay of appends and snapshot chunks: a follower then hears of a commit (and of
a read's confirmation) before it holds the entries, and must wait for them."""
FSYNC_STEP_CHOICES: Final = (0, 1, 4, 12)
"""Longest fsync, in clock steps, the nemesis may set: from none (the host persists without
yielding) to three ticks (the core takes in much while one Ready is being made durable)."""
MIN_COMPLETED_OPS: Final = 50
"""A run that completes fewer operations than this proves too little to count as a pass."""
CONTROL_SEEDS: Final = 40
"""Seeds a control may try before it must have caught the broken rule. The rarest
controls fail about one seed in eight, so 40 leave a wide margin; each stops at its
first failing seed."""

LEASE_TIMING_SEEDS: Final = 6
"""Seeds whose lease reads are each checked against the send times of their rounds."""
LEASE_ALONE_SEEDS: Final = CI_SEEDS
"""Seeds run with leaders that never step down (``test_a_lease_of_the_right_length...``):
the same seeds as the sweep itself."""

RETRIABLE: Final = (
    ProposalDroppedError,
    ProposalOutcomeUnknownError,
    RaftTimeoutError,
    ReplicaStoppedError,
    ReplicaHaltedError,
)
"""With NotLeaderError, every error a host operation can end with: the client tries
again (a halted replica is also reported as a problem of the run, see HostCluster.halted)."""


@dataclass(frozen=True)
class SweepConfig:
    servers: int = 5
    clients: int = 4
    keys: int = 3
    duration_ticks: int = DURATION_TICKS
    snapshot_every: int = HostOptions().snapshot_every
    nemesis: bool = True


SNAPSHOT_EVERY_CHOICES: Final = (HostOptions().snapshot_every, 20, 5)
"""Never (in a run this short), often, all the time: snapshots are then sent to lagging
and restarted followers under faults, and replace logs under pending proposals."""


def config_for(seed: int) -> SweepConfig:
    """A quarter of the runs with 3 servers, the rest with 5; snapshots as above."""
    return SweepConfig(
        servers=3 if seed % 4 == 0 else 5, snapshot_every=SNAPSHOT_EVERY_CHOICES[seed % 3]
    )


@dataclass
class _Pending:
    op: KvOp
    command: bytes | None
    """What to propose; None for a read served by ``RaftHost.read``."""
    call_time: float


@dataclass
class SweepResult:
    seed: int
    config: SweepConfig
    history: list[Operation]
    check: CheckResult
    problems: list[str]
    events: list[str]
    stats: Counter[str] = field(default_factory=Counter)

    @property
    def completed(self) -> int:
        return sum(op.completed for op in self.history)

    def describe(self) -> str:
        lines = [
            f"seed={self.seed} ({self.config}): {self.check.verdict.value}, "
            f"{self.completed}/{len(self.history)} operations completed",
            *self.problems,
            f"stats: {dict(sorted(self.stats.items()))}",
            "last nemesis events:",
            *self.events[-20:],
        ]
        if self.check.verdict is not Verdict.LINEARIZABLE:
            lines.append(self.check.explain())
        return "\n".join(lines)


class HostSweep:
    def __init__(self, seed: int, config: SweepConfig) -> None:
        self.seed = seed
        self.config = config
        self.rng = random.Random(f"host-sweep:{seed}")
        options = HostOptions(tick_interval_s=TICK_S, snapshot_every=config.snapshot_every)
        self.cluster = HostCluster(
            [f"s{i}" for i in range(1, config.servers + 1)],
            self.rng,
            KVStateMachine,
            options=options,
        )
        self.keys = [f"k{i}" for i in range(config.keys)]
        self.history: list[Operation] = []
        self.pending: dict[str, _Pending] = {}
        self.hints: dict[str, str | None] = {}
        self.events: list[str] = []
        self.problems: list[str] = []
        self.stats: Counter[str] = Counter()
        self.accepting = True
        self.clients: list[asyncio.Task[None]] = []
        self.background: list[asyncio.Task[None]] = []

    # --- clients -------------------------------------------------------------------------

    async def _client(self, name: str) -> None:
        seq = 0
        seen: dict[str, str | None] = {}  # last value read per key: cas compares with it
        while self.accepting:
            seq += 1
            pending = self._new_op(name, seq, seen)
            self.pending[name] = pending
            output = await self._perform(name, pending)
            del self.pending[name]
            self._record(name, pending, output)
            if pending.op.kind == "get":
                seen[str(pending.op.key)] = output
            await self.cluster.clock.sleep(STEP_S * self.rng.randint(1, MAX_THINK_STEPS))

    def _new_op(self, name: str, seq: int, seen: dict[str, str | None]) -> _Pending:
        key = self.rng.choice(self.keys)
        value = f"{name}.{seq};"  # unique, so the checker can tell every write apart
        roll = self.rng.random()
        if roll < 0.35:
            op = KvOp("get", key)
        elif roll < 0.6:
            op = KvOp("put", key, value)
        elif roll < 0.85:
            op = KvOp("append", key, value)
        else:
            op = KvOp("cas", key, seen.get(key), value)
        command: bytes | None = None
        if op.kind != "get" or self.rng.random() < 0.5:  # half the reads go through the log
            command = encode_command(state_machine_op(op), client_id=name, seq=seq)
        return _Pending(op, command, self.cluster.now())

    async def _perform(self, name: str, pending: _Pending) -> Any:
        """Try until answered; every attempt reuses the command, so its client id and
        sequence number: a write whose earlier attempt did commit is not applied again."""
        attempts = 0
        key = str(pending.op.key)
        while True:
            attempts += 1
            host = self._pick_host(name, attempts, pending.command is None)
            timeout = TICK_S * self.rng.randint(MIN_OP_TIMEOUT_TICKS, MAX_OP_TIMEOUT_TICKS)
            try:
                if pending.command is None:
                    output = await host.read(lambda sm: sm.get(key), timeout)
                else:
                    result = decode_result(await host.propose(pending.command, timeout))
                    output = self._output(name, pending, result)
            except CommandDecodeError as exc:  # the host answered with another's result
                self.problems.append(f"{name}: {pending.op} got an undecodable result: {exc}")
                backoff = STEPS_AFTER_FAILURE
            except NotLeaderError as exc:
                self.stats["not-leader"] += 1
                self.hints[name] = exc.leader
                backoff = 1 if exc.leader else STEPS_WITHOUT_LEADER
            except RETRIABLE as exc:
                self.stats[type(exc).__name__] += 1
                self.hints[name] = None
                backoff = self.rng.randint(1, STEPS_AFTER_FAILURE)
            else:
                self.hints[name] = host.id
                return output
            await self.cluster.clock.sleep(backoff * STEP_S)

    def _pick_host(self, name: str, attempts: int, read: bool) -> RaftHost[KVStateMachine]:
        running = self.cluster.running()
        hint = self.hints.get(name)
        # Follow the hint, but not blindly: a stale hint can point at a deposed leader.
        # Half the reads go to any replica: a follower must not answer from a stale state.
        if hint in running and attempts % 3 and not (read and self.rng.random() < 0.5):
            return self.cluster.hosts[hint]
        return self.cluster.hosts[self.rng.choice(running)]

    def _output(self, name: str, pending: _Pending, result: KVResult) -> Any:
        if result.stale:
            # A client waits for each command before the next: its latest is never stale.
            self.problems.append(f"{name}: {pending.op} answered as stale")
        return model_output(pending.op, result)

    def _record(self, name: str, pending: _Pending, output: Any) -> None:
        now = self.cluster.now()
        self.history.append(Operation(name, pending.op, output, pending.call_time, now))

    # --- the nemesis ---------------------------------------------------------------------

    async def _nemesis(self) -> None:
        """One random action; the shares are the widths of the ranges of ``roll``."""
        roll = self.rng.random()
        if roll < NETWORK_SHARE:
            self._network_fault(roll)
        else:
            await self._server_fault(roll)

    def _network_fault(self, roll: float) -> None:
        rng, net, names = self.rng, self.cluster.network, self.cluster.names
        leader = self.cluster.leader()
        if roll < 0.14:
            shuffled = rng.sample(names, len(names))
            cut = rng.randrange(1, len(names))
            net.partition(shuffled[:cut], shuffled[cut:])
            self._event(f"partition {sorted(shuffled[:cut])} | {sorted(shuffled[cut:])}")
        elif roll < 0.24 and leader is not None:
            net.isolate(leader, names)
            self._event(f"isolate leader {leader}")
        elif roll < 0.31:
            a, b = rng.sample(names, 2)
            net.cut_one_way(a, b)
            self._event(f"one-way cut {a} -> {b}")
        elif roll < 0.36:
            shuffled = rng.sample(names, len(names))
            bridge, half = shuffled[0], len(names) // 2
            left, right = shuffled[1 : half + 1], shuffled[half + 1 :]
            net.partition([bridge, *left], [bridge, *right])
            self._event(f"bridge {bridge} between {sorted(left)} and {sorted(right)}")
        elif roll < 0.46:
            net.heal()
            self._event("heal")
        else:
            net.faults = Faults(
                drop=rng.choice(DROP_CHOICES),
                duplicate=rng.choice(DUPLICATE_CHOICES),
                max_delay=rng.choice(MAX_DELAY_STEP_CHOICES),
                bulk_delay=rng.choice(BULK_EXTRA_STEP_CHOICES),
            )
            self._event(f"network {net.faults}")

    async def _server_fault(self, roll: float) -> None:
        cluster, rng = self.cluster, self.rng
        # Never more than a minority down: the majority must be able to make progress.
        may_crash = len(cluster.down()) < (len(cluster.names) - 1) // 2
        leader = cluster.leader()
        if roll < 0.70 and may_crash:
            victim = leader if roll >= 0.62 and leader is not None else None
            victim = victim or rng.choice(cluster.running())
            await cluster.crash(victim, lose_write=rng.random() < 0.5)
            self._event(f"crash {'leader ' if victim == leader else ''}{victim}")
        elif 0.70 <= roll < 0.72:
            # A power cut of the whole group: only synced writes survive anywhere, and
            # every acknowledged write must be among them.
            for victim in cluster.running():
                await cluster.crash(victim, lose_write=rng.random() < 0.5)
            for victim in cluster.names:
                await cluster.restart(victim)
            self._event("power cycle of every server")
        elif roll < 0.84 or (roll < 0.90 and leader is None):
            # Also what a crash turns into while a minority is down already.
            if cluster.down():
                revived = rng.choice(cluster.down())
                await cluster.restart(revived)
                self._event(f"restart {revived}")
        elif roll < 0.90 and leader is not None:
            target = rng.choice([n for n in cluster.running() if n != leader] or [leader])
            self._spawn(self._transfer(leader, target), f"transfer-{len(self.background)}")
            self._event(f"transfer leadership {leader} -> {target}")
        elif roll < 0.96:
            cluster.max_fsync_steps = rng.choice(FSYNC_STEP_CHOICES)
            self._event(f"fsyncs take up to {cluster.max_fsync_steps} steps")
        else:
            cluster.network.heal()
            self._event("heal")

    async def _transfer(self, leader: str, target: str) -> None:
        host = self.cluster.hosts.get(leader)
        if host is None:
            return
        try:
            await host.transfer_leadership(target, MAX_OP_TIMEOUT_TICKS * TICK_S)
        except RaftError as exc:  # refused, timed out, or the host went down: all fine
            self.stats[f"transfer {type(exc).__name__}"] += 1

    def _event(self, text: str) -> None:
        self.events.append(f"t={self.cluster.now():.3f}: {text}")
        self.stats["nemesis"] += 1

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        self.background.append(asyncio.create_task(coro, name=name))

    # --- the run -------------------------------------------------------------------------

    async def run(self) -> SweepResult:
        cluster = self.cluster
        cluster.max_fsync_steps = self.rng.choice(FSYNC_STEP_CHOICES)
        await cluster.start()
        try:
            for i in range(self.config.clients):
                name = f"c{i}"
                self.clients.append(asyncio.create_task(self._client(name), name=name))
            await self._faulty_phase()
            await self._finale()
        except LivelockError as exc:
            self.problems.append(f"livelock at t={cluster.now():.3f}: {exc}")
        finally:
            await _cancel(self.clients + self.background)
            await cluster.close()
        leftovers = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        assert not leftovers, f"seed={self.seed}: tasks left running: {leftovers}"
        return self._verdict()

    async def _faulty_phase(self) -> None:
        cluster = self.cluster
        await cluster.advance(FIRST_FAULT_TICKS)
        elapsed = FIRST_FAULT_TICKS
        while elapsed < self.config.duration_ticks:
            if self.config.nemesis:
                await self._nemesis()
            gap = self.rng.randint(MIN_FAULT_GAP_TICKS, MAX_FAULT_GAP_TICKS)
            await cluster.advance(gap)
            elapsed += gap

    async def _finale(self) -> None:
        cluster = self.cluster
        cluster.network.heal()
        cluster.network.faults = HEALTHY_NETWORK
        cluster.max_fsync_steps = 0
        for name in cluster.down():
            await cluster.restart(name)
        self._event("finale: healed, every server restarted")
        self.accepting = False
        if not await cluster.run_until(lambda: all(t.done() for t in self.clients), FINISH_TICKS):
            self.problems.append(f"clients still waiting {FINISH_TICKS} ticks after the heal")
            return
        for task in self.clients:
            task.result()  # a client that crashed is a bug of this test: raise it
        for key in self.keys:  # final reads: every acknowledged write must show in them
            pending = _Pending(KvOp("get", key), None, cluster.now())
            read = asyncio.create_task(self._perform("final", pending), name=f"final-{key}")
            self.background.append(read)
            if not await cluster.run_until(read.done, FINISH_TICKS):
                self.problems.append(f"final read of {key} unanswered after the heal")
                return
            self._record("final", pending, read.result())
        if not await cluster.run_until(cluster.converged, CONVERGE_TICKS):
            statuses = [str(host.status()) for host in cluster.hosts.values()]
            self.problems.append(f"replicas never applied the same entries: {statuses}")
        states = {name: host.state_machine.items() for name, host in cluster.hosts.items()}
        if len({tuple(sorted(s.items())) for s in states.values()}) != 1:
            self.problems.append(f"replicas diverged: {states}")

    def _verdict(self) -> SweepResult:
        history = list(self.history)
        for name, pending in sorted(self.pending.items()):
            if pending.op.kind != "get":  # an unanswered read changed nothing: left out
                op = Operation(name, pending.op, UNKNOWN_OUTPUT, pending.call_time, math.inf)
                history.append(op)
        if self.cluster.halted:
            self.problems.append(f"replicas halted: {self.cluster.halted}")
        result = check(kv_model, history, max_steps=CHECK_MAX_STEPS)
        if result.verdict is not Verdict.LINEARIZABLE:
            self.problems.append(f"history is {result.verdict.value}")
        cluster, net = self.cluster, self.cluster.network
        self.stats.update(crashes=cluster.crashes, sent=net.sent, dropped=net.dropped)
        self.stats.update(snapshots=cluster.delivered["InstallSnapshot"], steps=cluster.step)
        self.stats.update(lease_reads=cluster.lease_reads())
        return SweepResult(
            self.seed, self.config, history, result, self.problems, self.events, self.stats
        )


async def _cancel(tasks: list[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def run_host_sweep(seed: int, config: SweepConfig | None = None) -> SweepResult:
    """One seeded run, in a fresh event loop; see the module docstring."""
    return asyncio.run(HostSweep(seed, config or config_for(seed)).run())


def assert_clean(seed: int) -> SweepResult:
    result = run_host_sweep(seed)
    assert not result.problems, result.describe()
    assert result.completed >= MIN_COMPLETED_OPS, (
        f"seed={seed}: only {result.completed} operations completed\n{result.describe()}"
    )
    return result


# --- the tests ------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [s for s in range(CI_SEEDS) if s not in KNOWN_BAD_SEEDS])
def test_host_sweep(seed: int) -> None:
    assert_clean(seed)


@pytest.mark.soak
def test_host_soak_sweep() -> None:
    """Every seed past the CI range (``make soak``); lists each failing seed, not the first."""
    failures: list[str] = []
    for seed in range(CI_SEEDS, CI_SEEDS + SOAK_SEEDS):
        if seed in KNOWN_BAD_SEEDS:
            continue
        try:
            assert_clean(seed)
        except AssertionError as exc:
            failures.append(f"seed {seed}: {str(exc).splitlines()[0]}")
    assert not failures, "\n".join(failures)


def test_a_seed_replays_exactly() -> None:
    seed = 5
    first, second = run_host_sweep(seed), run_host_sweep(seed)
    assert first.events == second.events, f"seed={seed}: the nemesis did not replay"
    assert [str(op) for op in first.history] == [str(op) for op in second.history], (
        f"seed={seed}: the history did not replay"
    )
    assert first.stats == second.stats, f"seed={seed}: {first.stats} != {second.stats}"


def _first_failing_seed(seeds: range) -> SweepResult | None:
    for seed in seeds:
        result = run_host_sweep(seed)
        if result.problems:
            return result
    return None


def test_the_sweep_catches_votes_for_stale_logs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Control: with the vote's up-to-date check gone (Raft 5.4.1), some seed must fail."""
    monkeypatch.setattr(RaftLog, "is_up_to_date", lambda self, index, term: True)
    assert _first_failing_seed(range(CONTROL_SEEDS)) is not None, (
        f"no seed in range({CONTROL_SEEDS}) caught the broken vote rule"
    )


def test_the_sweep_catches_a_host_that_ignores_overwrites(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Control, in the host itself: a proposal whose entry another leader overwrote must
    fail, not be answered with the result of the entry that replaced it."""

    def settle_ignoring_term(self: Proposals, index: int, term: int, result: bytes) -> None:
        proposal = self._by_index.pop(index, None)
        if proposal is not None and not proposal.future.done():
            proposal.future.set_result(result)

    monkeypatch.setattr(Proposals, "settle", settle_ignoring_term)
    assert _first_failing_seed(range(CONTROL_SEEDS)) is not None, (
        f"no seed in range({CONTROL_SEEDS}) caught the host's missing term check"
    )


def test_the_sweep_catches_reads_served_before_applying(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Control, in the host itself: a replica must apply up to a read's index before it
    serves the read; one that answers at once returns stale values from a follower."""
    answer_reads = RaftHost._answer_reads

    def answer_at_once(self: RaftHost[Any], node: RaftNode, ready: Ready) -> None:
        at_once = [ReadState(0, state.context) for state in ready.read_states]
        answer_reads(self, node, dataclasses.replace(ready, read_states=at_once))

    def hand_over_at_once(self: ReadIndex, m: ReadIndexResponse) -> None:
        self.states.append(ReadState(m.index, m.context))

    monkeypatch.setattr(RaftHost, "_answer_reads", answer_at_once)
    # The core waits for its log to commit a follower's read index too (so that a
    # follower whose log is behind drops the read in time): that wait goes as well.
    monkeypatch.setattr(ReadIndex, "answered", hand_over_at_once)
    assert _first_failing_seed(range(CONTROL_SEEDS)) is not None, (
        f"no seed in range({CONTROL_SEEDS}) caught the stale follower reads"
    )


def test_the_sweep_catches_duplicate_applies(monkeypatch: pytest.MonkeyPatch) -> None:
    """Control: a state machine that forgets its clients applies retried writes twice."""
    monkeypatch.setattr(SessionTable, "remember", lambda self, client, seq, result: None)
    assert _first_failing_seed(range(CONTROL_SEEDS)) is not None, (
        f"no seed in range({CONTROL_SEEDS}) caught the missing de-duplication"
    )


def test_the_sweep_serves_reads_from_leases() -> None:
    """The sweep exercises the lease: without reads served from it, the controls below
    would prove nothing."""
    assert run_host_sweep(0).stats["lease_reads"] > 0


def test_the_sweep_catches_a_lease_that_outlasts_the_followers_refusal(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Control: a lease far longer than the followers' refusal to vote, held by a leader
    that also stops stepping down when it loses its quorum (which alone, with reads
    confirmed by ReadIndex, would be safe): cut off from the rest, it goes on serving
    reads that miss the new leader's writes."""
    monkeypatch.setattr(host_module, "lease_duration_s", lambda ticks, interval_s: 1_000.0)
    monkeypatch.setattr(ProgressTracker, "quorum_active", lambda self: True)
    assert _first_failing_seed(range(CONTROL_SEEDS)) is not None, (
        f"no seed in range({CONTROL_SEEDS}) caught the overlong lease"
    )


def test_a_lease_of_the_right_length_is_safe_even_for_a_leader_that_never_steps_down(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The other half of the control above: with the lease as the servers compute it, the
    leader that never steps down is still safe, so what the control caught was the
    lease's length (the followers' refusal alone bounds it)."""
    monkeypatch.setattr(ProgressTracker, "quorum_active", lambda self: True)
    failing = _first_failing_seed(range(LEASE_ALONE_SEEDS))
    assert failing is None, failing.describe() if failing else ""


def test_every_lease_counts_from_no_later_than_its_round_was_sent(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each lease read is checked as it is served: the lease it relies on must count from
    a time no later than the first send of the round it stands on (the followers heard
    that round no earlier, so their refusal covers the lease). Slow disks and ReadIndex
    reads make the gap between taking a Ready and sending it real."""
    first_sent: dict[tuple[str, int, int], float] = {}
    send = HostCluster._send

    def recording_send(self: HostCluster[Any], message: Message) -> None:
        if isinstance(message, Heartbeat) and message.round:
            key = (message.sender, message.term, message.round)
            first_sent.setdefault(key, self.clock.now())
        send(self, message)

    checked: list[int] = []
    late: list[str] = []
    lease_index = HostReads.lease_index

    def checked_lease_index(self: HostReads, node: RaftNode, now: float) -> int | None:
        index = lease_index(self, node, now)
        if index is not None:
            confirmed = node.lease.confirmed
            start = self.lease.until(node.term, confirmed) - self.lease.duration_s
            sent = first_sent.get((node.id, node.term, confirmed))
            checked.append(confirmed)
            if sent is None or start > sent:
                late.append(f"{node.id} term {node.term} round {confirmed}: {start} > {sent}")
        return index

    monkeypatch.setattr(HostCluster, "_send", recording_send)
    monkeypatch.setattr(HostReads, "lease_index", checked_lease_index)
    for seed in range(LEASE_TIMING_SEEDS):
        first_sent.clear()  # (names, terms and rounds repeat from one run to the next)
        result = run_host_sweep(seed)
        assert not result.problems, result.describe()
    assert checked, "no lease read was served"
    assert not late, late[:5]
