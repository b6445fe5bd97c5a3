"""The bound on bytes buffered for unfinished incoming frames, all connections together.

Authenticated peers each start a large frame and stop: the server reserves (and
allocates) at most its budget, keeps serving everyone else, cuts a stalled holder when
another frame waits, refuses a frame that could never fit, and has nothing buffered once
they are gone.
"""

from __future__ import annotations

import asyncio

import msgspec
import pytest

from shardwise.clock import ManualClock
from shardwise.errors import FrameBudgetError
from shardwise.net.auth import DialerHandshake
from shardwise.net.budget import FrameBudget
from shardwise.net.connection import PeerConnection
from shardwise.net.frames import HEADER_BYTES, NEED_BUFFER, NEED_DATA, Codec, encode_frame
from shardwise.net.harness import TEST_SECRET, WAIT_S, Mesh, eventually
from shardwise.net.limits import Limits
from shardwise.net.links import Address
from shardwise.net.rpc import CallContext, RpcMethod
from shardwise.net.wire import PeerRole, RpcRequest, RpcResponse

MIB = 1 << 20


class Blob(msgspec.Struct, frozen=True):
    data: bytes


SIZE = RpcMethod("size", Blob, Blob)


async def size_of(request: Blob, context: CallContext) -> Blob:
    return Blob(str(len(request.data)).encode())


def big_call(call_id: int, body_bytes: int) -> bytes:
    body = msgspec.msgpack.encode(Blob(bytes(body_bytes)))
    return encode_frame(RpcRequest(call_id=call_id, method="size", timeout_ms=60_000, body=body))


# --- the codec: one exactly-sized buffer per large frame ---------------------------------


def test_a_large_frame_arriving_in_pieces_gets_one_buffer_of_its_size() -> None:
    frame = big_call(1, 300_000)
    codec = Codec(reserves=True)
    codec.receive_data(frame[:1000])
    assert codec.next_event() is NEED_BUFFER
    assert codec.pending_frame_bytes == len(frame)
    assert codec.next_event() is NEED_BUFFER  # until it is allocated
    codec.allocate()
    assert codec.frame_buffer_bytes == len(frame)
    for start in range(1000, len(frame), 65_536):
        assert codec.next_event() is NEED_DATA
        codec.receive_data(
            frame[start : start + 65_536] + (b"" if start + 65_536 < len(frame) else frame[:20])
        )
    message = codec.next_event()
    assert isinstance(message, RpcRequest) and len(message.body) > 300_000
    assert codec.frame_buffer_bytes == 0
    assert codec.buffered_bytes == 20  # the next frame's first bytes, not lost


def test_without_a_budget_the_buffer_is_allocated_at_once() -> None:
    frame = big_call(1, 100_000)
    codec = Codec()
    codec.receive_data(frame[: HEADER_BYTES + 10])
    assert codec.next_event() is NEED_DATA
    assert codec.frame_buffer_bytes == len(frame)
    codec.receive_data(frame[HEADER_BYTES + 10 :])
    assert isinstance(codec.next_event(), RpcRequest)


# --- the budget, sans network ----------------------------------------------------------


async def settle() -> None:
    """Let every ready task run (the manual clock's sleepers register a turn late)."""
    for _ in range(20):
        await asyncio.sleep(0)


class Holder:
    def __init__(self) -> None:
        self.cut: FrameBudgetError | None = None

    def cut_for_budget(self, error: FrameBudgetError) -> None:
        self.cut = error


def budget(total: int, clock: ManualClock, counts: dict[str, int]) -> FrameBudget:
    def count(name: str, n: int) -> None:
        counts[name] = counts.get(name, 0) + n

    return FrameBudget(total, 2.0, clock, count)


async def test_frames_wait_in_turn_and_a_stalled_holder_is_cut_for_a_waiter() -> None:
    clock, counts = ManualClock(), dict[str, int]()
    b = budget(100, clock, counts)
    first, second, third = Holder(), Holder(), Holder()
    await b.acquire(first, 60)
    waiting = asyncio.create_task(b.acquire(second, 60))
    queued = asyncio.create_task(b.acquire(third, 10))  # fits, but waits its turn
    await asyncio.sleep(0)
    assert not waiting.done() and not queued.done()
    assert counts["frame_bytes_buffered"] == 60
    await settle()
    clock.advance(1.0)
    b.progress(first)  # first is still arriving: not stalled
    clock.advance(1.5)
    await settle()
    assert first.cut is None and not waiting.done()
    clock.advance(2.0)  # now 3.5 s without a byte
    await asyncio.wait_for(asyncio.gather(waiting, queued), WAIT_S)
    assert isinstance(first.cut, FrameBudgetError)
    assert counts == {
        "frame_bytes_buffered": 70,
        "frame_budget_waits": 2,
        "frame_budget_stall_cuts": 1,
    }
    b.release(second)
    b.release(third)
    b.release(third)  # idempotent
    assert b.used == 0 and counts["frame_bytes_buffered"] == 0


async def test_a_frame_that_can_never_fit_fails_at_once() -> None:
    clock, counts = ManualClock(), dict[str, int]()
    b = budget(100, clock, counts)
    with pytest.raises(FrameBudgetError):
        await b.acquire(Holder(), 101)
    assert counts == {"frame_budget_too_large": 1}


async def test_a_holder_under_its_fair_share_is_not_cut() -> None:
    clock, counts = ManualClock(), dict[str, int]()
    b = budget(100, clock, counts)
    small, big = Holder(), Holder()
    await b.acquire(small, 30)
    waiting = asyncio.create_task(b.acquire(big, 80))
    await asyncio.sleep(0)
    await settle()
    clock.advance(10.0)  # small is stalled, but holds less than half
    await settle()
    assert small.cut is None and not waiting.done()
    b.release(small)
    await asyncio.wait_for(waiting, WAIT_S)


async def test_a_waiter_whose_connection_closes_stops_waiting() -> None:
    clock, counts = ManualClock(), dict[str, int]()
    b = budget(100, clock, counts)
    holder, waiter = Holder(), Holder()
    await b.acquire(holder, 100)
    waiting = asyncio.create_task(b.acquire(waiter, 50))
    await asyncio.sleep(0)
    b.release(waiter)
    with pytest.raises(ConnectionAbortedError):
        await asyncio.wait_for(waiting, WAIT_S)
    assert b.waiting == 0


# --- on a real server ------------------------------------------------------------------


async def authenticated(address: Address, name: str) -> PeerConnection:
    reader, writer = await asyncio.open_connection(*address)
    conn = PeerConnection(reader, writer, local_id=name, outbound=True, read_chunk_bytes=65_536)
    await conn.dial_handshake(DialerHandshake(TEST_SECRET, name, PeerRole.CLIENT))
    return conn


async def test_unfinished_frames_stay_within_the_budget_and_leave_nothing_behind() -> None:
    clock = ManualClock()
    limits = Limits(max_buffered_frame_bytes=5 * MIB)
    frame = big_call(1, 2 * MIB)
    async with Mesh(["a"], clock=clock, limits=limits) as mesh:
        server = mesh["a"]
        server.serve(SIZE, size_of)
        peak = 0

        def within_budget() -> bool:
            nonlocal peak
            peak = max(peak, server.stats.frame_bytes_buffered)
            return server.stats.frame_budget_waits >= 6

        hogs = [await authenticated(server.address, f"hog-{n}") for n in range(8)]
        for hog in hogs:
            hog.write([frame[: len(frame) // 2]])  # half a frame, then nothing
        await eventually(server, within_budget)
        assert server.stats.frame_bytes_buffered == 2 * len(frame) == peak
        # Others are still served, small calls and a frame that fits beside the hogs.
        client = await mesh.client("c")
        assert await client.call("a", SIZE, Blob(b"x" * 100)) == Blob(b"100")
        for hog in hogs:
            hog.abort()
            await hog.close()
        await eventually(server, lambda: server.connection_count == 1)
        assert server.stats.frame_bytes_buffered == 0
        assert await client.call("a", SIZE, Blob(bytes(3 * MIB))) == Blob(b"3145728")
        assert server.stats.frame_bytes_buffered == 0
        assert peak <= limits.max_buffered_frame_bytes


async def test_stalled_frames_cannot_starve_one_that_waits() -> None:
    clock = ManualClock()
    limits = Limits(max_buffered_frame_bytes=5 * MIB, frame_stall_s=2.0)
    frame = big_call(1, 2 * MIB)
    async with Mesh(["a"], clock=clock, limits=limits) as mesh:
        server = mesh["a"]
        server.serve(SIZE, size_of)
        hogs = [await authenticated(server.address, f"hog-{n}") for n in range(2)]
        for hog in hogs:
            hog.write([frame[: len(frame) // 2]])
        await eventually(server, lambda: server.stats.frame_bytes_buffered == 2 * len(frame))
        client = await mesh.client("c")
        call = asyncio.create_task(client.call("a", SIZE, Blob(bytes(2 * MIB))))
        await eventually(server, lambda: server.stats.frame_budget_waits == 1)
        clock.advance(2.0)
        assert await asyncio.wait_for(call, WAIT_S) == Blob(b"2097152")
        assert server.stats.frame_budget_stall_cuts == 1
        for hog in hogs:
            hog.abort()
            await hog.close()
        await eventually(server, lambda: server.stats.frame_bytes_buffered == 0)


async def test_a_frame_larger_than_the_budget_is_cut_at_its_header() -> None:
    limits = Limits(max_buffered_frame_bytes=1 * MIB)
    async with Mesh(["a"], clock=ManualClock(), limits=limits) as mesh:
        server = mesh["a"]
        hog = await authenticated(server.address, "hog")
        frame = big_call(1, 2 * MIB)
        hog.write([frame[: HEADER_BYTES + 100]])
        await eventually(server, lambda: server.stats.frame_budget_too_large == 1)
        assert await asyncio.wait_for(hog.receive(), WAIT_S) is None  # cut
        hog.abort()
        await hog.close()
        assert server.stats.frame_bytes_buffered == 0
        assert isinstance(RpcResponse(call_id=1, body=b""), RpcResponse)
