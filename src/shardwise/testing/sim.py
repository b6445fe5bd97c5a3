"""A deterministic cluster simulator: real Raft cores, simulated time, network and disks.

Everything runs in one thread in virtual time, driven by one seeded generator: message
delay (and so reordering), loss, duplication, partitions (any directed cut; the network
is :mod:`shardwise.testing.network`'s), and crashes that lose whatever a node wrote but
had not synced. The same seed replays the same run
exactly, so a failure is reproduced by its seed alone.

Each simulated server does what the real host does with a Ready, in the same order:
persist (snapshot, entries, hard state), sync, send, apply, advance. Invariants of Raft
are checked as the run goes (:class:`Invariants`); a violation raises at once with the
virtual time, so the seed and the time pinpoint it.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from typing import Final

from shardwise.errors import ShardwiseError
from shardwise.raft.messages import EntryKind, Membership, Message, entry_kind
from shardwise.raft.node import RaftNode
from shardwise.raft.persist import write_ready
from shardwise.raft.ready import RaftConfig, ReadState, Ready, Role
from shardwise.raft.statemachine import StateMachine
from shardwise.storage.interface import load_state
from shardwise.storage.memory import MemoryStorage
from shardwise.storage.types import LogEntry
from shardwise.testing.network import Draws, Faults, Network, Packet

TICK_UNITS: Final = 10
"""Virtual time units per Raft tick; message delays are drawn in units."""

MAX_READY_ROUNDS: Final = 10_000
"""Bound on Ready rounds one server handles in one time unit (a livelock detector)."""


def drain(node: RaftNode) -> list[Message]:
    """Take a lone core's Readies until it has none, advancing each as if handled (nothing
    persisted or applied): the messages it sent. For white-box tests of single rules."""
    messages: list[Message] = []
    while node.has_ready():
        ready = node.ready()
        messages.extend([*ready.early_messages, *ready.messages])
        node.advance(ready)
    return messages


class InvariantViolationError(ShardwiseError, AssertionError):
    """The simulation reached a state Raft forbids."""


class Invariants:
    """Raft's safety properties, checked on every event of a run."""

    def __init__(self) -> None:
        self.leaders: dict[int, str] = {}
        self.applied: dict[int, tuple[int, bytes]] = {}

    def on_leader(self, node: RaftNode, now: int) -> None:
        other = self.leaders.setdefault(node.term, node.id)
        if other != node.id:
            raise InvariantViolationError(
                f"t={now}: two leaders in term {node.term}: {other}, {node.id}"
            )
        # Leader completeness: every entry any node applied is in the new leader's log.
        log = node.log
        for index, (term, _) in self.applied.items():
            if index > log.offset and log.term_or_none(index) != term:
                raise InvariantViolationError(
                    f"t={now}: leader {node.id} (term {node.term}) lacks committed entry {index}"
                )

    def check_log_matching(self, nodes: list[RaftNode], now: int) -> None:
        """Log matching: two logs that hold an entry with the same index and term hold the
        same entries up to it. Checked from the last index where they agree, downwards."""
        for i, a in enumerate(nodes):
            for b in nodes[i + 1 :]:
                low = max(a.log.offset, b.log.offset)
                top = min(a.log.last_index(), b.log.last_index())
                while top > low and a.log.term(top) != b.log.term(top):
                    top -= 1
                if top <= low:
                    continue
                mine = a.log.entries[low - a.log.offset : top - a.log.offset]
                theirs = b.log.entries[low - b.log.offset : top - b.log.offset]
                if mine != theirs:
                    raise InvariantViolationError(
                        f"t={now}: logs of {a.id} and {b.id} agree at {top} but differ below"
                    )

    def on_apply(self, node_id: str, entry: LogEntry, now: int) -> None:
        seen = self.applied.setdefault(entry.index, (entry.term, entry.data))
        if seen != (entry.term, entry.data):
            raise InvariantViolationError(
                f"t={now}: {node_id} applied a different entry at {entry.index}: "
                f"term {entry.term} vs {seen[0]}"
            )


class SimServer:
    """One simulated process: a Raft core, its memory-backed disk and its state machine."""

    def __init__(
        self,
        node_id: str,
        bootstrap: Membership | None,
        cluster: SimRaftGroup,
        make_state_machine: Callable[[], StateMachine],
    ) -> None:
        self.id = node_id
        self.bootstrap = bootstrap
        self.cluster = cluster
        self.make_state_machine = make_state_machine
        self.storage = MemoryStorage()
        self.alive = False
        self.retired = False
        """Removed from the group for good: never restarted."""
        self.torn_crash_pending = False
        self.results: dict[int, tuple[bytes, bytes]] = {}
        """(command, result) of every command applied here, by index: a client compares
        the command with its own to tell its entry from one that replaced it."""
        self.reads: list[ReadState] = []
        self.dropped_reads: list[bytes] = []
        self.boot()

    def boot(self) -> None:
        state = load_state(self.storage)
        self.sm = self.make_state_machine()
        self.node = RaftNode(
            self.id,
            self.bootstrap,
            config=self.cluster.config,
            seed=self.cluster.seed,
            hard_state=state.hard_state,
            snapshot=state.snapshot,
            entries=state.entries,
        )
        if state.snapshot is not None:
            meta, data = state.snapshot
            self.sm.restore(data, meta.index)
        self.was_leader_term = -1
        self.alive = True
        self.reads = []
        self.dropped_reads = []

    def crash(self) -> None:
        """Power loss: unsynced writes are gone, the process restarts from its disk later."""
        self.storage = self.storage.crash()
        self.alive = False

    def process(self) -> None:
        rounds = 0
        while self.alive and self.node.has_ready():
            rounds += 1
            if rounds > MAX_READY_ROUNDS:
                raise InvariantViolationError(f"{self.id} produced Readies without end (livelock)")
            self._handle(self.node.ready())
        if self.alive and self.node.role is Role.LEADER and self.node.term != self.was_leader_term:
            self.was_leader_term = self.node.term
            self.cluster.invariants.on_leader(self.node, self.cluster.now)

    def _handle(self, ready: Ready) -> None:
        storage = self.storage
        for message in ready.early_messages:  # a leader's appends overlap its own write
            self.cluster.send(message)
        write_ready(storage, ready)
        if self.torn_crash_pending and ready.must_sync:
            self.torn_crash_pending = False
            self.crash()  # written but not synced: the crash takes it, and nothing was sent
            return
        if ready.must_sync:
            storage.sync()
        if ready.snapshot is not None:
            self.sm.restore(ready.snapshot.data, ready.snapshot.meta.index)
        for message in ready.messages:
            self.cluster.send(message)
        for entry in ready.committed:
            self._apply(entry)
        self.reads.extend(ready.read_states)
        self.dropped_reads.extend(ready.dropped_reads)
        self.node.advance(ready)
        self._maybe_snapshot()

    def _apply(self, entry: LogEntry) -> None:
        self.cluster.invariants.on_apply(self.id, entry, self.cluster.now)
        if entry.index <= self.sm.applied_index():
            return
        if entry_kind(entry) is EntryKind.COMMAND:
            command = entry.data[1:]
            self.results[entry.index] = (command, self.sm.apply(entry.index, command))

    def _maybe_snapshot(self) -> None:
        every = self.cluster.snapshot_every
        applied = self.node.log.applied
        if every and applied - self.node.log.snapshot.index >= every:
            data = self.sm.snapshot()
            meta = self.node.compact(applied, data)
            self.storage.save_snapshot(meta, data)
            self.storage.compact(meta.index)


class SimRaftGroup:
    """A Raft group of simulated servers; ``seed`` decides every random choice.

    The tick-level adapter of :class:`~shardwise.testing.network.Network`: time is a
    whole number of units (:data:`TICK_UNITS` a tick), delays are drawn in units, and
    each unit delivers what is due before the servers process their Readies."""

    def __init__(
        self,
        ids: Iterable[str],
        seed: int,
        *,
        make_state_machine: Callable[[], StateMachine],
        faults: Faults | None = None,
        config: RaftConfig | None = None,
        snapshot_every: int = 0,
    ) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.now = 0
        self.config = config or RaftConfig()
        self.snapshot_every = snapshot_every
        self.network: Network[Message] = Network(self.rng, faults or Faults(), draws=Draws.STEPPED)
        self.invariants = Invariants()
        self.ids = sorted(ids)
        bootstrap = Membership(frozenset(self.ids))
        self._make_state_machine = make_state_machine
        self.servers = {i: SimServer(i, bootstrap, self, make_state_machine) for i in self.ids}

    # --- driving -------------------------------------------------------------------------

    def step(self) -> None:
        """Advance virtual time by one unit."""
        self.now += 1
        alive = [s for s in self.servers.values() if s.alive]
        if self.now % TICK_UNITS == 0:
            for server in alive:
                server.node.tick()
            self.invariants.check_log_matching([s.node for s in alive], self.now)
        for packet in self.network.arrivals(self.now):
            target = self.servers.get(packet.receiver)
            if target is not None and target.alive:
                target.node.step(packet.payload)
        for server in alive:
            server.process()

    def run(self, units: int) -> None:
        for _ in range(units):
            self.step()

    def run_until(self, condition: Callable[[], bool], max_units: int) -> bool:
        for _ in range(max_units):
            if condition():
                return True
            self.step()
        return condition()

    def send(self, message: Message) -> None:
        packet = Packet(message.sender, message.to, message)
        self.network.send(packet, self.now, duplicable=True, bulky=False)

    def ticks(self, count: int) -> int:
        return count * TICK_UNITS

    # --- observing -----------------------------------------------------------------------

    def leader(self) -> str | None:
        """The leader of the highest term among live servers, if any."""
        leaders = [s.node for s in self.servers.values() if s.alive and s.node.is_leader()]
        if not leaders:
            return None
        return max(leaders, key=lambda n: n.term).id

    def wait_for_leader(self, max_ticks: int = 200) -> str:
        if not self.run_until(lambda: self.leader() is not None, self.ticks(max_ticks)):
            raise InvariantViolationError(f"seed={self.seed}: no leader within {max_ticks} ticks")
        leader = self.leader()
        assert leader is not None
        return leader

    def node(self, node_id: str) -> RaftNode:
        return self.servers[node_id].node

    # --- faults --------------------------------------------------------------------------

    def crash(self, node_id: str, *, torn: bool = False) -> None:
        """Crash now, or (``torn``) in the middle of the node's next synced write."""
        server = self.servers[node_id]
        if torn:
            server.torn_crash_pending = True
        else:
            server.crash()

    def add_server(self, node_id: str) -> SimServer:
        """A brand-new server with an empty disk that knows no membership: it can join the
        group as a learner. Ids are never reused: a message still in flight from an old
        incarnation must not be taken for the new one's."""
        if node_id in self.servers:
            raise ValueError(f"server id {node_id!r} was used before")
        server = SimServer(node_id, None, self, self._make_state_machine)
        self.servers[node_id] = server
        self.ids = sorted(self.servers)
        return server

    def retire(self, node_id: str) -> None:
        """Stop a server for good (it left the group)."""
        server = self.servers[node_id]
        if server.alive:
            server.crash()
        server.retired = True

    def restart(self, node_id: str) -> None:
        server = self.servers[node_id]
        if server.retired:
            raise ValueError(f"{node_id} is retired")
        if server.alive:
            server.crash()
        server.torn_crash_pending = False
        server.boot()
