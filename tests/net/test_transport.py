"""The transport on real loopback sockets: Raft routing, calls, ownership of duplicate
connections, and shutdown (reconnects and limits: ``test_reconnect_limits.py``).

Time that matters (deadlines, back-off) runs on a ManualClock moved by the test; every
other wait is for a condition, bounded by ``eventually``.
"""

from __future__ import annotations

import asyncio

import msgspec
import pytest

from shardwise.clock import ManualClock
from shardwise.errors import (
    ConnectionLostError,
    FrameTooLargeError,
    InvalidMessageError,
    RemoteCallError,
    RpcTimeoutError,
    TransportClosedError,
    UnknownPeerError,
)
from shardwise.net.frames import MAX_FRAME_BYTES
from shardwise.net.harness import Mesh, eventually
from shardwise.net.loop import loop_factory, run, uses_uvloop
from shardwise.net.rpc import CallContext, RpcMethod
from shardwise.raft.messages import AppendEntries, Heartbeat, InstallSnapshot, Message
from shardwise.storage.types import LogEntry, SnapshotMeta


class Echo(msgspec.Struct, frozen=True):
    n: int
    text: str = ""


class Other(msgspec.Struct, frozen=True):
    blob: bytes


ECHO = RpcMethod("echo", Echo, Echo)
WAIT = RpcMethod("wait", Echo, Echo)
FAIL = RpcMethod("fail", Echo, Echo)
ECHO_AS_OTHER = RpcMethod("echo", Other, Other)  # same name, other types: a bad request
BIG = RpcMethod("big", Echo, Other)


class Countdown:
    """Set once ``tick`` has been called ``count`` times: for conditions that happen in
    handlers rather than in the transport."""

    def __init__(self, count: int) -> None:
        self.left = count
        self.done = asyncio.Event()

    def tick(self) -> None:
        self.left -= 1
        if self.left <= 0:
            self.done.set()

    async def wait(self) -> None:
        await asyncio.wait_for(self.done.wait(), 20)


def hb(sender: str, to: str, term: int = 1) -> Heartbeat:
    return Heartbeat(term=term, sender=sender, to=to, commit=term)


async def echo(request: Echo, context: CallContext) -> Echo:
    return Echo(request.n + 1, f"{request.text}@{context.peer_id}")


async def fail(request: Echo, context: CallContext) -> Echo:
    raise RuntimeError(f"boom {request.n}")


async def big(request: Echo, context: CallContext) -> Other:
    return Other(bytes(MAX_FRAME_BYTES))


# --- raft ---------------------------------------------------------------------------


async def test_raft_messages_for_two_groups_share_one_connection() -> None:
    async with Mesh(["a", "b"]) as mesh:
        a, b = mesh["a"], mesh["b"]
        got: dict[int, list[Message]] = {1: [], 2: []}
        b.on_raft(1, got[1].append)
        b.on_raft(2, got[2].append)
        a.on_raft(1, got[1].append)
        send1, send2 = a.raft_sender(1), a.raft_sender(2)
        entries = (LogEntry(index=5, term=2, data=b"\x00cmd"),)
        for term in range(1, 6):
            send1(hb("a", "b", term))
            send2(
                AppendEntries(
                    term=term, sender="a", to="b", prev_index=4, prev_term=1, entries=entries
                )
            )
        await eventually(mesh.all, lambda: len(got[1]) + len(got[2]) == 10)
        assert got[1] == [hb("a", "b", t) for t in range(1, 6)]
        assert [m.term for m in got[2]] == [1, 2, 3, 4, 5]
        assert all(isinstance(m, AppendEntries) and m.entries == entries for m in got[2])
        # and back the other way, over the same connection
        b.send_raft(1, hb("b", "a"))
        await eventually(mesh.all, lambda: len(got[1]) == 6)
        assert a.stats.connections_dialed == 1 and a.stats.connections_accepted == 0
        assert b.stats.connections_accepted == 1 and b.stats.connections_dialed == 0
        assert a.connection_count == b.connection_count == 1


async def test_big_raft_messages_cross_and_too_big_ones_are_dropped() -> None:
    async with Mesh(["a", "b"]) as mesh:
        got: list[Message] = []
        mesh["b"].on_raft(1, got.append)
        meta = SnapshotMeta(index=10, term=2)
        chunk = bytes(range(256)) * 4096  # 1 MiB
        mesh["a"].send_raft(
            1,
            InstallSnapshot(
                term=2,
                sender="a",
                to="b",
                meta=meta,
                offset=0,
                total=3 << 20,
                data=chunk,
                done=False,
            ),
        )
        huge = InstallSnapshot(
            term=2,
            sender="a",
            to="b",
            meta=meta,
            offset=0,
            total=1,
            data=bytes(MAX_FRAME_BYTES),
            done=True,
        )
        mesh["a"].send_raft(1, huge)
        assert mesh["a"].stats.raft_dropped_too_large == 1
        await eventually(mesh.all, lambda: len(got) == 1)
        assert isinstance(got[0], InstallSnapshot) and got[0].data == chunk


async def test_unknown_groups_misaddressed_and_unroutable_messages_are_counted() -> None:
    async with Mesh(["a", "b"]) as mesh:
        a, b = mesh["a"], mesh["b"]
        got: list[Message] = []
        b.on_raft(1, got.append)
        a.send_raft(9, hb("a", "b"))  # no handler for group 9 at b
        a.send_raft(1, hb("c", "b"))  # claims to come from c over a's connection
        a.send_raft(1, hb("a", "nobody"))  # no such peer
        a.send_raft(1, hb("a", "b", 2))
        await eventually(mesh.all, lambda: len(got) == 1)
        assert got == [hb("a", "b", 2)]
        assert b.stats.raft_dropped_unknown_group == 1
        assert b.stats.raft_dropped_misaddressed == 1
        assert a.stats.raft_dropped_unroutable == 1


async def test_a_failing_raft_handler_is_counted_and_does_not_break_the_connection() -> None:
    async with Mesh(["a", "b"]) as mesh:
        got: list[Message] = []

        def flaky(message: Message) -> None:
            if message.term == 1:
                raise RuntimeError("handler bug")
            got.append(message)

        mesh["b"].on_raft(1, flaky)
        mesh["a"].send_raft(1, hb("a", "b", 1))
        mesh["a"].send_raft(1, hb("a", "b", 2))
        await eventually(mesh.all, lambda: len(got) == 1)
        assert mesh["b"].stats.raft_handler_errors == 1


async def test_messages_to_oneself_are_delivered_locally() -> None:
    async with Mesh(["a"]) as mesh:
        got: list[Message] = []
        mesh["a"].on_raft(1, got.append)
        mesh["a"].send_raft(1, hb("a", "a"))
        await eventually(mesh.all, lambda: len(got) == 1)
        assert mesh["a"].connection_count == 0


# --- calls ----------------------------------------------------------------------------


async def test_calls_in_flight_at_once_are_answered_out_of_order() -> None:
    async with Mesh(["a", "b"]) as mesh:
        release: dict[int, asyncio.Event] = {n: asyncio.Event() for n in range(20)}
        started = Countdown(20)

        async def wait(request: Echo, context: CallContext) -> Echo:
            started.tick()
            await release[request.n].wait()
            return Echo(request.n * 10)

        mesh["b"].serve(WAIT, wait)
        calls = [asyncio.create_task(mesh["a"].call("b", WAIT, Echo(n))) for n in range(20)]
        await started.wait()
        done_order: list[int] = []
        for n in reversed(range(20)):
            release[n].set()
            done_order.append((await calls[n]).n)
        assert done_order == [n * 10 for n in reversed(range(20))]
        assert [c.result() for c in calls] == [Echo(n * 10) for n in range(20)]


async def test_a_call_reaches_the_handler_with_the_callers_identity() -> None:
    async with Mesh(["a", "b"]) as mesh:
        mesh["b"].serve(ECHO, echo)
        assert await mesh["a"].call("b", ECHO, Echo(1, "hi")) == Echo(2, "hi@a")
        client = await mesh.client("tool-1")
        assert await client.call("b", ECHO, Echo(5, "x")) == Echo(6, "x@tool-1")
        assert mesh["b"].stats.connections_accepted == 2


async def test_a_call_past_its_deadline_times_out_and_the_callee_gives_up() -> None:
    clock = ManualClock()
    async with Mesh(["a", "b"], clock=clock) as mesh:
        started = asyncio.Event()
        cancelled = asyncio.Event()

        async def stuck(request: Echo, context: CallContext) -> Echo:
            started.set()
            assert context.deadline == pytest.approx(clock.now() + 1.5)
            try:
                await asyncio.Event().wait()
            finally:
                cancelled.set()
            raise AssertionError("unreachable")

        mesh["b"].serve(WAIT, stuck)
        call = asyncio.create_task(mesh["a"].call("b", WAIT, Echo(1), timeout_s=1.5))
        await asyncio.wait_for(started.wait(), 20)
        clock.advance(1.0)
        await asyncio.sleep(0)
        assert not call.done()
        clock.advance(0.5)
        with pytest.raises(RpcTimeoutError):
            await asyncio.wait_for(call, 20)
        await asyncio.wait_for(cancelled.wait(), 20)  # the callee's own deadline fired
        await eventually(mesh.all, lambda: mesh["a"].stats.rpc_late_replies == 1)
        assert mesh["a"].stats.rpc_timeouts == 1


async def test_callee_failures_are_typed_errors() -> None:
    async with Mesh(["a", "b"]) as mesh:
        mesh["b"].serve(ECHO, echo)
        mesh["b"].serve(FAIL, fail)
        mesh["b"].serve(BIG, big)
        with pytest.raises(RemoteCallError) as unknown:
            await mesh["a"].call("b", WAIT, Echo(1))
        assert unknown.value.code == "unknown_method"
        with pytest.raises(RemoteCallError) as bad:
            await mesh["a"].call("b", ECHO_AS_OTHER, Other(b"x"))
        assert bad.value.code == "bad_request"
        with pytest.raises(RemoteCallError) as internal:
            await mesh["a"].call("b", FAIL, Echo(3))
        assert internal.value.code == "internal" and "boom 3" in internal.value.message
        with pytest.raises(RemoteCallError) as too_big:
            await mesh["a"].call("b", BIG, Echo(3))
        assert too_big.value.code == "internal"
        assert mesh["b"].stats.rpc_handler_errors == 1
        # the connection survived all of it
        assert await mesh["a"].call("b", ECHO, Echo(1)) == Echo(2, "@a")


async def test_a_response_of_the_wrong_type_is_an_invalid_message() -> None:
    async with Mesh(["a", "b"]) as mesh:
        mesh["b"].serve(ECHO, echo)
        wrong = RpcMethod("echo", Echo, Other)
        with pytest.raises(InvalidMessageError):
            await mesh["a"].call("b", wrong, Echo(1))


async def test_call_argument_errors() -> None:
    async with Mesh(["a", "b"]) as mesh:
        with pytest.raises(UnknownPeerError):
            await mesh["a"].call("zz", ECHO, Echo(1))
        with pytest.raises(ValueError):
            await mesh["a"].call("b", ECHO, Echo(1), timeout_s=0)
        with pytest.raises(FrameTooLargeError):
            await mesh["a"].call("b", ECHO, Echo(1, "x" * MAX_FRAME_BYTES))
        assert mesh["a"].connection_count == 0  # nothing was sent


# --- ownership ------------------------------------------------------------------------


async def test_two_nodes_dialling_each_other_end_with_one_connection() -> None:
    for _ in range(5):  # the race may come out differently from run to run
        await dial_each_other()


async def dial_each_other() -> None:
    async with Mesh(["a", "b"]) as mesh:
        a, b = mesh["a"], mesh["b"]
        got_a: list[Message] = []
        got_b: list[Message] = []
        a.on_raft(1, got_a.append)
        b.on_raft(1, got_b.append)
        a.serve(ECHO, echo)
        b.serve(ECHO, echo)
        a.send_raft(1, hb("a", "b"))
        b.send_raft(1, hb("b", "a"))
        calls = [
            asyncio.create_task(a.call("b", ECHO, Echo(1))),
            asyncio.create_task(b.call("a", ECHO, Echo(2))),
        ]
        assert [await c for c in calls] == [Echo(2, "@a"), Echo(3, "@b")]
        await eventually(
            mesh.all,
            lambda: a.connection_count == b.connection_count == 1 and bool(got_a and got_b),
        )
        assert a.connected("b") and b.connected("a")
        for n in range(10):  # and it carries traffic both ways
            a.send_raft(1, hb("a", "b", n + 2))
            b.send_raft(1, hb("b", "a", n + 2))
        await eventually(mesh.all, lambda: len(got_a) == len(got_b) == 11)
        # Both dialled before either connection existed; the one "a" dialled won.
        assert a.stats.connections_superseded == b.stats.connections_superseded == 1
        assert a.stats.connections_lost == b.stats.connections_lost == 0
        kept_at_a = a._links["b"].connection
        kept_at_b = b._links["a"].connection
        assert kept_at_a is not None and kept_at_a.outbound
        assert kept_at_b is not None and not kept_at_b.outbound


# --- shutdown -------------------------------------------------------------------------


async def test_shutdown_fails_pending_calls_with_a_typed_error() -> None:
    async with Mesh(["a", "b"]) as mesh:
        started = asyncio.Event()

        async def stuck(request: Echo, context: CallContext) -> Echo:
            started.set()
            await asyncio.Event().wait()
            raise AssertionError("unreachable")

        mesh["b"].serve(WAIT, stuck)
        call = asyncio.create_task(mesh["a"].call("b", WAIT, Echo(1)))
        await asyncio.wait_for(started.wait(), 20)
        await mesh["a"].close()
        with pytest.raises(TransportClosedError):
            await call
        with pytest.raises(TransportClosedError):
            await mesh["a"].call("b", WAIT, Echo(1))
        mesh["a"].send_raft(1, hb("a", "b"))
        assert mesh["a"].stats.raft_dropped_closed == 1


async def test_a_callee_shutting_down_answers_its_running_calls() -> None:
    async with Mesh(["a", "b"]) as mesh:
        started = asyncio.Event()

        async def stuck(request: Echo, context: CallContext) -> Echo:
            started.set()
            await asyncio.Event().wait()
            raise AssertionError("unreachable")

        mesh["b"].serve(WAIT, stuck)
        call = asyncio.create_task(mesh["a"].call("b", WAIT, Echo(1)))
        await asyncio.wait_for(started.wait(), 20)
        await mesh["b"].close()
        with pytest.raises(RemoteCallError) as error:
            await call
        assert error.value.code == "shutting_down"


async def test_shutdown_drains_what_is_queued() -> None:
    async with Mesh(["a", "b"]) as mesh:
        got: list[Message] = []
        mesh["b"].on_raft(1, got.append)
        mesh["a"].send_raft(1, hb("a", "b"))
        await eventually(mesh.all, lambda: len(got) == 1)
        for term in range(2, 502):
            mesh["a"].send_raft(1, hb("a", "b", term))
        await mesh["a"].close()
        await eventually(mesh["b"], lambda: len(got) == 501)
        assert [m.term for m in got] == list(range(1, 502))
        await eventually(mesh["b"], lambda: mesh["b"].connection_count == 0)
        assert mesh["b"].stats.connections_lost == 0  # a said goodbye


async def test_a_lost_connection_fails_the_calls_written_on_it() -> None:
    async with Mesh(["a", "b"]) as mesh:
        started = asyncio.Event()

        async def stuck(request: Echo, context: CallContext) -> Echo:
            started.set()
            await asyncio.Event().wait()
            raise AssertionError("unreachable")

        mesh["b"].serve(WAIT, stuck)
        call = asyncio.create_task(mesh["a"].call("b", WAIT, Echo(1)))
        await asyncio.wait_for(started.wait(), 20)
        for conn in list(mesh["b"]._connections):
            conn.abort()  # the network breaks
        with pytest.raises(ConnectionLostError):
            await call


async def test_a_call_that_hears_nothing_back_drops_its_connection_and_the_next_redials() -> None:
    """Issue 21: a cut path (packets dropped, not refused) leaves TCP connections that
    neither fail nor recover for minutes. A call that times out while nothing at all came
    back on its connection drops it; one that saw other traffic meanwhile keeps it."""
    async with Mesh(["a", "b"]) as mesh:
        started = asyncio.Event()

        async def stuck(request: Echo, context: CallContext) -> Echo:
            started.set()
            await asyncio.Event().wait()
            raise AssertionError("unreachable")

        mesh["b"].serve(ECHO, echo)
        mesh["b"].serve(WAIT, stuck)
        assert (await mesh["a"].call("b", ECHO, Echo(1))).n == 2  # the connection is up

        # Traffic meanwhile (another call answered): the connection lives, it is kept.
        call = asyncio.create_task(mesh["a"].call("b", WAIT, Echo(2), timeout_s=0.6))
        await asyncio.wait_for(started.wait(), 20)
        assert (await mesh["a"].call("b", ECHO, Echo(3))).n == 4
        with pytest.raises(RpcTimeoutError):
            await call
        assert mesh["a"].stats.connections_dropped_silent == 0
        # (The callee gives up at the same deadline and says so: let that arrive first.)
        await eventually(mesh.all, lambda: mesh["a"].stats.rpc_late_replies == 1)

        # Nothing back at all: dropped, and the next call goes out on a new connection.
        with pytest.raises(RpcTimeoutError):
            await mesh["a"].call("b", WAIT, Echo(4), timeout_s=0.6)
        assert mesh["a"].stats.connections_dropped_silent == 1
        assert (await mesh["a"].call("b", ECHO, Echo(5))).n == 6


# --- loops ----------------------------------------------------------------------------


def test_the_transport_runs_on_uvloop_when_installed() -> None:
    if not uses_uvloop():
        pytest.skip("uvloop is not installed: the default loop is used (tested everywhere else)")

    async def main() -> tuple[str, Echo]:
        async with Mesh(["a", "b"]) as mesh:
            got: list[Message] = []
            mesh["b"].on_raft(1, got.append)
            mesh["b"].serve(ECHO, echo)
            mesh["a"].send_raft(1, hb("a", "b"))
            await eventually(mesh.all, lambda: len(got) == 1)
            return type(asyncio.get_running_loop()).__module__, await mesh["a"].call(
                "b", ECHO, Echo(1)
            )

    module, reply = run(main())
    assert module.startswith("uvloop") and reply == Echo(2, "@a")
    assert loop_factory() is not asyncio.new_event_loop
