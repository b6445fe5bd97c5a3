"""Real Raft hosts over real transports: two groups on three nodes, one connection per
pair of nodes carrying both groups' traffic; a leader is elected and writes replicate.

Hosts tick on the real clock (fast ticks, so an election takes a fraction of a second);
the test waits for conditions, re-checked on every frame the transports deliver.
"""

from __future__ import annotations

from shardwise.model.kv import Put
from shardwise.net.harness import Mesh, eventually
from shardwise.net.transport import Transport
from shardwise.raft import Membership, Role
from shardwise.raft.host import HostOptions, RaftHost, run_inline
from shardwise.raft.kv import KVStateMachine, decode_result, encode_command
from shardwise.storage import MemoryStorage

NODES = ("n1", "n2", "n3")
GROUPS = (1, 2)
TICK_S = 0.01
PROPOSE_TIMEOUT_S = 10.0


def leader_of(hosts: list[RaftHost[KVStateMachine]]) -> RaftHost[KVStateMachine] | None:
    leaders = [h for h in hosts if h.status().role is Role.LEADER]
    return leaders[0] if len(leaders) == 1 else None


async def test_two_raft_groups_replicate_over_one_connection_per_pair() -> None:
    membership = Membership(frozenset(NODES))
    async with Mesh(NODES) as mesh:
        groups: dict[int, list[RaftHost[KVStateMachine]]] = {g: [] for g in GROUPS}
        for seed, node_id in enumerate(NODES):
            transport: Transport = mesh[node_id]
            for group in GROUPS:
                host = RaftHost(
                    node_id,
                    membership,
                    MemoryStorage(),
                    KVStateMachine(),
                    transport.raft_sender(group),
                    options=HostOptions(tick_interval_s=TICK_S),
                    seed=seed * 10 + group,
                    run_blocking=run_inline,
                )
                transport.on_raft(group, host.deliver)
                groups[group].append(host)
        hosts = [h for group in GROUPS for h in groups[group]]
        for host in hosts:
            await host.start()
        try:
            for group in GROUPS:
                await eventually(mesh.all, lambda g=group: leader_of(groups[g]) is not None)  # type: ignore[misc]
                leader = leader_of(groups[group])
                assert leader is not None
                command = encode_command(Put(f"k{group}", f"v{group}"))
                assert decode_result(await leader.propose(command, PROPOSE_TIMEOUT_S)).ok
            for group in GROUPS:
                await eventually(
                    mesh.all,
                    lambda g=group: all(  # type: ignore[misc]
                        h.state_machine.get(f"k{g}") == f"v{g}" for h in groups[g]
                    ),
                )
        finally:
            for host in hosts:
                await host.stop()
        # Three nodes, three connections in all: each pair shares one for both groups.
        await eventually(mesh.all, lambda: sum(t.connection_count for t in mesh.all) == 2 * 3)
        assert all(t.stats.raft_dropped_unknown_group == 0 for t in mesh.all)
