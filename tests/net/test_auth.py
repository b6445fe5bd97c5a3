"""Authentication: the sans-IO handshake's rules, then attacks on a real server.

Every attack is made on real sockets against a node that an honest peer keeps using: the
attacker gets nothing processed and is cut off; the honest peer never notices.
"""

from __future__ import annotations

import asyncio
import contextlib

import msgspec
import pytest

from shardwise.clock import ManualClock
from shardwise.errors import AuthenticationError
from shardwise.net.auth import (
    ACCEPTOR_TO_DIALER,
    DIALER_TO_ACCEPTOR,
    MAX_SECRET_BYTES,
    MIN_SECRET_BYTES,
    AcceptorHandshake,
    DialerHandshake,
    check_secret,
    compute_proof,
)
from shardwise.net.frames import CLOSED, NEED_BUFFER, NEED_DATA, Codec, encode_frame
from shardwise.net.harness import TEST_SECRET, Mesh, eventually
from shardwise.net.limits import Limits
from shardwise.net.rpc import CallContext, RpcMethod
from shardwise.net.transport import Transport
from shardwise.net.wire import (
    Challenge,
    Hello,
    PeerRole,
    Proof,
    RaftFrame,
    RefusalReason,
    Refused,
    RpcRequest,
    Welcome,
    WireMessage,
)
from shardwise.raft.messages import Heartbeat, Message

WRONG_SECRET = b"not-the-cluster-secret-at-all!!!"
READ_S = 10.0
"""Real seconds a raw socket read may take before the test fails (only if broken)."""


class Ping(msgspec.Struct, frozen=True):
    n: int


PING = RpcMethod("ping", Ping, Ping)


# --- the handshake, sans-IO -----------------------------------------------------------


def run_handshake(dialer: DialerHandshake, acceptor: AcceptorHandshake) -> list[WireMessage]:
    hello = dialer.hello()
    challenge = acceptor.on_hello(hello)
    proof = dialer.on_challenge(challenge)
    welcome = acceptor.on_proof(proof)
    assert dialer.on_welcome(welcome) == acceptor.node_id
    return [hello, challenge, proof, welcome]


def test_both_sides_learn_who_the_other_is() -> None:
    dialer = DialerHandshake(TEST_SECRET, "n1", PeerRole.NODE, expected_peer="n2")
    acceptor = AcceptorHandshake(TEST_SECRET, "n2")
    run_handshake(dialer, acceptor)
    assert (dialer.peer_id, acceptor.peer_id, acceptor.peer_role) == ("n2", "n1", PeerRole.NODE)


def test_the_secret_never_crosses_the_wire() -> None:
    messages = run_handshake(
        DialerHandshake(TEST_SECRET, "n1", PeerRole.NODE), AcceptorHandshake(TEST_SECRET, "n2")
    )
    wire = b"".join(encode_frame(m) for m in messages)
    assert TEST_SECRET not in wire
    assert TEST_SECRET[:8] not in wire


def test_a_dialer_with_the_wrong_secret_is_refused() -> None:
    dialer = DialerHandshake(WRONG_SECRET, "n1", PeerRole.NODE)
    acceptor = AcceptorHandshake(TEST_SECRET, "n2")
    proof = dialer.on_challenge(acceptor.on_hello(dialer.hello()))
    with pytest.raises(AuthenticationError):
        acceptor.on_proof(proof)
    assert acceptor.peer_id is None


def test_an_acceptor_with_the_wrong_secret_is_refused() -> None:
    dialer = DialerHandshake(TEST_SECRET, "n1", PeerRole.NODE)
    hello = dialer.hello()
    challenge = AcceptorHandshake(WRONG_SECRET, "n2").on_hello(hello)
    dialer.on_challenge(challenge)
    # The impostor cannot check the dialer's proof; suppose it welcomes it anyway.
    forged = compute_proof(
        WRONG_SECRET,
        ACCEPTOR_TO_DIALER,
        dialer_id="n1",
        dialer_role=PeerRole.NODE,
        acceptor_id="n2",
        dialer_nonce=hello.nonce,
        acceptor_nonce=challenge.nonce,
    )
    with pytest.raises(AuthenticationError):
        dialer.on_welcome(Welcome(proof=forged))
    assert dialer.peer_id is None


def test_a_replayed_proof_fails_against_a_fresh_nonce() -> None:
    dialer = DialerHandshake(TEST_SECRET, "n1", PeerRole.NODE)
    hello, _, proof, _ = run_handshake(dialer, AcceptorHandshake(TEST_SECRET, "n2"))
    replayed = AcceptorHandshake(TEST_SECRET, "n2")
    assert isinstance(hello, Hello) and isinstance(proof, Proof)
    replayed.on_hello(hello)
    with pytest.raises(AuthenticationError):
        replayed.on_proof(proof)


def test_a_proof_reflected_back_to_its_sender_fails() -> None:
    """A man in the middle without the secret returns the dialer's own proof as the
    acceptor's: the direction in the transcript makes them differ."""
    dialer = DialerHandshake(TEST_SECRET, "n1", PeerRole.NODE)
    fake = AcceptorHandshake(WRONG_SECRET, "n2")
    proof = dialer.on_challenge(fake.on_hello(dialer.hello()))
    with pytest.raises(AuthenticationError):
        dialer.on_welcome(Welcome(proof=proof.proof))


def test_proofs_bind_direction_identities_role_and_both_nonces() -> None:
    base = {
        "dialer_id": "n1",
        "dialer_role": PeerRole.NODE,
        "acceptor_id": "n2",
        "dialer_nonce": bytes(32),
        "acceptor_nonce": bytes(range(32)),
    }
    reference = compute_proof(TEST_SECRET, DIALER_TO_ACCEPTOR, **base)  # type: ignore[arg-type]
    variants = [
        compute_proof(TEST_SECRET, ACCEPTOR_TO_DIALER, **base),  # type: ignore[arg-type]
        compute_proof(WRONG_SECRET, DIALER_TO_ACCEPTOR, **base),  # type: ignore[arg-type]
    ]
    for key, other in [
        ("dialer_id", "n3"),
        ("dialer_role", PeerRole.CLIENT),
        ("acceptor_id", "n3"),
        ("dialer_nonce", bytes(31) + b"\x01"),
        ("acceptor_nonce", bytes(32)),
    ]:
        variants.append(
            compute_proof(TEST_SECRET, DIALER_TO_ACCEPTOR, **{**base, key: other})  # type: ignore[arg-type]
        )
    # Identities swapped must not collide either (no ambiguous concatenation).
    swapped = {**base, "dialer_id": "n2", "acceptor_id": "n1"}
    variants.append(compute_proof(TEST_SECRET, DIALER_TO_ACCEPTOR, **swapped))  # type: ignore[arg-type]
    assert reference not in variants
    assert len(set(variants)) == len(variants)


def test_the_dialer_checks_it_reached_the_node_it_meant() -> None:
    dialer = DialerHandshake(TEST_SECRET, "n1", PeerRole.NODE, expected_peer="n2")
    with pytest.raises(AuthenticationError):
        dialer.on_challenge(AcceptorHandshake(TEST_SECRET, "n3").on_hello(dialer.hello()))


def test_a_handshake_with_oneself_is_refused() -> None:
    dialer = DialerHandshake(TEST_SECRET, "n1", PeerRole.NODE)
    with pytest.raises(AuthenticationError):
        AcceptorHandshake(TEST_SECRET, "n1").on_hello(dialer.hello())
    nonce = bytes(range(32))
    echo = DialerHandshake(TEST_SECRET, "n1", PeerRole.NODE, nonce=nonce)
    with pytest.raises(AuthenticationError):
        echo.on_challenge(Challenge(node_id="n2", nonce=nonce))


def test_out_of_order_messages_are_refused() -> None:
    dialer = DialerHandshake(TEST_SECRET, "n1", PeerRole.NODE)
    acceptor = AcceptorHandshake(TEST_SECRET, "n2")
    with pytest.raises(AuthenticationError):
        acceptor.on_proof(Proof(proof=bytes(32)))
    with pytest.raises(AuthenticationError):
        dialer.on_welcome(Welcome(proof=bytes(32)))
    challenge = acceptor.on_hello(dialer.hello())
    with pytest.raises(AuthenticationError):
        acceptor.on_hello(dialer.hello())
    dialer.on_challenge(challenge)
    with pytest.raises(AuthenticationError):
        dialer.on_challenge(challenge)


def test_secrets_must_be_long_enough() -> None:
    with pytest.raises(ValueError):
        check_secret(b"x" * (MIN_SECRET_BYTES - 1))
    with pytest.raises(ValueError):
        check_secret(b"x" * (MAX_SECRET_BYTES + 1))
    with pytest.raises(TypeError):
        check_secret("a string secret")  # type: ignore[arg-type]
    assert check_secret(b"x" * MIN_SECRET_BYTES)


# --- attacks on a real server ---------------------------------------------------------


class RawPeer:
    """A bare socket speaking frames by hand: the attacker."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.codec = Codec()
        self.sent = bytearray()

    @classmethod
    async def connect(cls, address: tuple[str, int]) -> RawPeer:
        reader, writer = await asyncio.open_connection(*address)
        return cls(reader, writer)

    def send(self, data: bytes) -> None:
        self.sent += data
        self.writer.write(data)

    def send_message(self, message: WireMessage) -> None:
        self.send(encode_frame(message))

    async def receive(self) -> WireMessage | None:
        """The next message, or None once the server closed the connection."""

        async def read() -> WireMessage | None:
            while True:
                event = self.codec.next_event()
                if event is CLOSED:
                    return None
                if event is not NEED_DATA and event is not NEED_BUFFER:
                    return event
                try:
                    data = await self.reader.read(65536)
                except ConnectionResetError:
                    data = b""
                self.codec.receive_data(data)

        return await asyncio.wait_for(read(), READ_S)

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionResetError):
            await self.writer.wait_closed()


async def told_and_closed(peer: RawPeer) -> RefusalReason:
    """The server's refusal on ``peer``, which must be its last frame before closing."""
    refusal = await peer.receive()
    assert isinstance(refusal, Refused), refusal
    assert await peer.receive() is None
    return refusal.reason


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


async def honest_ping_works(mesh: Mesh, n: int) -> None:
    """The honest peer b calls a, and a Raft message from b reaches a."""
    assert await mesh["b"].call("a", PING, Ping(n)) == Ping(n + 1)


def setup_server(mesh: Mesh, delivered: list[Message], handled: list[int]) -> None:
    async def ping(request: Ping, context: CallContext) -> Ping:
        handled.append(request.n)
        return Ping(request.n + 1)

    mesh["a"].serve(PING, ping)
    mesh["a"].on_raft(1, delivered.append)


async def test_wrong_secret_is_refused_and_the_server_keeps_serving(clock: ManualClock) -> None:
    delivered: list[Message] = []
    handled: list[int] = []
    async with Mesh(["a", "b"], clock=clock) as mesh:
        setup_server(mesh, delivered, handled)
        await honest_ping_works(mesh, 1)
        attacker = await RawPeer.connect(mesh["a"].address)
        handshake = DialerHandshake(WRONG_SECRET, "b", PeerRole.NODE)
        attacker.send_message(handshake.hello())
        challenge = await attacker.receive()
        assert isinstance(challenge, Challenge)
        attacker.send_message(handshake.on_challenge(challenge))
        attacker.send_message(RaftFrame(group=1, message=Heartbeat(term=9, sender="b", to="a")))
        # No welcome: told why, then closed.
        assert await told_and_closed(attacker) is RefusalReason.AUTHENTICATION_FAILED
        await attacker.close()
        await eventually(mesh["a"], lambda: mesh["a"].stats.auth_failures == 1)
        await honest_ping_works(mesh, 2)
        assert handled == [1, 2]
        assert delivered == []


async def test_a_wrong_secret_transport_cannot_connect(clock: ManualClock) -> None:
    async with Mesh(["a"], clock=clock) as mesh:
        intruder = Transport(
            "b", WRONG_SECRET, peers={"a": mesh["a"].address}, clock=clock, listen=None
        )
        async with intruder:
            intruder.send_raft(1, Heartbeat(term=1, sender="b", to="a"))
            await eventually([intruder, mesh["a"]], lambda: mesh["a"].stats.auth_failures == 1)
            await eventually(intruder, lambda: intruder.stats.dial_failures == 1)
            assert not intruder.connected("a")
            assert mesh["a"].connection_count == 0


async def test_a_replayed_handshake_is_refused(clock: ManualClock) -> None:
    delivered: list[Message] = []
    handled: list[int] = []
    async with Mesh(["a", "b"], clock=clock) as mesh:
        setup_server(mesh, delivered, handled)
        # Record an honest client's whole side of a handshake and its first frame.
        honest = await RawPeer.connect(mesh["a"].address)
        handshake = DialerHandshake(TEST_SECRET, "b", PeerRole.NODE)
        honest.send_message(handshake.hello())
        challenge = await honest.receive()
        assert isinstance(challenge, Challenge)
        honest.send_message(handshake.on_challenge(challenge))
        welcome = await honest.receive()
        assert isinstance(welcome, Welcome)
        handshake.on_welcome(welcome)
        honest.send_message(RaftFrame(group=1, message=Heartbeat(term=3, sender="b", to="a")))
        await eventually(mesh["a"], lambda: len(delivered) == 1)
        recording = bytes(honest.sent)
        await honest.close()
        # Replay it, byte for byte, on a new connection.
        replayer = await RawPeer.connect(mesh["a"].address)
        replayer.send(recording)
        assert isinstance(await replayer.receive(), Challenge)  # a fresh one
        assert await told_and_closed(replayer) is RefusalReason.AUTHENTICATION_FAILED
        await replayer.close()
        await eventually(mesh["a"], lambda: mesh["a"].stats.auth_failures == 1)
        assert len(delivered) == 1
        await honest_ping_works(mesh, 5)


@pytest.mark.parametrize(
    "first",
    [
        RaftFrame(group=1, message=Heartbeat(term=9, sender="b", to="a")),
        RpcRequest(call_id=1, method="ping", timeout_ms=1000, body=msgspec.msgpack.encode(Ping(1))),
        Proof(proof=bytes(32)),
        Welcome(proof=bytes(32)),
    ],
    ids=["raft", "call", "proof", "welcome"],
)
async def test_frames_without_a_handshake_are_refused(
    clock: ManualClock, first: WireMessage
) -> None:
    delivered: list[Message] = []
    handled: list[int] = []
    async with Mesh(["a", "b"], clock=clock) as mesh:
        setup_server(mesh, delivered, handled)
        attacker = await RawPeer.connect(mesh["a"].address)
        attacker.send_message(first)
        assert await attacker.receive() is None
        await attacker.close()
        await eventually(mesh["a"], lambda: mesh["a"].stats.protocol_errors == 1)
        await honest_ping_works(mesh, 7)
        assert delivered == []
        assert handled == [7]


async def test_a_silent_peer_is_cut_off_after_the_handshake_timeout(clock: ManualClock) -> None:
    limits = Limits(handshake_timeout_s=3.0, first_frame_timeout_s=3.0)
    async with Mesh(["a", "b"], clock=clock, limits=limits) as mesh:
        mesh["a"].serve(PING, answer)
        silent = await RawPeer.connect(mesh["a"].address)
        await eventually(mesh["a"], lambda: mesh["a"].handshakes_in_progress == 1)
        clock.advance(2.9)
        await honest_ping_works(mesh, 1)  # still serving while the silent one waits
        assert mesh["a"].stats.handshake_timeouts == 0
        clock.advance(0.2)
        assert await told_and_closed(silent) is RefusalReason.TIMED_OUT
        await silent.close()
        assert mesh["a"].stats.handshake_timeouts == 1
        await honest_ping_works(mesh, 2)


async def answer(request: Ping, context: CallContext) -> Ping:
    return Ping(request.n + 1)


async def test_a_slow_handshake_is_cut_off_too(clock: ManualClock) -> None:
    """Sending the hello and then stalling does not buy more time."""
    async with Mesh(["a", "b"], clock=clock, limits=Limits(handshake_timeout_s=3.0)) as mesh:
        slow = await RawPeer.connect(mesh["a"].address)
        slow.send_message(DialerHandshake(TEST_SECRET, "b", PeerRole.NODE).hello())
        assert isinstance(await slow.receive(), Challenge)
        clock.advance(3.0)
        assert await told_and_closed(slow) is RefusalReason.TIMED_OUT
        await slow.close()
        assert mesh["a"].stats.handshake_timeouts == 1


async def test_unauthenticated_connections_are_bounded(clock: ManualClock) -> None:
    """Beyond the slots, a newcomer evicts the oldest silent connection (which is told
    why) rather than being refused: the count stays bounded."""
    limits = Limits(max_handshaking=2)
    async with Mesh(["a", "b"], clock=clock, limits=limits) as mesh:
        mesh["a"].serve(PING, answer)
        first: list[RawPeer] = []
        for _ in range(2):
            first.append(await RawPeer.connect(mesh["a"].address))
            await eventually(mesh["a"], lambda: mesh["a"].handshakes_in_progress == len(first))
        extra = await RawPeer.connect(mesh["a"].address)
        assert await told_and_closed(first[0]) is RefusalReason.TOO_MANY_CONNECTIONS
        await eventually(mesh["a"], lambda: mesh["a"].stats.handshakes_evicted == 1)
        assert mesh["a"].handshakes_in_progress == 2
        assert mesh["a"].stats.connections_refused == 0
        for peer in [*first, extra]:
            await peer.close()
        await eventually(mesh["a"], lambda: mesh["a"].handshakes_in_progress == 0)
        await honest_ping_works(mesh, 3)


async def test_an_oversized_hello_is_refused_before_it_is_buffered(clock: ManualClock) -> None:
    async with Mesh(["a", "b"], clock=clock) as mesh:
        attacker = await RawPeer.connect(mesh["a"].address)
        big = RpcRequest(call_id=1, method="ping", timeout_ms=10, body=bytes(4096))
        attacker.send(encode_frame(big)[:100])  # the header alone announces too much
        assert await attacker.receive() is None
        await attacker.close()
        await eventually(mesh["a"], lambda: mesh["a"].stats.protocol_errors == 1)
