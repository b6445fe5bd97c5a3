"""A simulated cluster of real :class:`~shardwise.raft.host.RaftHost` servers.

:mod:`shardwise.testing.sim` drives bare Raft cores; this harness runs the production
host around them instead, so its code paths (proposal bookkeeping, ReadIndex reads,
deadlines, snapshots, restart recovery) are exercised under the same kinds of faults:

* every host runs on one asyncio loop and shares one :class:`ManualClock`; time moves only
  in :meth:`HostCluster.advance`, one small step at a time, and the loop is allowed to go
  quiet (:meth:`HostCluster.settle`) after each step, so nothing waits in real time;
* the network (:class:`~shardwise.testing.network.Network`, in whole steps) delays every
  message (so messages overtake each other; log-carrying ones up to ``bulk_delay`` more),
  drops, duplicates, and honours directed cuts, which model partitions of any shape;
  messages go through the wire codec, so each copy is an independent object that is
  known to survive encoding;
* each host persists through a :class:`SimulatedDisk` whose fsync takes clock time. With
  no latency it is ``run_inline`` (the write happens without yielding); with some, the
  loop keeps stepping the core meanwhile, as in production while a worker thread syncs,
  so the host's group-commit path and a leader's early appends are exercised too;
* a crash stops the host (losing or finishing an fsync in progress) without closing its
  :class:`MemoryStorage`, which then keeps only what it had synced; a restart builds a
  new host, with an empty state machine, on it;
* all randomness comes from one seeded ``random.Random``, and every iteration order is
  sorted: the same seed replays the same run exactly.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Final, Generic, TypeVar

import msgspec

from shardwise.clock import ManualClock
from shardwise.raft.host import HostOptions, RaftHost
from shardwise.raft.messages import AppendEntries, InstallSnapshot, Membership, Message
from shardwise.raft.ready import RaftConfig, Role
from shardwise.raft.statemachine import StateMachine
from shardwise.storage.memory import MemoryStorage, SimulatedSpace
from shardwise.testing.network import Draws, Faults, Network, Packet

TICK_S: Final = 0.125
"""The hosts' tick. A power of two, like :data:`STEP_S`, so that clock times sum exactly
and a deadline never misses its step by a rounding error."""

STEPS_PER_TICK: Final = 4
"""Clock steps per tick: the resolution of message delays (and so of reordering)."""

STEP_S: Final = TICK_S / STEPS_PER_TICK

MAX_SETTLE_YIELDS: Final = 100_000
"""Loop turns :meth:`HostCluster.settle` waits for quiet before it declares a livelock."""

QUIET_YIELDS: Final = 3
"""Consecutive loop turns with every host idle that count as settled: a task woken by a
host (a client whose future resolved) runs within one turn and wakes a host within it."""

MAX_DELIVERIES_PER_SERVER_TICK: Final = 100
"""Messages delivered per server in one tick past which :meth:`HostCluster.advance` calls
it a message storm. Healthy runs, duplication and all, stay below 30; a storm (two nodes
answering each other at network speed forever) would otherwise run until the test's
timeout instead of failing with a reason."""

HOST_SEED_BITS: Final = 32
INCARNATION_BYTES: Final = 8

_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(Message).decode

S = TypeVar("S", bound=StateMachine)


class LivelockError(AssertionError):
    """The hosts never went idle within a step, or kept messages flowing at a rate no
    healthy group reaches: something keeps producing work."""


class PowerCutError(Exception):
    """Raised into a host whose fsync was in progress when the power went."""


class SimulatedDisk:
    """The :class:`~shardwise.raft.host.BlockingRunner` of one host incarnation.

    Each call waits ``latency()`` clock steps, then runs the storage work inline. While it
    waits, the host's ready task is suspended and the rest of the loop goes on (messages
    step the core, clients propose, a leader's early appends are on the wire), exactly
    as while a worker thread fsyncs in production.
    """

    def __init__(self, clock: ManualClock, latency: Callable[[], int]) -> None:
        self._clock = clock
        self._latency = latency
        self._gates: list[asyncio.Future[None]] = []
        self._timers: set[asyncio.Task[None]] = set()
        self._off = False
        self._lost = False

    @property
    def busy(self) -> bool:
        """Whether an fsync is in progress (the host waits for time to move)."""
        return any(not gate.done() for gate in self._gates)

    async def __call__(self, fn: Callable[[], None], /) -> None:
        steps = 0 if self._off else self._latency()
        if steps > 0:
            gate: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._gates.append(gate)
            timer = asyncio.create_task(self._open_after(steps, gate), name="fsync-timer")
            self._timers.add(timer)
            timer.add_done_callback(self._timers.discard)
            try:
                await gate
            finally:
                self._gates.remove(gate)
        if self._lost:
            raise PowerCutError("the power went before this write reached the disk")
        fn()

    async def _open_after(self, steps: int, gate: asyncio.Future[None]) -> None:
        await self._clock.sleep(steps * STEP_S)
        if not gate.done():
            gate.set_result(None)

    async def power_off(self, *, lose_write: bool) -> None:
        """End every wait now, so that the host's ``stop()`` is not held up.

        With ``lose_write`` the write in progress never happens: the host gets
        :class:`PowerCutError` and halts, sending nothing more, which is all a process
        can do as its power goes (what it sent before the write, such as a leader's
        early appends, is on the wire). Otherwise the write completes and the Ready is
        finished, as ``stop()`` does in production while a worker thread syncs.
        """
        self._off = True
        self._lost = lose_write
        for gate in self._gates:
            if not gate.done():
                gate.set_result(None)
        timers = list(self._timers)
        for timer in timers:
            timer.cancel()
        await asyncio.gather(*timers, return_exceptions=True)


HEALTHY_NETWORK: Final = Faults(min_delay=1, max_delay=3)
"""The network a host cluster starts with: delays of one to three steps, no loss."""


class HostCluster(Generic[S]):
    """``names`` servers of one Raft group, each a :class:`RaftHost` over MemoryStorage.

    Use it inside a running event loop: ``await start()``, drive it with
    :meth:`advance`, and ``await close()`` at the end (it stops every host, so no task is
    left pending). ``rng`` is the run's only source of randomness; pass the same generator
    to whatever else the run decides at random (clients, nemesis) to keep one seed.
    """

    def __init__(
        self,
        names: Iterable[str],
        rng: random.Random,
        make_state_machine: Callable[[], S],
        *,
        options: HostOptions | None = None,
        config: RaftConfig | None = None,
    ) -> None:
        self.names = sorted(names)
        self.rng = rng
        self.clock = ManualClock()
        self.network: Network[bytes] = Network(rng, HEALTHY_NETWORK, draws=Draws.STEPPED)
        self.delivered: Counter[str] = Counter()
        """Messages handed to a running host, by type (did snapshots travel? ...)."""
        self.options = options or HostOptions(tick_interval_s=TICK_S)
        if self.options.tick_interval_s != TICK_S:
            raise ValueError(f"hosts must tick every {TICK_S} s, the step grid assumes it")
        self.config = config or RaftConfig(lease_reads=True)
        self.make_state_machine = make_state_machine
        self.membership = Membership(frozenset(self.names))
        self.spaces: dict[str, SimulatedSpace] = {n: SimulatedSpace() for n in self.names}
        """Each server's simulated disk space: fill it (``full``, ``low``) to test how
        a replica refuses writes and resumes (shared by every storage of the server)."""
        self.storages: dict[str, MemoryStorage] = {
            n: MemoryStorage(self.spaces[n]) for n in self.names
        }
        self.hosts: dict[str, RaftHost[S]] = {}
        """Running hosts only; a crashed server is absent until it restarts."""
        self.disks: dict[str, SimulatedDisk] = {}
        self.max_fsync_steps = 0
        """Each fsync takes from 0 to this many clock steps (change it at any time)."""
        self.step = 0
        self._tick_deliveries = 0
        self.crashes = 0
        self.restarts = 0
        self._lease_reads_before = 0
        self.halted: list[str] = []
        """Hosts found halted when crashed or closed: a halt means a bug or a broken disk,
        and the simulated disks never break (a lost write's halt is not counted)."""

    # --- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        for name in self.names:
            await self._boot(name)

    async def close(self) -> None:
        """Stop every running host for good (closing its storage)."""
        for name in sorted(self.hosts):
            host = self.hosts.pop(name)
            self._lease_reads_before += host.lease_reads
            self._note_halt(host)
            await self.disks.pop(name).power_off(lose_write=False)
            await host.stop()

    async def crash(self, name: str, *, lose_write: bool = True) -> None:
        """Power loss: the host stops and its disk keeps only what was synced.

        A write in progress (an fsync that takes clock time) is lost with ``lose_write``,
        or completes first otherwise (see :meth:`SimulatedDisk.power_off`). A host that
        is not writing stops between two Readies; written-but-unsynced data is exactly
        what :meth:`MemoryStorage.crash` discards, so that case loses nothing either."""
        host = self.hosts.pop(name)
        self._lease_reads_before += host.lease_reads
        self._note_halt(host)  # first: the halt that a lost write causes is no bug
        await self.disks.pop(name).power_off(lose_write=lose_write)
        await host.stop(close_storage=False)
        # (The host's own storage: it reopens a new one after a stop on a full disk.)
        storage = host.storage
        assert isinstance(storage, MemoryStorage)
        self.storages[name] = storage.crash()
        self.crashes += 1

    async def restart(self, name: str) -> RaftHost[S]:
        if name in self.hosts:
            raise ValueError(f"{name!r} is running")
        self.restarts += 1
        return await self._boot(name)

    async def _boot(self, name: str) -> RaftHost[S]:
        disk = SimulatedDisk(self.clock, self._fsync_steps)
        host = RaftHost(
            name,
            self.membership,
            self.storages[name],
            self.make_state_machine(),
            self._send,
            clock=self.clock,
            config=self.config,
            options=self.options,
            seed=self.rng.getrandbits(HOST_SEED_BITS),
            run_blocking=disk,
            incarnation=self.rng.randbytes(INCARNATION_BYTES),
        )
        self.hosts[name] = host
        self.disks[name] = disk
        await host.start()
        return host

    def _fsync_steps(self) -> int:
        return self.rng.randint(0, self.max_fsync_steps) if self.max_fsync_steps else 0

    def _send(self, message: Message) -> None:
        packet = Packet(message.sender, message.to, _encode(message))
        bulky = isinstance(message, AppendEntries | InstallSnapshot)
        self.network.send(packet, self.step, duplicable=True, bulky=bulky)

    def lease_reads(self) -> int:
        """Reads served from a leader's lease, by every host that ran (crashed ones too)."""
        return self._lease_reads_before + sum(h.lease_reads for h in self.hosts.values())

    def _note_halt(self, host: RaftHost[S]) -> None:
        if host.status().halted and host.id not in self.halted:
            self.halted.append(host.id)

    # --- time ----------------------------------------------------------------------------

    async def settle(self) -> None:
        """Yield until every running host is idle, or waits for its disk, for
        :data:`QUIET_YIELDS` turns in a row: nothing more happens until time moves."""
        quiet = 0
        for _ in range(MAX_SETTLE_YIELDS):
            await asyncio.sleep(0)
            if all(h.is_idle() or self.disks[n].busy for n, h in self.hosts.items()):
                quiet += 1
                if quiet >= QUIET_YIELDS:
                    return
            else:
                quiet = 0
        raise LivelockError(f"hosts still busy after {MAX_SETTLE_YIELDS} loop turns")

    async def advance(self, ticks: float) -> None:
        """Move time by ``ticks`` (rounded to whole steps, at least one), a step at a time:
        wake the clock's sleepers, deliver what is due, and settle."""
        steps = max(1, round(ticks * STEPS_PER_TICK))
        storm = MAX_DELIVERIES_PER_SERVER_TICK * len(self.names)
        for _ in range(steps):
            self.step += 1
            if self.step % STEPS_PER_TICK == 0:
                self._tick_deliveries = 0
            self.clock.advance(STEP_S)
            for packet in self.network.arrivals(self.step):
                host = self.hosts.get(packet.receiver)
                if host is not None:
                    # Decoded per arrival: every copy is a new object, as off a socket.
                    message = _decode(packet.payload)
                    self.delivered[type(message).__name__] += 1
                    self._tick_deliveries += 1
                    host.deliver(message)
            if self._tick_deliveries > storm:
                raise LivelockError(f"message storm: over {storm} deliveries in one tick")
            await self.settle()

    async def run_until(self, condition: Callable[[], bool], max_ticks: int) -> bool:
        """Advance a tick at a time until ``condition()`` holds; whether it did."""
        for _ in range(max_ticks):
            if condition():
                return True
            await self.advance(1)
        return condition()

    def now(self) -> float:
        return self.clock.now()

    # --- observing -----------------------------------------------------------------------

    def running(self) -> list[str]:
        return sorted(self.hosts)

    def down(self) -> list[str]:
        return [n for n in self.names if n not in self.hosts]

    def leader(self) -> str | None:
        """The running leader of the highest term, if any (an old leader may linger)."""
        leaders = [
            host.status() for host in self.hosts.values() if host.status().role is Role.LEADER
        ]
        if not leaders:
            return None
        return max(leaders, key=lambda status: (status.term, status.node_id)).node_id

    def converged(self) -> bool:
        """Whether every server runs and all have applied the same prefix."""
        if self.down():
            return False
        statuses = [host.status() for host in self.hosts.values()]
        return len({(s.applied, s.commit) for s in statuses}) == 1
