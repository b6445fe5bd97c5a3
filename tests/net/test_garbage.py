"""A server fed garbage on some connections keeps serving the others (real sockets)."""

from __future__ import annotations

import asyncio
import contextlib
import random

import msgspec

from shardwise.net.auth import DialerHandshake
from shardwise.net.frames import CLOSED, MAGIC, NEED_BUFFER, NEED_DATA, Codec, encode_frame
from shardwise.net.harness import TEST_SECRET, Mesh, eventually
from shardwise.net.rpc import CallContext, RpcMethod
from shardwise.net.wire import Challenge, PeerRole, Welcome, WireMessage
from shardwise.raft.messages import Heartbeat, Message

READ_S = 20.0


class Num(msgspec.Struct, frozen=True):
    n: int


ECHO = RpcMethod("echo", Num, Num)


async def echo(request: Num, context: CallContext) -> Num:
    return Num(request.n * 2)


async def read_until_closed(reader: asyncio.StreamReader) -> list[WireMessage]:
    """Everything the server sends until it closes the connection."""
    codec = Codec()

    async def read() -> list[WireMessage]:
        out: list[WireMessage] = []
        while True:
            event = codec.next_event()
            if event is CLOSED:
                return out
            if event is NEED_DATA:
                try:
                    data = await reader.read(65536)
                except ConnectionResetError:
                    data = b""
                codec.receive_data(data)
            elif event is not NEED_BUFFER:  # never without a budget
                out.append(event)

    return await asyncio.wait_for(read(), READ_S)


async def garbage_connection(address: tuple[str, int], payload: bytes) -> list[WireMessage]:
    reader, writer = await asyncio.open_connection(*address)
    writer.write(payload)
    try:
        return await read_until_closed(reader)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionResetError):
            await writer.wait_closed()


async def authenticated_then_garbage(address: tuple[str, int], payload: bytes) -> None:
    """A peer that knows the secret and then sends nonsense: still cut off."""
    reader, writer = await asyncio.open_connection(*address)
    codec = Codec()
    handshake = DialerHandshake(TEST_SECRET, "c", PeerRole.NODE, expected_peer="a")

    async def next_message() -> WireMessage:
        while (event := codec.next_event()) is NEED_DATA:
            codec.receive_data(await reader.read(65536))
        assert event is not CLOSED and event is not NEED_BUFFER
        return event

    writer.write(encode_frame(handshake.hello()))
    challenge = await asyncio.wait_for(next_message(), READ_S)
    assert isinstance(challenge, Challenge)
    writer.write(encode_frame(handshake.on_challenge(challenge)))
    welcome = await asyncio.wait_for(next_message(), READ_S)
    assert isinstance(welcome, Welcome)
    handshake.on_welcome(welcome)
    writer.write(payload)
    try:
        while codec.next_event() is not NEED_DATA:
            pass
        await read_until_closed(reader)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionResetError):
            await writer.wait_closed()


async def test_garbage_on_some_connections_leaves_the_others_served(seed: int) -> None:
    rng = random.Random(seed)
    async with Mesh(["a", "b"]) as mesh:
        a, b = mesh["a"], mesh["b"]
        got: list[Message] = []
        a.on_raft(1, got.append)
        a.serve(ECHO, echo)
        b.send_raft(1, Heartbeat(term=1, sender="b", to="a"))
        await eventually(mesh.all, lambda: len(got) == 1)  # an honest connection is open
        payloads = [
            rng.randbytes(4096),
            b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
            MAGIC + b"\x01\x00\xff\xff\xff\xff" + rng.randbytes(100),
            MAGIC + b"\x07\x00" + rng.randbytes(100),
            MAGIC + b"\x01\x00\x00\x00\x00\x03\x00\x00\x00\x00abc",  # bad checksum
        ]
        calls = [asyncio.create_task(b.call("a", ECHO, Num(n))) for n in range(50)]
        results = await asyncio.gather(
            *(garbage_connection(a.address, p) for p in payloads),
            authenticated_then_garbage(a.address, rng.randbytes(1000)),
        )
        for n in range(2, 52):
            b.send_raft(1, Heartbeat(term=n, sender="b", to="a"))
        assert [await c for c in calls] == [Num(2 * n) for n in range(50)]
        await eventually(mesh.all, lambda: len(got) == 51)
        assert [m.term for m in got] == list(range(1, 52))
        assert all(messages == [] for messages in results[:-1])  # garbage got nothing back
        assert a.stats.protocol_errors == len(payloads) + 1
        assert b.stats.connections_lost == 0 and b.connection_count == 1
        await eventually(mesh.all, lambda: a.connection_count == 1)
