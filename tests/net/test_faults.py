"""Fault rules on real connections: drop, delay and cut by node pair, direction, message
type and method, switched while the nodes run."""

from __future__ import annotations

import asyncio

import msgspec
import pytest

from shardwise.clock import ManualClock
from shardwise.errors import ConnectionLostError, RpcTimeoutError
from shardwise.net.faults import DROP, PASS, FaultAction, FaultInjector, FaultRule, Verdict
from shardwise.net.harness import TEST_SECRET, Mesh, eventually
from shardwise.net.rpc import CallContext, RpcMethod
from shardwise.net.timing import Backoff
from shardwise.net.transport import Transport
from shardwise.net.wire import RaftFrame, RpcRequest, RpcResponse
from shardwise.raft.messages import AppendEntries, Heartbeat, Message, VoteResponse


class Num(msgspec.Struct, frozen=True):
    n: int


ECHO = RpcMethod("echo", Num, Num)
SLOW = RpcMethod("slow", Num, Num)


async def echo(request: Num, context: CallContext) -> Num:
    return request


def hb(sender: str, to: str, term: int = 1) -> Heartbeat:
    return Heartbeat(term=term, sender=sender, to=to)


def app(sender: str, to: str, term: int = 1) -> AppendEntries:
    return AppendEntries(term=term, sender=sender, to=to, prev_index=0, prev_term=0)


class Inbox:
    """Every Raft message each node received, in order."""

    def __init__(self, mesh: Mesh) -> None:
        self.got: dict[str, list[Message]] = {node_id: [] for node_id in mesh.nodes}
        for node_id, node in mesh.nodes.items():
            node.on_raft(1, self.got[node_id].append)
            node.serve(ECHO, echo)
            node.serve(SLOW, echo)

    def __getitem__(self, node_id: str) -> list[Message]:
        return self.got[node_id]


# --- rules, sans-IO -------------------------------------------------------------------


def test_rules_match_pairs_directions_types_and_methods() -> None:
    frame = RaftFrame(group=1, message=app("a", "b"))
    call = RpcRequest(call_id=1, method="slow", timeout_ms=10, body=b"")
    one_way = FaultRule(FaultAction.DROP, "a", "b")
    assert one_way.matches("a", "b", frame) and not one_way.matches("b", "a", frame)
    both = FaultRule(FaultAction.DROP, "a", "b", both_ways=True)
    assert both.matches("b", "a", frame) and not both.matches("a", "c", frame)
    anyone_to_b = FaultRule(FaultAction.DROP, None, "b")
    assert anyone_to_b.matches("c", "b", frame) and not anyone_to_b.matches("b", "c", frame)
    appends = FaultRule(FaultAction.DROP, types=frozenset({AppendEntries}))
    assert appends.matches("a", "b", frame)
    assert not appends.matches("a", "b", RaftFrame(group=1, message=hb("a", "b")))
    wire_type = FaultRule(FaultAction.DROP, types=frozenset({RpcResponse}))
    assert wire_type.matches("a", "b", RpcResponse(call_id=1, body=b""))
    assert not wire_type.matches("a", "b", call)
    slow = FaultRule(FaultAction.DROP, methods=frozenset({"slow"}))
    assert slow.matches("a", "b", call) and not slow.matches("a", "b", frame)


def test_drop_beats_delay_and_the_longest_delay_wins() -> None:
    faults = FaultInjector()
    frame = RaftFrame(group=1, message=hb("a", "b"))
    assert faults.verdict("a", "b", frame) is PASS
    faults.delay(1.0, "a", "b")
    faults.delay(3.0, "a")
    assert faults.verdict("a", "b", frame) == Verdict(delay_s=3.0)
    handle = faults.drop("a", "b")
    assert faults.verdict("a", "b", frame) is DROP
    faults.remove(handle)
    assert faults.verdict("a", "b", frame) == Verdict(delay_s=3.0)
    faults.clear()
    assert faults.verdict("a", "b", frame) is PASS and faults.rules == ()


def test_rule_arguments_are_checked() -> None:
    with pytest.raises(ValueError):
        FaultRule(FaultAction.DELAY)
    with pytest.raises(ValueError):
        FaultRule(FaultAction.DROP, delay_s=1.0)


def test_listeners_hear_every_change() -> None:
    faults = FaultInjector()
    heard: list[int] = []
    unsubscribe = faults.subscribe(lambda: heard.append(len(faults.rules)))
    handle = faults.cut("a", "b")
    assert faults.is_cut("b", "a") and not faults.is_cut("a", "c")
    faults.remove(handle)
    unsubscribe()
    faults.drop()
    assert heard == [1, 0]


# --- on real connections --------------------------------------------------------------


async def test_drop_by_type_and_direction() -> None:
    faults = FaultInjector()
    async with Mesh(["a", "b"], faults=faults) as mesh:
        inbox = Inbox(mesh)
        faults.drop("a", "b", types=[AppendEntries])
        mesh["a"].send_raft(1, app("a", "b"))
        mesh["a"].send_raft(1, hb("a", "b"))
        mesh["b"].send_raft(1, app("b", "a"))
        await eventually(mesh.all, lambda: len(inbox["b"]) == 1 and len(inbox["a"]) == 1)
        assert inbox["b"] == [hb("a", "b")]
        assert inbox["a"] == [app("b", "a")]
        assert mesh["a"].stats.fault_dropped == 1


async def test_drop_by_pair_leaves_other_pairs_alone_and_toggles_at_run_time() -> None:
    faults = FaultInjector()
    async with Mesh(["a", "b", "c"], faults=faults) as mesh:
        inbox = Inbox(mesh)
        handle = faults.drop("a", "b", both_ways=True)
        for term in (1, 2):
            mesh["a"].send_raft(1, hb("a", "b", term))
            mesh["b"].send_raft(1, hb("b", "a", term))
            mesh["a"].send_raft(1, hb("a", "c", term))
            mesh["c"].send_raft(1, hb("c", "b", term))
        await eventually(mesh.all, lambda: len(inbox["c"]) == 2 and len(inbox["b"]) == 2)
        assert inbox["b"] == [hb("c", "b", 1), hb("c", "b", 2)]
        assert inbox["a"] == []
        faults.remove(handle)
        mesh["a"].send_raft(1, hb("a", "b", 3))
        mesh["b"].send_raft(1, hb("b", "a", 3))
        await eventually(mesh.all, lambda: len(inbox["a"]) == 1 and len(inbox["b"]) == 3)
        assert inbox["a"] == [hb("b", "a", 3)]
        assert inbox["b"][-1] == hb("a", "b", 3)


async def test_drop_by_method_makes_those_calls_time_out() -> None:
    clock = ManualClock()
    faults = FaultInjector()
    async with Mesh(["a", "b"], faults=faults, clock=clock) as mesh:
        Inbox(mesh)
        faults.drop("a", "b", methods=["slow"])
        assert await mesh["a"].call("b", ECHO, Num(1)) == Num(1)
        slow = asyncio.create_task(mesh["a"].call("b", SLOW, Num(2), timeout_s=3.0))
        await eventually(mesh.all, lambda: mesh["a"].stats.fault_dropped == 1)
        assert await mesh["a"].call("b", ECHO, Num(3)) == Num(3)
        clock.advance(3.0)
        with pytest.raises(RpcTimeoutError):
            await asyncio.wait_for(slow, 20)


async def test_dropping_replies_makes_calls_time_out() -> None:
    clock = ManualClock()
    faults = FaultInjector()
    async with Mesh(["a", "b"], faults=faults, clock=clock) as mesh:
        Inbox(mesh)
        faults.drop("b", "a", types=[RpcResponse])
        call = asyncio.create_task(mesh["a"].call("b", ECHO, Num(1), timeout_s=2.0))
        await eventually(mesh.all, lambda: mesh["b"].stats.fault_dropped == 1)
        clock.advance(2.0)
        with pytest.raises(RpcTimeoutError):
            await asyncio.wait_for(call, 20)


async def test_delay_holds_a_message_for_its_time_on_the_clock() -> None:
    clock = ManualClock()
    faults = FaultInjector()
    async with Mesh(["a", "b"], faults=faults, clock=clock) as mesh:
        inbox = Inbox(mesh)
        faults.delay(2.0, "a", "b", types=[Heartbeat])
        mesh["a"].send_raft(1, hb("a", "b"))
        mesh["a"].send_raft(1, app("a", "b"))  # not delayed: overtakes the heartbeat
        await eventually(mesh.all, lambda: len(inbox["b"]) == 1)
        assert inbox["b"] == [app("a", "b")]
        clock.advance(1.9)
        mesh["a"].send_raft(1, VoteResponse(term=1, sender="a", to="b", granted=True))
        await eventually(mesh.all, lambda: len(inbox["b"]) == 2)
        assert isinstance(inbox["b"][-1], VoteResponse)  # still no heartbeat
        clock.advance(0.1)
        await eventually(mesh.all, lambda: len(inbox["b"]) == 3)
        assert inbox["b"][2:] == [hb("a", "b")]
        assert mesh["a"].stats.fault_delayed == 1


async def test_cut_closes_the_connection_until_the_rule_is_removed() -> None:
    clock = ManualClock()
    faults = FaultInjector()
    backoff = Backoff(base_s=0.1, cap_s=0.1, max_attempts=1000)
    async with Mesh(["a", "b"], faults=faults, clock=clock, backoff=backoff) as mesh:
        inbox = Inbox(mesh)
        a, b = mesh["a"], mesh["b"]
        started = asyncio.Event()

        async def stuck(request: Num, context: CallContext) -> Num:
            started.set()
            await asyncio.Event().wait()
            raise AssertionError("unreachable")

        b.serve(SLOW, stuck)
        a.send_raft(1, hb("a", "b", 1))
        await eventually(mesh.all, lambda: len(inbox["b"]) == 1)
        call = asyncio.create_task(a.call("b", SLOW, Num(1), timeout_s=60))
        await asyncio.wait_for(started.wait(), 20)
        handle = faults.cut("a", "b")
        with pytest.raises(ConnectionLostError):
            await asyncio.wait_for(call, 20)
        await eventually(mesh.all, lambda: a.connection_count == b.connection_count == 0)
        a.send_raft(1, hb("a", "b", 2))
        failures = a.stats.dial_failures
        clock.advance(0.1)
        await eventually(mesh.all, lambda: a.stats.dial_failures > failures)
        assert len(inbox["b"]) == 1  # nothing crosses a cut
        faults.remove(handle)
        clock.advance(0.1)
        await eventually(mesh.all, lambda: len(inbox["b"]) == 2)
        assert inbox["b"][-1] == hb("a", "b", 2)


async def test_a_cut_seen_only_by_the_acceptor_refuses_the_dialer() -> None:
    clock = ManualClock()
    b_faults = FaultInjector()
    b_faults.cut("b", "a")  # only b applies this rule
    got: list[Message] = []
    async with Transport("b", TEST_SECRET, clock=clock, faults=b_faults) as b:
        b.on_raft(1, got.append)
        async with Transport("a", TEST_SECRET, clock=clock, peers={"b": b.address}) as a:
            a.send_raft(1, hb("a", "b"))
            await eventually([a, b], lambda: b.stats.connections_refused == 1)
            await eventually([a, b], lambda: a.stats.dial_failures == 1)
            assert got == [] and a.stats.auth_failures == b.stats.auth_failures == 0
