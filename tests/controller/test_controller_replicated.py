"""The controller replicated by Raft in the simulator: loss, partitions, crashes."""

from __future__ import annotations

import contextlib
import random

from shardwise.controller.statemachine import ControllerStateMachine, decode_result, encode_command
from shardwise.errors import NotLeaderError, ProposalDroppedError
from shardwise.model.config import ChangeResult, Configuration, Join, Leave, Move, Op, ShardId
from shardwise.testing.network import Faults
from shardwise.testing.sim import SimRaftGroup


def controller_cluster(seed: int, faults: Faults | None = None) -> SimRaftGroup:
    return SimRaftGroup(
        ["c1", "c2", "c3"],
        seed,
        make_state_machine=ControllerStateMachine,
        faults=faults,
        snapshot_every=10,
    )


class Client:
    """A controller client: retries through leader changes with one (client, seq)."""

    def __init__(self, cluster: SimRaftGroup, name: str) -> None:
        self.cluster, self.name, self.seq = cluster, name, 0

    def start(self, op: Op) -> tuple[bytes, list[tuple[str, int]]]:
        self.seq += 1
        return encode_command(op, client_id=self.name, seq=self.seq), []

    def poll(self, command: bytes, placed: list[tuple[str, int]]) -> ChangeResult | None:
        for server_id, index in placed:
            server = self.cluster.servers[server_id]
            applied = server.results.get(index) if server.alive else None
            if applied is not None and applied[0] == command:
                return decode_result(applied[1])
        return None

    def attempt(self, command: bytes, placed: list[tuple[str, int]]) -> None:
        leader = self.cluster.leader()
        if leader is None:
            return
        with contextlib.suppress(NotLeaderError, ProposalDroppedError):
            placed.append((leader, self.cluster.node(leader).propose(command)))

    def call(self, op: Op, max_ticks: int = 2000) -> ChangeResult:
        command, placed = self.start(op)
        deadline = self.cluster.now + self.cluster.ticks(max_ticks)
        while self.cluster.now < deadline:
            if (result := self.poll(command, placed)) is not None:
                return result
            self.attempt(command, placed)
            self.cluster.run(self.cluster.ticks(5))
        raise AssertionError(f"seed={self.cluster.seed}: {op} not answered")


def history(cluster: SimRaftGroup, server: str) -> list[Configuration]:
    sm = cluster.servers[server].sm
    assert isinstance(sm, ControllerStateMachine)
    return [sm.query(n) for n in range(sm.latest().num + 1)]


def test_configurations_survive_the_loss_of_each_replica_in_turn(seed: int) -> None:
    cluster = controller_cluster(seed)
    cluster.wait_for_leader()
    admin = Client(cluster, "admin")
    for gid in (1, 2, 3):
        assert not admin.call(Join({gid: (f"g{gid}a", f"g{gid}b")})).error
    admin.call(Leave((2,)))
    recorded = history(cluster, cluster.leader() or "c1")
    for victim in cluster.ids:
        cluster.crash(victim)
        admin.call(Move(ShardId("default", 0), 3 if victim != "c3" else 1))
        cluster.restart(victim)
        cluster.run(cluster.ticks(30))
        for server in cluster.ids:
            assert history(cluster, server)[: len(recorded)] == recorded


def test_the_same_configuration_after_the_leader_is_killed(seed: int) -> None:
    cluster = controller_cluster(seed)
    leader = cluster.wait_for_leader()
    admin = Client(cluster, "admin")
    admin.call(Join({1: ("a",), 2: ("b",)}))
    latest = admin.call(Join({3: ("c",)}))
    before = history(cluster, leader)
    cluster.crash(leader)
    cluster.run_until(lambda: cluster.leader() not in (None, leader), cluster.ticks(300))
    new_leader = cluster.leader()
    assert new_leader is not None
    assert history(cluster, new_leader) == before
    assert history(cluster, new_leader)[-1].num == latest.num


def test_concurrent_join_and_leave_from_ten_clients_under_faults(seed: int) -> None:
    cluster = controller_cluster(seed, Faults(drop=0.1, duplicate=0.05, max_delay=20))
    cluster.wait_for_leader(max_ticks=500)
    rng = random.Random(seed)
    clients = [Client(cluster, f"client{i}") for i in range(10)]
    joined = [False] * 10
    pending: dict[int, tuple[bytes, list[tuple[str, int]]]] = {}
    for _ in range(150):
        for i, client in enumerate(clients):
            if i in pending:
                command, placed = pending[i]
                if client.poll(command, placed) is not None:
                    del pending[i]
                    joined[i] = not joined[i]
                elif rng.random() < 0.2:
                    client.attempt(command, placed)  # a retry with the same seq
            elif rng.random() < 0.3:
                gid = i + 1
                op: Op = Leave((gid,)) if joined[i] else Join({gid: (f"srv{gid}",)})
                pending[i] = client.start(op)
                client.attempt(*pending[i])
        if rng.random() < 0.05:
            isolated = rng.choice(cluster.ids)
            cluster.network.partition([isolated], [s for s in cluster.ids if s != isolated])
        elif rng.random() < 0.1:
            cluster.network.heal()
        cluster.run(cluster.ticks(2))
    cluster.network.heal()
    cluster.network.faults = Faults()
    for i, client in enumerate(clients):
        if i in pending:
            command, placed = pending[i]
            for _ in range(400):
                if client.poll(command, placed) is not None:
                    break
                client.attempt(command, placed)
                cluster.run(cluster.ticks(3))
            else:
                raise AssertionError(f"seed={seed}: client{i} never answered")
    cluster.run(cluster.ticks(50))
    histories = [history(cluster, s) for s in cluster.ids]
    assert histories[0] == histories[1] == histories[2]
    configs = histories[0]
    assert len(configs) > 10
    for config in configs:  # every configuration is balanced over its groups
        per_group = [sum(1 for o in config.owners["default"] if o == g) for g in config.groups]
        if per_group:
            assert max(per_group) - min(per_group) <= 1
            assert set(config.owners["default"]) <= set(config.groups)
        else:
            assert set(config.owners["default"]) == {0}
