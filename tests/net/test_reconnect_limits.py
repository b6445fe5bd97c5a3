"""Reconnecting with back-off, and the bounds on queues and calls, on real sockets.

Time that matters (deadlines, back-off) runs on a ManualClock moved by the test; every
other wait is for a condition, bounded by ``eventually``.
"""

from __future__ import annotations

import asyncio
import socket

import msgspec
import pytest

from shardwise.clock import ManualClock
from shardwise.errors import (
    PeerUnreachableError,
    RpcOverloadedError,
    TransportClosedError,
)
from shardwise.net.frames import encode_frame
from shardwise.net.harness import TEST_SECRET, Mesh, eventually
from shardwise.net.limits import Limits
from shardwise.net.rpc import CallContext, RpcMethod
from shardwise.net.timing import Backoff
from shardwise.net.transport import Transport
from shardwise.net.wire import RaftFrame
from shardwise.raft.messages import AppendEntries, Heartbeat, Message
from shardwise.storage.types import LogEntry


class Echo(msgspec.Struct, frozen=True):
    n: int
    text: str = ""


ECHO = RpcMethod("echo", Echo, Echo)
WAIT = RpcMethod("wait", Echo, Echo)


class FixedRandom:
    """Jitter that is always the same fraction: the schedule becomes exact."""

    def __init__(self, value: float) -> None:
        self.value = value

    def random(self) -> float:
        return self.value


class RecordingClock(ManualClock):
    """Records the back-off sleeps: every sleep except those of the timeouts, which the
    test sets to the distinctive ``TIMEOUT_S``."""

    TIMEOUT_S = 1234.0

    def __init__(self) -> None:
        super().__init__()
        self.sleeps: list[float] = []

    async def sleep(self, seconds: float) -> None:
        if seconds != self.TIMEOUT_S:
            self.sleeps.append(seconds)
        await super().sleep(seconds)


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


def free_port() -> int:
    """A port nothing listens on (the test starts a node there later)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def echo(request: Echo, context: CallContext) -> Echo:
    return Echo(request.n + 1, f"{request.text}@{context.peer_id}")


# --- reconnect and back-off -----------------------------------------------------------


async def test_reconnect_follows_the_backoff_schedule_then_finds_the_returned_peer() -> None:
    clock = RecordingClock()
    backoff = Backoff(base_s=0.1, cap_s=1.0, max_attempts=100)
    rng = FixedRandom(0.5)
    port = free_port()
    got: list[Message] = []
    t = clock.TIMEOUT_S
    limits = Limits(
        connect_timeout_s=t, handshake_timeout_s=t, close_timeout_s=t, drain_timeout_s=t
    )
    a = Transport(
        "a",
        TEST_SECRET,
        clock=clock,
        backoff=backoff,
        rng=rng,
        limits=limits,
        peers={"b": ("127.0.0.1", port)},
    )
    async with a:
        a.send_raft(1, hb("a", "b"))
        expected = [0.075, 0.15, 0.3, 0.6, 0.75, 0.75]  # 3/4 of 0.1 * 2**n, capped at 1.0
        for failures in range(1, len(expected) + 1):
            await eventually(a, lambda n=failures: a.stats.dial_failures == n)  # type: ignore[misc]
            assert clock.sleeps == pytest.approx(expected[:failures])
            assert [backoff.delay_s(i, rng) for i in range(failures)] == pytest.approx(clock.sleeps)
            if failures < len(expected):
                clock.advance(clock.sleeps[-1])
        assert a.stats.dial_attempts == len(expected)
        b = Transport("b", TEST_SECRET, clock=clock, limits=limits, listen=("127.0.0.1", port))
        b.on_raft(1, got.append)
        async with b:
            clock.advance(clock.sleeps[-1])
            await eventually([a, b], lambda: len(got) == 1)
            assert a.stats.dial_attempts == len(expected) + 1
            # b goes away: a notices, and its next dial waits the first back-off step
            await b.close()
            await eventually(a, lambda: not a.connected("b"))
        sleeps_before = len(clock.sleeps)
        a.send_raft(1, hb("a", "b", 2))
        await eventually(a, lambda: len(clock.sleeps) > sleeps_before)
        b2 = Transport("b", TEST_SECRET, clock=clock, limits=limits, listen=("127.0.0.1", port))
        b2.on_raft(1, got.append)
        async with b2:
            clock.advance(clock.sleeps[-1])
            await eventually([a, b2], lambda: len(got) >= 2)
            assert got[-1] == hb("a", "b", 2)


def test_backoff_is_capped_jittered_and_bounded() -> None:
    backoff = Backoff(base_s=0.05, cap_s=5.0)
    assert [backoff.ceiling_s(n) for n in range(4)] == [0.05, 0.1, 0.2, 0.4]
    assert backoff.ceiling_s(50) == backoff.ceiling_s(10_000) == 5.0
    assert backoff.delay_s(3, FixedRandom(0.0)) == 0.2
    assert backoff.delay_s(3, FixedRandom(0.999999)) == pytest.approx(0.4)
    with pytest.raises(ValueError):
        Backoff(base_s=2, cap_s=1)
    with pytest.raises(ValueError):
        Backoff(max_attempts=0)


async def test_after_the_last_attempt_the_queued_raft_frames_go() -> None:
    clock = ManualClock()
    backoff = Backoff(base_s=0.1, cap_s=0.1, max_attempts=3)
    a = Transport(
        "a", TEST_SECRET, clock=clock, backoff=backoff, peers={"b": ("127.0.0.1", free_port())}
    )
    async with a:
        a.send_raft(1, hb("a", "b"))
        for n in (1, 2):
            await eventually(a, lambda n=n: a.stats.dial_failures == n)  # type: ignore[misc]
            clock.advance(0.1)
        await eventually(a, lambda: a.stats.dial_give_ups == 1)
        assert a.stats.raft_dropped_queue_full == 1  # the queued heartbeat went with it


async def test_a_call_to_a_peer_that_cannot_be_dialled_fails_at_once() -> None:
    """A dead peer (its port refuses) fails a call when the dial fails, not at the call's
    deadline, and fails new calls at once until the next dial is due: a client moves on
    to another server (a new leader) without waiting out its attempt's timeout. The peer
    is dialled again once the back-off has passed, and found when it is back."""
    clock = ManualClock()
    backoff = Backoff(base_s=0.1, cap_s=0.1, max_attempts=100)
    port = free_port()
    a = Transport("a", TEST_SECRET, clock=clock, backoff=backoff, peers={"b": ("127.0.0.1", port)})
    async with a:
        a.send_raft(1, hb("a", "b"))  # keeps the dialler going, as a Raft peer's would
        call = asyncio.create_task(a.call("b", ECHO, Echo(1), timeout_s=60))
        with pytest.raises(PeerUnreachableError):
            await asyncio.wait_for(call, 20)  # (the clock has not moved: no deadline passed)
        attempts = a.stats.dial_attempts
        with pytest.raises(PeerUnreachableError):
            await a.call("b", ECHO, Echo(2), timeout_s=60)
        assert a.stats.dial_attempts == attempts  # refused from memory, nothing dialled
        assert a.stats.rpc_unreachable == 2 and a.stats.rpc_timeouts == 0
        b = Transport("b", TEST_SECRET, clock=clock, listen=("127.0.0.1", port))

        async def echo(request: Echo, context: CallContext) -> Echo:
            return request

        b.serve(ECHO, echo)
        async with b:
            clock.advance(0.1)  # the next dial is due and finds b
            await eventually([a, b], lambda: a.connected("b"))
            assert await a.call("b", ECHO, Echo(3), timeout_s=60) == Echo(3)


# --- limits ---------------------------------------------------------------------------


async def test_flooding_raft_messages_drops_the_excess_and_counts_it() -> None:
    clock = ManualClock()
    limits = Limits(max_raft_queue_frames=8)
    a = Transport(
        "a", TEST_SECRET, clock=clock, limits=limits, peers={"b": ("127.0.0.1", free_port())}
    )
    async with a:
        for term in range(1, 101):
            a.send_raft(1, hb("a", "b", term))
        assert a.stats.raft_sent == 8
        assert a.stats.raft_dropped_queue_full == 92


async def test_a_full_queue_by_bytes_drops_too() -> None:
    clock = ManualClock()
    limits = Limits(max_queue_bytes=4096)
    a = Transport(
        "a", TEST_SECRET, clock=clock, limits=limits, peers={"b": ("127.0.0.1", free_port())}
    )
    async with a:
        entries = (LogEntry(index=1, term=1, data=bytes(1000)),)
        append = AppendEntries(
            term=1, sender="a", to="b", prev_index=0, prev_term=0, entries=entries
        )
        fits = 4096 // len(encode_frame(RaftFrame(group=1, message=append)))
        for _ in range(10):
            a.send_raft(1, append)
        assert a.stats.raft_sent == fits == 3
        assert a.stats.raft_dropped_queue_full == 10 - fits


async def test_too_many_pending_calls_are_refused_at_once() -> None:
    clock = ManualClock()
    limits = Limits(max_pending_calls=4, max_request_queue_frames=3)
    a = Transport(
        "a", TEST_SECRET, clock=clock, limits=limits, peers={"b": ("127.0.0.1", free_port())}
    )
    async with a:
        waiting = [asyncio.create_task(a.call("b", ECHO, Echo(n), timeout_s=60)) for n in range(4)]
        await eventually(a, lambda: a.stats.rpc_calls == 4)
        with pytest.raises(RpcOverloadedError):
            await waiting[3]  # the request queue holds three
        waiting.pop()
        more = [asyncio.create_task(a.call("b", ECHO, Echo(9), timeout_s=60))]
        await eventually(a, lambda: a.stats.rpc_calls == 5)
        with pytest.raises(RpcOverloadedError):
            await more[0]
        assert a.stats.rpc_overloaded == 2
        await a.close()
        for call in waiting:
            with pytest.raises(TransportClosedError):
                await call


async def test_a_callee_with_too_many_running_calls_answers_overloaded() -> None:
    limits = Limits(max_handlers_per_link=2)
    async with Mesh(["a", "b"], limits=limits) as mesh:
        release = asyncio.Event()
        running = Countdown(2)

        async def wait(request: Echo, context: CallContext) -> Echo:
            running.tick()
            await release.wait()
            return request

        mesh["b"].serve(WAIT, wait)
        first = [asyncio.create_task(mesh["a"].call("b", WAIT, Echo(n))) for n in range(2)]
        await running.wait()
        with pytest.raises(RpcOverloadedError):
            await mesh["a"].call("b", WAIT, Echo(3))
        assert mesh["b"].stats.rpc_refused == 1
        release.set()
        assert [await c for c in first] == [Echo(0), Echo(1)]
