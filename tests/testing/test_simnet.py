"""The simulated network: calls and Raft messages between SimTransports on virtual time,
the real transport's typed errors, faults, determinism, and a real Raft group on top.

Every test runs on a VirtualTimeLoop, so timeouts of seconds take no real time and the
virtual times asserted below are exact.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import replace

import msgspec
import pytest

from shardwise.errors import (
    ConnectionLostError,
    RemoteCallError,
    RpcOverloadedError,
    RpcTimeoutError,
    TransportClosedError,
    UnknownPeerError,
)
from shardwise.model.kv import KVResult, Put
from shardwise.net.endpoint import Endpoint
from shardwise.net.limits import Limits
from shardwise.net.rpc import CallContext, RpcMethod
from shardwise.net.transport import Transport
from shardwise.net.wire import PeerRole
from shardwise.raft import Membership, Message, Role
from shardwise.raft.host import RaftHost
from shardwise.raft.kv import KVStateMachine, decode_result, encode_command
from shardwise.raft.messages import Heartbeat
from shardwise.storage import MemoryStorage
from shardwise.testing.simnet import (
    DEFAULT_FAULTS,
    DEFAULT_MAX_DELAY_S,
    DEFAULT_MIN_DELAY_S,
    SimNetwork,
    TraceEvent,
)
from shardwise.testing.simtransport import SimTransport
from shardwise.testing.virtualtime import run_virtual

GROUP = 7
ROUND_TRIP_MAX_S = 2 * DEFAULT_MAX_DELAY_S
POLL_S = 0.01
"""Virtual seconds between checks of a condition (polling costs no real time here)."""
RAFT_WAIT_S = 20.0
"""Virtual seconds allowed for an election or a commit: ten election timeouts."""
REAL_BUDGET_S = 10.0


class Echo(msgspec.Struct, frozen=True):
    text: str
    delay_s: float = 0.0
    fail: bool = False


class EchoReply(msgspec.Struct, frozen=True):
    text: str
    by: str
    caller: str


class Number(msgspec.Struct, frozen=True):
    n: int


ECHO = RpcMethod("test.echo", Echo, EchoReply)
MISSING = RpcMethod("test.missing", Echo, EchoReply)
ECHO_WRONG_TYPE = RpcMethod("test.echo", Number, EchoReply)
"""The callee's method name with a request type it does not accept."""


class Node:
    """A SimTransport that answers ECHO and records the Raft messages it receives."""

    def __init__(self, name: str, network: SimNetwork) -> None:
        self.name = name
        self.transport = SimTransport(name, network)
        self.raft: list[Message] = []
        self.handled: list[tuple[Echo, CallContext]] = []
        self.replies: list[EchoReply] = []
        self.transport.serve(ECHO, self.echo)
        self.transport.on_raft(GROUP, self.raft.append)

    async def echo(self, request: Echo, context: CallContext) -> EchoReply:
        self.handled.append((request, context))
        if request.delay_s:
            await asyncio.sleep(request.delay_s)
        if request.fail:
            raise RuntimeError("boom")
        reply = EchoReply(request.text, by=self.name, caller=context.peer_id)
        self.replies.append(reply)
        return reply

    @staticmethod
    async def echo_once(request: Echo, context: CallContext) -> EchoReply:
        await asyncio.sleep(request.delay_s)
        return EchoReply(request.text, by="b", caller=context.peer_id)

    def heartbeat(self, to: str, commit: int = 0) -> None:
        self.transport.send_raft(GROUP, Heartbeat(term=1, sender=self.name, to=to, commit=commit))


async def start_nodes(network: SimNetwork, names: Iterable[str]) -> dict[str, Node]:
    nodes = {name: Node(name, network) for name in names}
    for node in nodes.values():
        await node.transport.start()
    return nodes


def now() -> float:
    return asyncio.get_running_loop().time()


async def until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = now() + timeout_s
    while not condition():
        if now() >= deadline:
            raise AssertionError(f"not within {timeout_s} virtual s: {what}")
        await asyncio.sleep(POLL_S)


async def settle() -> None:
    """Let every message on the wire arrive."""
    await asyncio.sleep(1.0)


async def settle_briefly() -> None:
    """Longer than one message takes, shorter than the tests' slow handlers."""
    await asyncio.sleep(2 * DEFAULT_MAX_DELAY_S)


# --- calls -------------------------------------------------------------------------------


@pytest.mark.virtual_time
async def test_a_call_round_trips_as_an_independent_copy(rng: random.Random) -> None:
    nodes = await start_nodes(SimNetwork(rng), ["a", "b"])
    started = now()
    reply = await nodes["a"].transport.call("b", ECHO, Echo("hi"), timeout_s=2.0)
    elapsed = now() - started
    assert reply == EchoReply("hi", by="b", caller="a")
    assert reply is not nodes["b"].replies[0]  # decoded off the "wire", not shared
    assert 2 * DEFAULT_MIN_DELAY_S <= elapsed <= ROUND_TRIP_MAX_S
    request, context = nodes["b"].handled[0]
    assert request == Echo("hi")
    assert (context.peer_id, context.peer_role) == ("a", PeerRole.NODE)
    assert started + 2.0 <= context.deadline <= started + 2.0 + DEFAULT_MAX_DELAY_S


@pytest.mark.virtual_time
async def test_callee_failures_arrive_as_the_real_transports_typed_errors(
    rng: random.Random,
) -> None:
    nodes = await start_nodes(SimNetwork(rng), ["a", "b"])
    a = nodes["a"].transport
    with pytest.raises(RemoteCallError, match="RuntimeError: boom") as failed:
        await a.call("b", ECHO, Echo("x", fail=True))
    assert failed.value.code == "internal"
    with pytest.raises(RemoteCallError) as failed:
        await a.call("b", MISSING, Echo("x"))
    assert failed.value.code == "unknown_method"
    with pytest.raises(RemoteCallError) as failed:
        await a.call("b", ECHO_WRONG_TYPE, Number(1))
    assert failed.value.code == "bad_request"

    started = now()
    with pytest.raises(RpcTimeoutError):
        await a.call("b", ECHO, Echo("slow", delay_s=30.0), timeout_s=1.5)
    assert now() - started == pytest.approx(1.5)


@pytest.mark.virtual_time
async def test_calls_are_refused_locally_as_the_real_transport_refuses_them(
    rng: random.Random,
) -> None:
    network = SimNetwork(rng)
    a = SimTransport("a", network, limits=Limits(max_pending_calls=1))
    await Node("b", network).transport.start()
    with pytest.raises(TransportClosedError):
        await a.call("b", ECHO, Echo("x"))
    await a.start()
    with pytest.raises(UnknownPeerError):
        await a.call("nobody", ECHO, Echo("x"))
    with pytest.raises(UnknownPeerError):
        await a.call("a", ECHO, Echo("x"))
    with pytest.raises(ValueError, match="timeout_s"):
        await a.call("b", ECHO, Echo("x"), timeout_s=0)
    first = asyncio.create_task(a.call("b", ECHO, Echo("x")))
    await asyncio.sleep(0)
    with pytest.raises(RpcOverloadedError):  # max_pending_calls=1
        await a.call("b", ECHO, Echo("y"))
    assert (await first).text == "x"
    await a.close()
    with pytest.raises(TransportClosedError):
        await a.call("b", ECHO, Echo("x"))


@pytest.mark.virtual_time
async def test_a_callee_refuses_calls_beyond_its_handler_limit(rng: random.Random) -> None:
    network = SimNetwork(rng)
    a = SimTransport("a", network)
    b = SimTransport("b", network, limits=Limits(max_handlers_per_link=1))
    b.serve(ECHO, Node.echo_once)
    await a.start()
    await b.start()
    slow = asyncio.create_task(a.call("b", ECHO, Echo("slow", delay_s=1.0)))
    await settle_briefly()
    with pytest.raises(RpcOverloadedError, match="overloaded"):
        await a.call("b", ECHO, Echo("fast"))
    assert (await slow).text == "slow"


@pytest.mark.virtual_time
async def test_closing_answers_running_calls_and_fails_its_own(rng: random.Random) -> None:
    network = SimNetwork(rng)
    nodes = await start_nodes(network, ["a", "b", "c"])
    to_b = asyncio.create_task(nodes["a"].transport.call("b", ECHO, Echo("x", delay_s=60.0)))
    from_b = asyncio.create_task(nodes["b"].transport.call("c", ECHO, Echo("y", delay_s=60.0)))
    await settle()
    await nodes["b"].transport.close()
    with pytest.raises(RemoteCallError) as failed:
        await to_b
    assert failed.value.code == "shutting_down"
    with pytest.raises(TransportClosedError):
        await from_b
    # Closed, it receives nothing: a new call to it times out, as to a dead process.
    with pytest.raises(RpcTimeoutError):
        await nodes["a"].transport.call("b", ECHO, Echo("z"), timeout_s=1.0)


@pytest.mark.virtual_time
async def test_a_down_node_breaks_calls_in_flight_and_times_out_new_ones(
    rng: random.Random,
) -> None:
    network = SimNetwork(rng)
    nodes = await start_nodes(network, ["a", "b"])
    a = nodes["a"].transport
    in_flight = asyncio.create_task(a.call("b", ECHO, Echo("x", delay_s=60.0), timeout_s=30.0))
    await settle()
    went_down = now()
    network.down("b")
    with pytest.raises(ConnectionLostError):
        await in_flight
    assert now() - went_down <= DEFAULT_MAX_DELAY_S  # promptly, not at the deadline

    started = now()
    with pytest.raises(RpcTimeoutError):
        await a.call("b", ECHO, Echo("y"), timeout_s=3.0)
    assert now() - started == pytest.approx(3.0)
    assert network.is_down("b")

    network.up("b")
    assert (await a.call("b", ECHO, Echo("back"))).text == "back"


@pytest.mark.virtual_time
async def test_partitions_time_calls_out_until_healed(rng: random.Random) -> None:
    network = SimNetwork(rng)
    nodes = await start_nodes(network, ["a", "b", "c"])
    a, b = nodes["a"].transport, nodes["b"].transport
    network.partition(["a", "b"], ["c"])
    assert (await a.call("b", ECHO, Echo("same side"))).by == "b"
    with pytest.raises(RpcTimeoutError):
        await a.call("c", ECHO, Echo("across"), timeout_s=1.0)
    network.heal()
    assert (await a.call("c", ECHO, Echo("healed"))).by == "c"

    network.isolate("c")
    with pytest.raises(RpcTimeoutError):
        await b.call("c", ECHO, Echo("isolated"), timeout_s=1.0)
    assert (await b.call("a", ECHO, Echo("others"))).by == "a"
    network.heal()
    assert (await b.call("c", ECHO, Echo("healed"))).by == "c"


@pytest.mark.virtual_time
async def test_a_cut_loses_what_is_already_on_the_link(rng: random.Random) -> None:
    network = SimNetwork(rng)
    nodes = await start_nodes(network, ["a", "b"])
    nodes["a"].heartbeat("b")
    network.cut_one_way("a", "b")
    await settle()
    assert nodes["b"].raft == []
    assert network.stats["dropped_cut"] == 1


# --- raft messages and faults ------------------------------------------------------------


@pytest.mark.virtual_time
async def test_raft_messages_arrive_in_order_on_each_link_unless_reordering(
    rng: random.Random,
) -> None:
    network = SimNetwork(rng)
    nodes = await start_nodes(network, ["a", "b"])
    for commit in range(200):
        nodes["a"].heartbeat("b", commit)
    await settle()
    assert [m.commit for m in nodes["b"].raft if isinstance(m, Heartbeat)] == list(range(200))

    network.set_faults(reorder=True)
    nodes["b"].raft.clear()
    for commit in range(200):
        nodes["a"].heartbeat("b", commit)
    await settle()
    commits = [m.commit for m in nodes["b"].raft if isinstance(m, Heartbeat)]
    assert sorted(commits) == list(range(200))
    assert commits != list(range(200))


@pytest.mark.virtual_time
async def test_messages_beyond_the_in_flight_limit_are_dropped(rng: random.Random) -> None:
    network = SimNetwork(rng, max_in_flight=5)
    nodes = await start_nodes(network, ["a", "b"])
    for commit in range(8):
        nodes["a"].heartbeat("b", commit)
    assert network.in_flight() == 5
    await settle()
    assert [m.commit for m in nodes["b"].raft if isinstance(m, Heartbeat)] == list(range(5))
    assert network.stats["dropped_overflow"] == 3


@pytest.mark.virtual_time
async def test_a_message_to_oneself_is_delivered_locally(rng: random.Random) -> None:
    network = SimNetwork(rng)
    nodes = await start_nodes(network, ["a"])
    nodes["a"].heartbeat("a")
    await asyncio.sleep(0)
    assert len(nodes["a"].raft) == 1
    assert network.stats["sent"] == 0


@pytest.mark.virtual_time
async def test_the_drop_rate_drops_that_share_of_messages(rng: random.Random) -> None:
    network = SimNetwork(rng, faults=replace(DEFAULT_FAULTS, drop=0.3))
    nodes = await start_nodes(network, ["a", "b"])
    for _ in range(1000):
        nodes["a"].heartbeat("b")
    await settle()
    assert 600 <= len(nodes["b"].raft) <= 800
    assert network.stats["dropped_random"] == 1000 - len(nodes["b"].raft)

    network.set_faults(drop=1.0)
    with pytest.raises(RpcTimeoutError):
        await nodes["a"].transport.call("b", ECHO, Echo("lost"), timeout_s=1.0)


@pytest.mark.virtual_time
async def test_duplicates_are_raft_messages_only(rng: random.Random) -> None:
    network = SimNetwork(rng, faults=replace(DEFAULT_FAULTS, duplicate=1.0))
    nodes = await start_nodes(network, ["a", "b"])
    for commit in range(10):
        nodes["a"].heartbeat("b", commit)
    await settle()
    assert len(nodes["b"].raft) == 20
    assert nodes["b"].raft[0] == nodes["b"].raft[1]
    assert nodes["b"].raft[0] is not nodes["b"].raft[1]  # each copy decoded on its own

    await nodes["a"].transport.call("b", ECHO, Echo("once"))
    await settle()
    assert len(nodes["b"].handled) == 1


@pytest.mark.virtual_time
async def test_cut_one_way_is_one_way(rng: random.Random) -> None:
    network = SimNetwork(rng)
    nodes = await start_nodes(network, ["a", "b"])
    network.cut_one_way("a", "b")
    nodes["a"].heartbeat("b")
    nodes["b"].heartbeat("a")
    await settle()
    assert nodes["b"].raft == []
    assert [m.sender for m in nodes["a"].raft] == ["b"]
    assert not network.linked("a", "b")
    assert network.linked("b", "a")
    # A call needs both ways: the request, then the reply.
    with pytest.raises(RpcTimeoutError):
        await nodes["b"].transport.call("a", ECHO, Echo("no reply"), timeout_s=1.0)
    assert len(nodes["a"].handled) == 1


@pytest.mark.virtual_time
async def test_extra_delay_slows_the_network_at_run_time(rng: random.Random) -> None:
    network = SimNetwork(rng)
    nodes = await start_nodes(network, ["a", "b"])
    network.set_faults(extra_delay=(0.5, 0.5))
    started = now()
    await nodes["a"].transport.call("b", ECHO, Echo("slow"), timeout_s=5.0)
    assert 1.0 <= now() - started <= 1.0 + ROUND_TRIP_MAX_S
    with pytest.raises(ValueError, match="probabilities"):
        network.set_faults(drop=1.5)


@pytest.mark.virtual_time
async def test_addresses_and_restarts(rng: random.Random) -> None:
    network = SimNetwork(rng)
    first = SimTransport("10.0.0.1:7000", network)
    with pytest.raises(RuntimeError, match="not listening"):
        _ = first.address
    await first.start()
    assert first.address == ("10.0.0.1", 7000)
    plain = SimTransport("n1", network)
    await plain.start()
    assert plain.address == ("sim", 0)
    plain.set_peer("10.0.0.1:7000", ("10.0.0.1", 7000))
    with pytest.raises(ValueError, match="own peer"):
        plain.set_peer("n1", ("sim", 0))
    with pytest.raises(ValueError, match="running"):
        SimTransport("n1", network)
    await plain.close()
    again = SimTransport("n1", network)  # a restarted process
    assert network.transport("n1") is again
    assert network.nodes() == ["10.0.0.1:7000", "n1"]
    await first.close()


def test_the_sim_transport_has_the_real_transports_surface() -> None:
    """mypy checks that both classes satisfy Endpoint; this checks the names."""
    classes: list[type[Endpoint]] = [Transport, SimTransport]
    members = [
        "start",
        "close",
        "address",
        "set_peer",
        "serve",
        "call",
        "on_raft",
        "off_raft",
        "raft_sender",
        "send_raft",
    ]
    for cls in classes:
        assert all(hasattr(cls, member) for member in members)


# --- determinism -------------------------------------------------------------------------


async def chatter(seed: int) -> list[TraceEvent]:
    """Calls and Raft messages among four nodes under every kind of fault."""
    rng = random.Random(seed)
    network = SimNetwork(
        rng,
        faults=replace(DEFAULT_FAULTS, drop=0.1, duplicate=0.1, reorder=True),
        trace_limit=100_000,
    )
    names = ["a", "b", "c", "d"]
    nodes = await start_nodes(network, names)

    async def client(name: str) -> None:
        for i in range(20):
            peer = rng.choice([n for n in names if n != name])
            nodes[name].heartbeat(peer, i)
            with contextlib.suppress(RpcTimeoutError):
                await nodes[name].transport.call(peer, ECHO, Echo(str(i)), timeout_s=0.05)

    network.cut_one_way("a", "b")
    await asyncio.gather(*(client(name) for name in names))
    await settle()
    return list(network.trace)


def test_the_same_seed_replays_the_same_deliveries() -> None:
    first = run_virtual(chatter(1))
    assert any(event.event == "drop:random" for event in first)
    assert any(event.event == "drop:cut" for event in first)
    assert run_virtual(chatter(1)) == first
    assert run_virtual(chatter(2)) != first


# --- a real Raft group -------------------------------------------------------------------


def raft_leader(hosts: dict[str, RaftHost[KVStateMachine]], among: Iterable[str]) -> str | None:
    """The leader that every host in ``among`` agrees on, if any."""
    names = list(among)
    leaders = [n for n in names if hosts[n].status().role is Role.LEADER]
    if len(leaders) != 1:
        return None
    leader = leaders[0]
    return leader if all(hosts[n].status().leader == leader for n in names) else None


def put(key: str, value: str, seq: int) -> bytes:
    return encode_command(Put(key, value), client_id="client", seq=seq)


async def raft_failover(seed: int, network_out: list[SimNetwork] | None = None) -> None:
    """Three RaftHosts on SimTransports: elect, commit, lose the leader's node, elect
    again among the other two, commit again."""
    rng = random.Random(seed)
    network = SimNetwork(rng, trace_limit=100_000)
    if network_out is not None:
        network_out.append(network)
    names = ["n1", "n2", "n3"]
    membership = Membership(frozenset(names))
    transports: dict[str, SimTransport] = {}
    hosts: dict[str, RaftHost[KVStateMachine]] = {}
    for name in names:
        transport = SimTransport(name, network)
        await transport.start()
        host = RaftHost(
            name,
            membership,
            MemoryStorage(),
            KVStateMachine(),
            transport.raft_sender(GROUP),
            seed=rng.getrandbits(32),
            incarnation=rng.randbytes(8),
        )  # the default clock and to_thread runner run on virtual time
        transport.on_raft(GROUP, host.deliver)
        transports[name], hosts[name] = transport, host
    for host in hosts.values():
        await host.start()
    try:
        await until(lambda: raft_leader(hosts, names) is not None, RAFT_WAIT_S, "a leader")
        first = raft_leader(hosts, names)
        assert first is not None
        result = await hosts[first].propose(put("k", "v1", 1), timeout_s=RAFT_WAIT_S)
        assert decode_result(result) == KVResult()
        await until(
            lambda: all(h.state_machine.get("k") == "v1" for h in hosts.values()),
            RAFT_WAIT_S,
            "v1 applied everywhere",
        )

        old_term = hosts[first].status().term
        network.down(first)
        survivors = [n for n in names if n != first]
        await until(lambda: raft_leader(hosts, survivors) is not None, RAFT_WAIT_S, "a new leader")
        second = raft_leader(hosts, survivors)
        assert second is not None
        assert hosts[second].status().term > old_term
        result = await hosts[second].propose(put("k", "v2", 2), timeout_s=RAFT_WAIT_S)
        assert decode_result(result) == KVResult()
        await until(
            lambda: all(hosts[n].state_machine.get("k") == "v2" for n in survivors),
            RAFT_WAIT_S,
            "v2 applied by the survivors",
        )
        assert hosts[first].state_machine.get("k") == "v1"  # down: it heard nothing
    finally:
        for host in hosts.values():
            await host.stop()
        for transport in transports.values():
            await transport.close()


@pytest.mark.virtual_time
async def test_a_raft_group_elects_commits_and_fails_over(seed: int) -> None:
    started = time.monotonic()
    networks: list[SimNetwork] = []
    await raft_failover(seed, networks)
    assert time.monotonic() - started < REAL_BUDGET_S
    assert networks[0].stats["delivered"] > 0
    assert networks[0].stats["dropped_down"] > 0


def test_a_raft_run_replays_exactly_from_its_seed() -> None:
    traces = []
    for _ in range(2):
        networks: list[SimNetwork] = []
        run_virtual(raft_failover(11, networks))
        traces.append(list(networks[0].trace))
    assert traces[0] == traces[1]
    assert len(traces[0]) > 100
