"""Nobody can lock clients out by holding sockets open, and a refusal says what it is.

An attacker without the secret keeps more silent connections open than the server has
handshake slots, reopening each the moment the server cuts it. Real clients (a client
transport, the CLI's probe) must still connect and get answers, every time; a server
that really has no room must say so, and the dialer must raise that, never "wrong
secret". Everything runs on real sockets; the server's clock is manual, so no deadline
cuts the attacker: only eviction can let clients in.
"""

from __future__ import annotations

import asyncio
import contextlib

import msgspec
import pytest

from shardwise.cli.admin import probe
from shardwise.cli.exits import ExitCode, exit_code_for
from shardwise.clock import ManualClock
from shardwise.errors import (
    AuthenticationError,
    HandshakeInterruptedError,
    PeerUnreachableError,
    ServerBusyError,
    TooManyConnectionsError,
    WrongSecretError,
)
from shardwise.net.admission import HandshakeSlots
from shardwise.net.auth import DialerHandshake
from shardwise.net.connection import PeerConnection
from shardwise.net.faults import FaultInjector
from shardwise.net.frames import encode_frame
from shardwise.net.harness import TEST_SECRET, WAIT_S, Mesh, eventually
from shardwise.net.limits import MAX_HANDSHAKING, Limits
from shardwise.net.links import Address
from shardwise.net.rpc import CallContext, RpcMethod
from shardwise.net.transport import Transport
from shardwise.net.wire import PeerRole

WRONG_SECRET = b"not-the-cluster-secret-at-all!!!"
ATTACKERS = MAX_HANDSHAKING + 32
"""Silent connections the attacker keeps open: more than there are handshake slots."""
ROUNDS = 12
"""Fresh clients that must each connect and be answered during the flood."""


class Ping(msgspec.Struct, frozen=True):
    n: int


PING = RpcMethod("ping", Ping, Ping)


async def answer(request: Ping, context: CallContext) -> Ping:
    return Ping(request.n + 1)


class SilentFlood:
    """``count`` connections that never send a byte, each reopened as soon as the server
    closes it."""

    def __init__(self, address: Address, count: int) -> None:
        self.address = address
        self.open = 0
        self.reopened = 0
        self._tasks = [asyncio.create_task(self._hold()) for _ in range(count)]

    async def _hold(self) -> None:
        first = True
        while True:
            try:
                reader, writer = await asyncio.open_connection(*self.address)
            except OSError:
                await asyncio.sleep(0)  # the backlog is full: try again
                continue
            self.open += 1
            if not first:
                self.reopened += 1
            first = False
            try:
                while await reader.read(4096):
                    pass  # a refusal frame, then the end
            except OSError:
                pass
            finally:
                self.open -= 1
                writer.transport.abort()

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


async def dial(address: Address, secret: bytes = TEST_SECRET) -> PeerConnection:
    """One client handshake by hand, as the CLI's probe does."""
    reader, writer = await asyncio.open_connection(*address)
    conn = PeerConnection(
        reader, writer, local_id="raw-client", outbound=True, read_chunk_bytes=4096
    )
    try:
        await asyncio.wait_for(
            conn.dial_handshake(DialerHandshake(secret, "raw-client", PeerRole.CLIENT)), WAIT_S
        )
    except BaseException:
        conn.abort()
        await conn.close()
        raise
    return conn


async def test_a_flood_of_silent_connections_does_not_lock_clients_out() -> None:
    """On loopback every connection comes from 127.0.0.1, so no per-address share
    applies: the attacker holds every handshake slot, and eviction alone must let the
    clients in."""
    clock = ManualClock()  # no deadline ever cuts the attacker's sockets
    held = MAX_HANDSHAKING
    async with Mesh(["a"], clock=clock) as mesh:
        server = mesh["a"]
        server.serve(PING, answer)
        flood = SilentFlood(server.address, ATTACKERS)
        try:
            await eventually(server, lambda: server.handshakes_in_progress == held)
            for n in range(ROUNDS):
                client = Transport(
                    f"client-{n}",
                    TEST_SECRET,
                    role=PeerRole.CLIENT,
                    peers={"a": server.address},
                    clock=clock,
                )
                async with client:
                    reply = await asyncio.wait_for(client.call("a", PING, Ping(n)), WAIT_S)
                assert reply == Ping(n + 1)
                # The CLI's first step (``shardwise kv get`` runs it before anything).
                await asyncio.wait_for(probe({"a": server.address}, TEST_SECRET), WAIT_S)
            assert flood.reopened > 0, "the attacker was never cut: the test proves nothing"
            assert server.stats.handshakes_evicted >= flood.reopened
            assert server.handshakes_in_progress <= held
            assert server.stats.auth_failures == 0
        finally:
            await flood.stop()


def test_one_source_can_only_evict_its_own_connections() -> None:
    """Sans-IO: the per-source share, and who pays when the slots are full."""
    slots: HandshakeSlots[str] = HandshakeSlots(capacity=4, per_source=2)
    assert slots.admit("peer-1", "10.0.0.1", known=True) == []
    assert slots.admit("x-1", "10.6.6.6") == []
    assert slots.admit("x-2", "10.6.6.6") == []
    assert slots.admit("x-3", "10.6.6.6") == ["x-1"]  # its own share: its own oldest
    assert slots.admit("y-1", "10.7.7.7") == []
    # Full: the most crowded unknown source pays, never the known peer's address.
    assert slots.admit("z-1", "10.8.8.8") == ["x-2"]
    assert "peer-1" in slots and len(slots) == 4
    slots.heard("y-1")
    slots.release("x-3")
    assert slots.admit("z-2", "10.8.8.8") == []
    # Full again, every unknown source holds one or two: silent goes before talking.
    assert slots.admit("w-1", "10.9.9.9") == ["z-1"]


def test_silent_connections_go_first_then_the_oldest() -> None:
    slots: HandshakeSlots[str] = HandshakeSlots(capacity=3, per_source=3)
    for key in ("a", "b", "c"):
        slots.admit(key, "127.0.0.1")
    slots.heard("a")
    assert slots.admit("d", "127.0.0.1", spoke=lambda k: k == "b") == ["c"]
    assert slots.admit("e", "127.0.0.1", spoke=lambda k: k == "b") == ["d"]
    assert slots.admit("x", "127.0.0.1") == ["b"]  # no longer known to have spoken
    slots.release("x")
    slots.admit("b", "127.0.0.1")
    slots.heard("b")
    assert slots.admit("f", "127.0.0.1") == ["e"]
    slots.heard("f")
    assert slots.admit("g", "127.0.0.1") == ["a"]  # all talking: the oldest


async def test_a_full_server_says_so_and_the_dialer_raises_it() -> None:
    clock = ManualClock()
    limits = Limits(max_connections=2)
    async with Mesh(["a"], clock=clock, limits=limits) as mesh:
        server = mesh["a"]
        held = [await asyncio.open_connection(*server.address) for _ in range(2)]
        try:
            await eventually(server, lambda: server.connection_count == 2)
            with pytest.raises(TooManyConnectionsError) as raised:
                await dial(server.address)
            assert "connections" in str(raised.value)
            with pytest.raises(TooManyConnectionsError) as via_cli:
                await probe({"a": server.address}, TEST_SECRET)
            assert exit_code_for(via_cli.value) is ExitCode.BUSY
            assert server.stats.connections_refused == 2
            client = await mesh.client("c")
            with pytest.raises(PeerUnreachableError):
                await asyncio.wait_for(client.call("a", PING, Ping(1)), WAIT_S)
        finally:
            for _, writer in held:
                writer.transport.abort()


async def test_only_a_failed_proof_is_reported_as_a_wrong_secret() -> None:
    faults = FaultInjector()
    async with Mesh(["a"], clock=ManualClock(), faults=faults) as mesh:
        address = mesh["a"].address
        with pytest.raises(AuthenticationError):
            await dial(address, WRONG_SECRET)
        with pytest.raises(WrongSecretError) as wrong:
            await probe({"a": address}, WRONG_SECRET)
        assert exit_code_for(wrong.value) is ExitCode.WRONG_SECRET
        # Authenticated but not admitted (here: a cut link): a reason, not the secret.
        faults.cut("a", "raw-client")
        with pytest.raises(ServerBusyError) as busy:
            await dial(address)
        assert not isinstance(busy.value, AuthenticationError)
        assert "cut" in str(busy.value)


async def test_a_connection_closed_in_the_handshake_is_not_a_wrong_secret() -> None:
    server = await asyncio.start_server(_close_at_once, "127.0.0.1", 0)
    async with server:
        address = server.sockets[0].getsockname()[:2]
        with pytest.raises((HandshakeInterruptedError, ConnectionError)):
            await dial(address)
        with pytest.raises(HandshakeInterruptedError):
            await probe({"a": address}, TEST_SECRET)


async def _close_at_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError):
        await reader.read(1)
    writer.close()


async def test_a_silent_connection_is_cut_at_the_first_frame_deadline() -> None:
    clock = ManualClock()
    limits = Limits(first_frame_timeout_s=1.0, handshake_timeout_s=3.0)
    async with Mesh(["a"], clock=clock, limits=limits) as mesh:
        server = mesh["a"]
        reader, writer = await asyncio.open_connection(*server.address)
        talker = await asyncio.open_connection(*server.address)
        talker[1].write(_hello_frame())
        await eventually(server, lambda: server.handshakes_in_progress == 2)
        clock.advance(0.9)
        await asyncio.sleep(0)
        assert server.stats.first_frame_timeouts == 0
        clock.advance(0.2)
        await eventually(server, lambda: server.stats.first_frame_timeouts == 1)
        assert await asyncio.wait_for(reader.read(), WAIT_S)  # the refusal, then EOF
        assert server.handshakes_in_progress == 1  # the one that spoke waits on
        clock.advance(2.0)
        await eventually(server, lambda: server.stats.handshake_timeouts == 2)
        for w in (writer, talker[1]):
            w.transport.abort()


def _hello_frame() -> bytes:
    return encode_frame(DialerHandshake(TEST_SECRET, "slow", PeerRole.CLIENT).hello())
