"""A replicated key-value workload under a random nemesis, checked for linearizability.

One run, fully determined by its seed: simulated clients send get / put / append / cas
to a Raft group running :class:`~shardwise.raft.kv.KVStateMachine` while a nemesis
partitions the network (random halves, an isolated leader, one-way cuts, a bridge),
makes it lossy, crashes servers (some in the middle of a write, losing what was not
synced) and restarts them. Clients retry through all of it with the same client id and
sequence number, so a retried write applies once. At the end the cluster heals, every
client finishes, a final read of each key joins the history, and the history is checked
against the key-value model: every acknowledged write must be there, in an order
consistent with real time.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any, Final

from shardwise.errors import ConfChangeError, NotLeaderError, ProposalDroppedError
from shardwise.model.kv import Append, Cas, Get, KVOp, KVResult, Put
from shardwise.raft.kv import KVStateMachine, decode_result, encode_command
from shardwise.raft.messages import ConfChange, ConfChangeKind
from shardwise.testing.history import UNKNOWN_OUTPUT, KvOp, Operation, kv_model
from shardwise.testing.linearizability import CheckResult, Verdict, check
from shardwise.testing.network import Faults
from shardwise.testing.sim import TICK_UNITS, SimRaftGroup

ATTEMPT_TIMEOUT_TICKS: Final = 30
"""A client gives up on one server after this long and retries elsewhere."""

CHECK_MAX_STEPS: Final = 2_000_000
"""Search budget of the final linearizability check (past it the verdict is unknown)."""


@dataclass
class SweepOptions:
    servers: int = 5
    clients: int = 4
    keys: int = 3
    duration_ticks: int = 400
    nemesis: bool = True
    membership: bool = True
    """Let the nemesis change membership too: remove voters, add and promote learners."""
    snapshot_every: int = 0


@dataclass
class _Pending:
    op: KvOp
    command: bytes | None  # None for a read served by ReadIndex
    call_time: int
    server: str = ""
    index: int = 0
    context: bytes = b""
    deadline: int = 0


@dataclass
class _Client:
    name: str
    seq: int = 0
    hint: str | None = None
    pending: _Pending | None = None
    attempts: int = 0


@dataclass
class SweepResult:
    seed: int
    history: list[Operation]
    verdict: Verdict
    check: CheckResult
    completed: int = 0
    settled: bool = False
    """Every client finished after the cluster healed, final reads included: liveness."""
    events: list[str] = field(default_factory=list)

    def describe(self) -> str:
        lines = [
            f"seed={self.seed}: {self.verdict.value}, {self.completed}/{len(self.history)} ops",
            *self.events[-20:],
        ]
        if self.verdict is not Verdict.LINEARIZABLE:
            lines.append(self.check.explain())
        return "\n".join(lines)


class KVSweep:
    def __init__(self, seed: int, options: SweepOptions) -> None:
        self.seed = seed
        self.options = options
        self.rng = random.Random(f"sweep:{seed}")
        self.cluster = SimRaftGroup(
            [f"s{i}" for i in range(1, options.servers + 1)],
            seed,
            make_state_machine=KVStateMachine,
            faults=Faults(),
            snapshot_every=options.snapshot_every,
        )
        self.clients = [_Client(f"c{i}") for i in range(options.clients)]
        self.history: list[Operation] = []
        self.events: list[str] = []
        self.accepting = True
        self.generation = 0

    # --- clients -------------------------------------------------------------------------

    def _new_op(self, client: _Client) -> None:
        client.seq += 1
        key = f"k{self.rng.randrange(self.options.keys)}"
        value = f"{client.name}.{client.seq};"
        roll = self.rng.random()
        if roll < 0.35:
            op = KvOp("get", key)
        elif roll < 0.6:
            op = KvOp("put", key, value)
        elif roll < 0.85:
            op = KvOp("append", key, value)
        else:
            expected = self.rng.choice([None, f"{self.rng.choice(self.clients).name}.1;"])
            op = KvOp("cas", key, expected, value)
        command: bytes | None = None
        if op.kind != "get" or self.rng.random() < 0.5:  # half the reads go through the log
            command = encode_command(state_machine_op(op), client_id=client.name, seq=client.seq)
        client.pending = _Pending(op, command, self.cluster.now)
        client.attempts = 0

    def _target(self, client: _Client) -> str:
        alive = [s for s in self.cluster.ids if self.cluster.servers[s].alive]
        if client.hint in alive and client.attempts % 3 != 2:
            return client.hint or alive[0]
        return self.rng.choice(alive or self.cluster.ids)

    def _attempt(self, client: _Client) -> None:
        pending = client.pending
        assert pending is not None
        client.attempts += 1
        target = self._target(client)
        server = self.cluster.servers[target]
        pending.server, pending.index = target, 0
        pending.deadline = self.cluster.now + ATTEMPT_TIMEOUT_TICKS * TICK_UNITS
        if not server.alive:
            return
        try:
            if pending.command is None:
                pending.context = f"{client.name}:{client.seq}:{client.attempts}".encode()
                server.node.read_index(pending.context)
            else:
                pending.index = server.node.propose(pending.command)
        except NotLeaderError as exc:
            client.hint = exc.leader
            pending.deadline = self.cluster.now + TICK_UNITS  # retry soon, at the hint
        except ProposalDroppedError:
            pending.deadline = self.cluster.now + TICK_UNITS

    def _poll(self, client: _Client) -> None:
        pending = client.pending
        if pending is None:
            return
        if pending.server:
            output = self._outcome(pending)
            if output is not _NOTHING:
                self._complete(client, output)
                return
        if self.cluster.now >= pending.deadline:
            self._attempt(client)

    def _outcome(self, pending: _Pending) -> Any:
        server = self.cluster.servers[pending.server]
        if not server.alive:
            return _NOTHING
        if pending.command is not None:
            applied = server.results.get(pending.index) if pending.index else None
            if applied is None or applied[0] != pending.command:
                return _NOTHING  # not applied yet, or another entry took the index
            return model_output(pending.op, decode_result(applied[1]))
        state = next((r for r in server.reads if r.context == pending.context), None)
        if state is None or server.node.log.applied < state.index:
            return _NOTHING
        sm = server.sm
        assert isinstance(sm, KVStateMachine)
        return sm.get(str(pending.op.key))

    def _complete(self, client: _Client, output: Any) -> None:
        pending = client.pending
        assert pending is not None
        self.history.append(
            Operation(client.name, pending.op, output, pending.call_time, self.cluster.now)
        )
        client.pending = None
        client.hint = pending.server

    # --- the nemesis ---------------------------------------------------------------------

    def _nemesis(self) -> None:
        cluster, rng = self.cluster, self.rng
        ids = [s for s in cluster.ids if not cluster.servers[s].retired]
        roll = rng.random()
        alive = [s for s in ids if cluster.servers[s].alive]
        if self.options.membership and roll < 0.12:
            self._membership_change()
            return
        roll = rng.random()
        if roll < 0.15:
            shuffled = rng.sample(ids, len(ids))
            cut = rng.randrange(1, len(ids))
            cluster.network.partition(shuffled[:cut], shuffled[cut:])
            self._event(f"partition {shuffled[:cut]} | {shuffled[cut:]}")
        elif roll < 0.25:
            leader = cluster.leader()
            if leader:
                cluster.network.partition([leader], [s for s in ids if s != leader])
                self._event(f"isolate leader {leader}")
        elif roll < 0.32:
            a, b = rng.sample(ids, 2)
            cluster.network.cut_one_way(a, b)
            self._event(f"one-way cut {a} -> {b}")
        elif roll < 0.38:
            shuffled = rng.sample(ids, len(ids))
            bridge, half = shuffled[0], len(ids) // 2
            left, right = shuffled[1 : half + 1], shuffled[half + 1 :]
            cluster.network.partition([bridge, *left], [bridge, *right])
            self._event(f"bridge {bridge} between {left} and {right}")
        elif roll < 0.55:
            cluster.network.heal()
            self._event("heal")
        elif roll < 0.68 and len(alive) > 1:
            victim = rng.choice(alive)
            torn = rng.random() < 0.5
            cluster.crash(victim, torn=torn)
            self._event(f"crash {victim}{' (torn write)' if torn else ''}")
        elif roll < 0.85:
            down = [s for s in ids if not cluster.servers[s].alive]
            if down:
                cluster.restart(rng.choice(down))
                self._event("restart")
        else:
            cluster.network.faults = Faults(
                drop=rng.choice([0.0, 0.05, 0.2]),
                duplicate=rng.choice([0.0, 0.05]),
                max_delay=rng.choice([3, 10, 30]),
            )
            self._event(f"network {cluster.network.faults}")

    def _membership_change(self) -> None:
        """Remove a voter, add a brand-new server as a learner, or promote a learner."""
        cluster, rng = self.cluster, self.rng
        leader_id = cluster.leader()
        if leader_id is None:
            return
        leader = cluster.node(leader_id)
        members = leader.membership.voters | leader.membership.learners
        retirable = [s for s in cluster.ids if s not in members and not cluster.servers[s].retired]
        for gone in retirable:  # removed and applied: stop the process for good
            cluster.retire(gone)
            self._event(f"retire {gone}")
        choice = rng.random()
        try:
            if leader.membership.learners and choice < 0.5:
                learner = rng.choice(sorted(leader.membership.learners))
                leader.propose_conf_change(ConfChange(ConfChangeKind.PROMOTE, learner))
                self._event(f"promote {learner}")
            elif len(leader.membership.voters) > 3 and choice < 0.75:
                victim = rng.choice(sorted(leader.membership.voters))
                leader.propose_conf_change(ConfChange(ConfChangeKind.REMOVE, victim))
                self._event(f"remove {victim}")
            else:
                self.generation += 1
                new_id = f"j{self.generation}"
                leader.propose_conf_change(ConfChange(ConfChangeKind.ADD_LEARNER, new_id))
                cluster.add_server(new_id)
                self._event(f"add learner {new_id}")
        except (ConfChangeError, NotLeaderError, ProposalDroppedError) as exc:
            self._event(f"membership change refused: {exc}")

    def _event(self, text: str) -> None:
        self.events.append(f"t={self.cluster.now}: {text}")

    # --- the run -------------------------------------------------------------------------

    def _round(self) -> None:
        for client in self.clients:
            if client.pending is None and self.accepting and self.rng.random() < 0.3:
                self._new_op(client)
                self._attempt(client)
            else:
                self._poll(client)
        self.cluster.run(self.rng.randint(1, TICK_UNITS))

    def run(self) -> SweepResult:
        cluster = self.cluster
        end = cluster.ticks(self.options.duration_ticks)
        next_fault = cluster.ticks(20)
        while cluster.now < end:
            self._round()
            if self.options.nemesis and cluster.now >= next_fault:
                self._nemesis()
                next_fault = cluster.now + cluster.ticks(self.rng.randint(5, 40))
        self._settle()
        return self._verdict()

    def _settle(self) -> None:
        cluster = self.cluster
        cluster.network.heal()
        cluster.network.faults = Faults()
        for s in cluster.ids:
            server = cluster.servers[s]
            server.torn_crash_pending = False  # a crash still armed would strike after healing
            if not server.alive and not server.retired:
                cluster.restart(s)
        self._event("settle: healed, everyone restarted")
        self.accepting = False
        deadline = cluster.now + cluster.ticks(600)
        while any(c.pending for c in self.clients) and cluster.now < deadline:
            self._round()
        for key in range(self.options.keys):  # final reads: every acknowledged write shows
            client = self.clients[key % len(self.clients)]
            if client.pending is None:
                client.seq += 1
                op = KvOp("get", f"k{key}")
                command = encode_command(Get(f"k{key}"), client_id=client.name, seq=client.seq)
                client.pending = _Pending(op, command, cluster.now)
                self._attempt(client)
            while client.pending and cluster.now < deadline:
                self._round()

    def _verdict(self) -> SweepResult:
        history = list(self.history)
        for client in self.clients:  # never answered: may or may not have happened
            if client.pending is not None:
                p = client.pending
                history.append(Operation(client.name, p.op, UNKNOWN_OUTPUT, p.call_time, math.inf))
        result = check(kv_model, history, max_steps=CHECK_MAX_STEPS)
        settled = all(client.pending is None for client in self.clients)
        return SweepResult(
            self.seed, history, result.verdict, result, len(self.history), settled, self.events
        )


_NOTHING: Final = object()


def state_machine_op(op: KvOp) -> KVOp:
    """The :mod:`shardwise.raft.kv` command for a history operation of the KV model."""
    key = str(op.key)
    if op.kind == "get":
        return Get(key)
    if op.kind == "put":
        return Put(key, str(op.value))
    if op.kind == "append":
        return Append(key, str(op.value))
    return Cas(key, op.value, str(op.new))


def model_output(op: KvOp, result: KVResult) -> Any:
    """What the KV model expects as the output of ``op``, from the machine's result."""
    if op.kind == "get":
        return result.value
    if op.kind == "cas":
        return result.ok
    return None


def run_sweep(seed: int, options: SweepOptions | None = None) -> SweepResult:
    """One seeded run; see the module docstring."""
    return KVSweep(seed, options or SweepOptions()).run()
