"""Randomized hostile traffic against a live group of real processes over real TLS.

Well over 10^4 well-formed but hostile messages (``testing/hostile.py``: every Raft
message type and every RPC method, extreme integers, wrong and forged ids, stale and
future terms, undecodable payloads) go to a 3-replica group and its controller from a
client connection and from an authenticated node that is no member of the group, while
clients run a workload whose history is recorded. Afterwards no replica has halted, the
group still serves, and the history is linearizable.

The control (``test_the_checks_catch_a_group_that_listens_to_strangers``) runs the same
traffic and the same checks against a group whose replicas do not filter senders (three
Raft hosts over real transports in this process): the checks must fail there.

Seeded: the seed is printed, ``SHARDWISE_TEST_SEED=<seed>`` replays it.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Final

import msgspec
import pytest

from shardwise.client import Client
from shardwise.errors import ClientError, NetError
from shardwise.net.certs import CA_CERT, make_node_certificate
from shardwise.net.harness import Mesh, eventually
from shardwise.net.tls import client_context
from shardwise.net.transport import Transport
from shardwise.net.wire import PeerRole
from shardwise.raft import Membership, Role
from shardwise.raft.host import HostOptions, RaftHost, run_inline
from shardwise.raft.kv import KVStateMachine
from shardwise.shardserver.protocol import STATUS, StatusReply, StatusRequest
from shardwise.storage import MemoryStorage
from shardwise.testing.cluster import ProcessCluster
from shardwise.testing.history import UNKNOWN_OUTPUT, KvOp, Operation, kv_model
from shardwise.testing.hostile import (
    OUT_OF_RANGE_INTS,
    WORKLOAD_PREFIX,
    HostileTraffic,
    controller_samples,
    shard_server_samples,
)
from shardwise.testing.linearizability import Verdict, check

pytestmark = pytest.mark.timeout(300)

INTRUDER: Final = "fz-intruder"
RAFT_MESSAGES: Final = 9_000
"""From the non-member node, in batches of :data:`RAFT_BATCH`."""
RAFT_BATCH: Final = 600
CALLS_FROM_NODE: Final = 1_000
CALLS_FROM_CLIENT: Final = 1_500
RAFT_FROM_CLIENT: Final = 5
"""A Raft frame on a client connection costs that connection: a few only."""
CALL_CONCURRENCY: Final = 24
CALL_S: Final = 1.0
MIN_MESSAGES: Final = 10_000
KEYS: Final = [f"{WORKLOAD_PREFIX}{k}" for k in "abc"]
WORKERS: Final = 3
OP_DEADLINE_S: Final = 10.0
WAIT_S: Final = 30.0


# --- the hostile side ------------------------------------------------------------------


async def _call_loop(
    transport: Transport,
    traffic: HostileTraffic,
    targets: dict[str, dict[str, list[object]]],
    count: int,
    sent: list[int],
) -> None:
    for _ in range(count):
        server = traffic.rng.choice(list(targets))
        call = traffic.call(targets[server])
        with contextlib.suppress(NetError):
            await transport.call(server, call.method, msgspec.Raw(call.body), timeout_s=CALL_S)
        sent[0] += 1


async def _calls(
    transport: Transport,
    traffic: HostileTraffic,
    targets: dict[str, dict[str, list[object]]],
    total: int,
) -> int:
    sent = [0]
    per_loop = total // CALL_CONCURRENCY
    rngs = [random.Random(traffic.rng.random()) for _ in range(CALL_CONCURRENCY)]
    await asyncio.gather(
        *(_call_loop(transport, _fork(traffic, rng), targets, per_loop, sent) for rng in rngs)
    )
    return sent[0]


def _fork(traffic: HostileTraffic, rng: random.Random) -> HostileTraffic:
    return HostileTraffic(rng, group=traffic.group, members=traffic.members, sender=traffic.sender)


async def _raft_flood(transport: Transport, traffic: HostileTraffic, total: int) -> None:
    for start in range(0, total, RAFT_BATCH):
        batch = min(RAFT_BATCH, total - start)
        target = transport.stats.frames_sent + batch // 2

        def written(target: int = target) -> bool:
            return transport.stats.frames_sent >= target

        for _ in range(batch):
            transport.send_raft(traffic.group_id(), traffic.raft_message())
        # Pace by what the socket took, so the queues (4096 frames) never overflow.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(transport.until(written), WAIT_S)
    # A frame that does not decode (a term past 64 bits) costs the sender its connection.
    for value in OUT_OF_RANGE_INTS:
        message = msgspec.structs.replace(traffic.raft_message(), term=value)
        transport.send_raft(traffic.group, message)


# --- the workload ----------------------------------------------------------------------


async def _worker(
    name: str, client: Client, rng: random.Random, history: list[Operation], stop: asyncio.Event
) -> None:
    i = 0
    while not stop.is_set():
        i += 1
        key = rng.choice(KEYS)
        roll = rng.random()
        start = time.monotonic()
        output: object = None
        try:
            if roll < 0.4:
                op = KvOp("get", key)
                output = await client.get(key, deadline_s=OP_DEADLINE_S)
            elif roll < 0.7:
                op = KvOp("put", key, f"{name}.{i}")
                await client.put(key, f"{name}.{i}", deadline_s=OP_DEADLINE_S)
            elif roll < 0.9:
                op = KvOp("append", key, f"{name}.{i};")
                await client.append(key, f"{name}.{i};", deadline_s=OP_DEADLINE_S)
            else:
                expected = rng.choice([None, f"{name}.{i - 1}"])
                op = KvOp("cas", key, expected, f"{name}.{i}")
                output = await client.cas(key, expected, f"{name}.{i}", deadline_s=OP_DEADLINE_S)
        except ClientError:
            history.append(Operation(name, op, UNKNOWN_OUTPUT, start, math.inf))
            continue
        history.append(Operation(name, op, output, start, time.monotonic()))


# --- the live group --------------------------------------------------------------------


async def _statuses(transport: Transport, servers: Sequence[str]) -> list[StatusReply]:
    return [await transport.call(s, STATUS, StatusRequest(), timeout_s=5.0) for s in servers]


async def test_hostile_traffic_leaves_a_live_group_serving_and_linearizable(
    tmp_path: Path, seed: int
) -> None:
    rng = random.Random(seed)
    async with ProcessCluster(tmp_path, groups=1, controllers=1, tls=True) as cluster:
        assert cluster.ca_dir is not None
        await cluster.join(1)
        await cluster.settled()
        members = cluster.servers[1]
        controller = next(iter(cluster.controllers))
        peers = {**{m: _address(m) for m in members}, **cluster.controllers}
        issued = make_node_certificate(cluster.ca_dir, INTRUDER, tmp_path / "intruder")
        ca = cluster.ca_dir / CA_CERT
        intruder = Transport(
            INTRUDER,
            cluster.secret,
            listen=None,
            peers=peers,
            client_ssl=client_context(ca, certfile=issued.cert, keyfile=issued.key),
        )
        stranger = Transport(
            "fz-client",
            cluster.secret,
            role=PeerRole.CLIENT,
            peers=peers,
            client_ssl=client_context(ca),
        )
        await intruder.start()
        await stranger.start()
        config = await cluster.configuration()
        targets = {m: shard_server_samples(config.num) for m in members}
        targets[controller] = controller_samples()
        before = await _statuses(stranger, members)
        history: list[Operation] = []
        stop = asyncio.Event()
        clients = [cluster.client(client_id=f"w{i}") for i in range(WORKERS)]
        started = time.monotonic()
        try:
            for client in clients:
                await client.start()
            workers = [
                asyncio.create_task(_worker(f"w{i}", c, random.Random(rng.random()), history, stop))
                for i, c in enumerate(clients)
            ]
            node_traffic = HostileTraffic(
                random.Random(rng.random()), group=1, members=members, sender=INTRUDER
            )
            client_traffic = HostileTraffic(
                random.Random(rng.random()), group=1, members=members, sender="fz-client"
            )
            for _ in range(RAFT_FROM_CLIENT):
                stranger.send_raft(1, client_traffic.raft_message())
            calls = await asyncio.gather(
                _raft_flood(intruder, node_traffic, RAFT_MESSAGES),
                _calls(intruder, node_traffic, targets, CALLS_FROM_NODE),
                _calls(stranger, client_traffic, targets, CALLS_FROM_CLIENT),
            )
            stop.set()
            await asyncio.gather(*workers)
            sent = intruder.stats.frames_sent + stranger.stats.frames_sent
            print(
                f"seed={seed}: {sent} hostile frames ({calls[1] + calls[2]} calls) in "
                f"{time.monotonic() - started:.1f} s; {len(history)} workload operations"
            )
            assert sent >= MIN_MESSAGES, f"only {sent} hostile frames went out (seed {seed})"
            await _check_group(
                cluster, stranger, members=members, before=before, history=history, seed=seed
            )
        finally:
            for client in clients:
                await client.close()
            await intruder.close()
            await stranger.close()


def _address(server: str) -> tuple[str, int]:
    host, _, port = server.rpartition(":")
    return host, int(port)


async def _check_group(
    cluster: ProcessCluster,
    probe: Transport,
    *,
    members: Sequence[str],
    before: Sequence[StatusReply],
    history: list[Operation],
    seed: int,
) -> None:
    async with cluster.client(client_id="final") as client:
        for key in KEYS:  # the group still serves, and every acknowledged write shows
            start = time.monotonic()
            value = await client.get(key, deadline_s=WAIT_S)
            history.append(Operation("final", KvOp("get", key), value, start, time.monotonic()))
    after = await _statuses(probe, members)
    assert not any(s.halted for s in after), f"seed {seed}: {after}"
    assert max(s.applied for s in after) > max(s.applied for s in before), f"seed {seed}"
    assert max(s.term for s in after) < 2**32, f"seed {seed}: a hostile term got in: {after}"
    assert sum(op.completed for op in history) >= 10, f"seed {seed}: the workload starved"
    result = check(kv_model, history, timeout=60)
    assert result.verdict is Verdict.LINEARIZABLE, f"seed {seed}: {result.explain()}"


# --- the control: a group that listens to strangers ------------------------------------

CONTROL_NODES: Final = ("n1", "n2", "n3")
CONTROL_TICK_S: Final = 0.02
CONTROL_MESSAGES: Final = 2_000


async def _control_group(mesh: Mesh, check_senders: bool) -> list[RaftHost[KVStateMachine]]:
    hosts = []
    for seed, node in enumerate(CONTROL_NODES):
        host = RaftHost(
            node,
            Membership(frozenset(CONTROL_NODES)),
            MemoryStorage(),
            KVStateMachine(),
            mesh[node].raft_sender(1),
            options=HostOptions(tick_interval_s=CONTROL_TICK_S, check_senders=check_senders),
            seed=seed,
            run_blocking=run_inline,
        )
        mesh[node].on_raft(1, host.deliver)
        hosts.append(host)
        await host.start()
    return hosts


def _leader(hosts: Sequence[RaftHost[KVStateMachine]]) -> RaftHost[KVStateMachine] | None:
    leaders = [h for h in hosts if h.status().role is Role.LEADER]
    return leaders[0] if len(leaders) == 1 else None


async def _traffic_against(check_senders: bool, seed: int) -> list[str]:
    """Run hostile Raft traffic from a non-member against an in-process group; what went
    wrong (the live test's checks)."""
    async with Mesh([*CONTROL_NODES, INTRUDER]) as mesh:
        hosts = await _control_group(mesh, check_senders)
        try:
            await eventually(mesh.all, lambda: _leader(hosts) is not None)
            first = _leader(hosts)
            assert first is not None
            traffic = HostileTraffic(
                random.Random(seed), group=1, members=CONTROL_NODES, sender=INTRUDER
            )
            await _raft_flood(mesh[INTRUDER], traffic, CONTROL_MESSAGES)
            await eventually(mesh.all, lambda: mesh[INTRUDER].stats.frames_sent >= CONTROL_MESSAGES)
            statuses = [h.status() for h in hosts]
        finally:
            for host in hosts:
                await host.stop()
    problems = []
    if any(s.halted for s in statuses):
        problems.append(f"halted: {[s.node_id for s in statuses if s.halted]}")
    if max(s.term for s in statuses) >= 2**32:
        problems.append(f"hostile term: {max(s.term for s in statuses)}")
    return problems


async def test_the_checks_catch_a_group_that_listens_to_strangers(seed: int) -> None:
    with_filter = await _traffic_against(True, seed)
    assert with_filter == [], f"seed {seed}: {with_filter}"
    without = await _traffic_against(False, seed)
    assert without, f"seed {seed}: hostile traffic did no harm to a group without the filter"
