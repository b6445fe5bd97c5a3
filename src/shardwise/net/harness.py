"""Real transports on loopback, wired to each other, for tests of code that talks over
the network (this package's, and the services' above it).

Conditions are awaited, never slept for: :func:`eventually` re-checks a predicate after
each event any of the transports records, with a bound in real seconds that only a broken
test reaches.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Any, Final

from shardwise.net.transport import Transport
from shardwise.net.wire import (
    MAX_CALL_ID,
    NONCE_BYTES,
    PROOF_BYTES,
    Challenge,
    FailureCode,
    Goodbye,
    GoodbyeReason,
    Hello,
    PeerRole,
    Proof,
    RaftFrame,
    RefusalReason,
    Refused,
    RpcFailure,
    RpcRequest,
    RpcResponse,
    Welcome,
    WireMessage,
)
from shardwise.raft.messages import (
    NOOP_PAYLOAD,
    AppendEntries,
    AppendResponse,
    ConfChange,
    ConfChangeKind,
    Heartbeat,
    HeartbeatResponse,
    InstallSnapshot,
    Membership,
    Message,
    ReadIndexRequest,
    ReadIndexResponse,
    RequestVote,
    SnapshotResponse,
    TimeoutNow,
    VoteResponse,
    command_payload,
    conf_change_payload,
    encode_membership,
)
from shardwise.storage.types import LogEntry, SnapshotMeta

TEST_SECRET: Final = b"shardwise-test-secret-not-for-production"

WAIT_S: Final = 20.0
"""Real seconds a condition may take to come true before the test fails: far above what
loopback needs, far below the per-test timeout."""


async def eventually(
    transports: Transport | Iterable[Transport],
    predicate: Callable[[], bool],
    timeout_s: float = WAIT_S,
) -> None:
    """Wait until ``predicate()`` holds, re-checking after every event of ``transports``;
    ``TimeoutError`` after ``timeout_s`` real seconds."""
    group = [transports] if isinstance(transports, Transport) else list(transports)

    async def wait() -> None:
        while not predicate():
            waiters = [t.changed() for t in group]
            try:
                await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for waiter in waiters:
                    waiter.cancel()

    await asyncio.wait_for(wait(), timeout_s)


class Mesh:
    """Node transports named ``ids``, listening on loopback, each knowing the others'
    addresses. ``**options`` go to every :class:`Transport` (clock, limits, faults, ...).
    """

    def __init__(self, ids: Iterable[str], *, secret: bytes = TEST_SECRET, **options: Any) -> None:
        self.secret = secret
        self.options = options
        self.nodes: dict[str, Transport] = {
            node_id: Transport(node_id, secret, **options) for node_id in ids
        }
        self.clients: list[Transport] = []

    def __getitem__(self, node_id: str) -> Transport:
        return self.nodes[node_id]

    @property
    def all(self) -> list[Transport]:
        return [*self.nodes.values(), *self.clients]

    async def __aenter__(self) -> Mesh:
        try:
            for node in self.nodes.values():
                await node.start()
            for node in self.nodes.values():
                for other in self.nodes.values():
                    if other is not node:
                        node.set_peer(other.id, other.address)
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def client(self, client_id: str, **options: Any) -> Transport:
        """A started client transport that knows every node's address."""
        merged = {**self.options, **options}
        peers = {node_id: node.address for node_id, node in self.nodes.items()}
        client = Transport(client_id, self.secret, role=PeerRole.CLIENT, peers=peers, **merged)
        self.clients.append(client)
        await client.start()
        return client

    async def close(self) -> None:
        for transport in reversed(self.all):
            with contextlib.suppress(Exception):
                await transport.close()


# --- examples of every message ----------------------------------------------------------


def sample_raft_messages(snapshot_bytes: int = 4096) -> list[Message]:
    """One or more realistic instances of every Raft message type."""
    config = encode_membership(Membership(frozenset({"n1", "n2", "n3"}), frozenset({"n4"})))
    entries = (
        LogEntry(index=41, term=6, data=command_payload(b"\x01put\x00user:42\x00alice")),
        LogEntry(index=42, term=7, data=NOOP_PAYLOAD),
        LogEntry(
            index=43,
            term=7,
            data=conf_change_payload(ConfChange(ConfChangeKind.ADD_LEARNER, "n4")),
        ),
    )
    data = bytes(i * 7 % 256 for i in range(snapshot_bytes))
    return [
        AppendEntries(term=7, sender="n1", to="n2", prev_index=40, prev_term=6, entries=entries),
        AppendEntries(term=7, sender="n1", to="n3", prev_index=43, prev_term=7, commit=43),
        AppendResponse(term=7, sender="n2", to="n1", index=43),
        AppendResponse(
            term=7, sender="n3", to="n1", index=40, reject=True, hint_index=38, hint_term=5
        ),
        Heartbeat(term=7, sender="n1", to="n2", commit=43),
        Heartbeat(term=7, sender="n1", to="n3", commit=43, context=b"read-\x00\x01\x02\x03"),
        HeartbeatResponse(term=7, sender="n3", to="n1", context=b"read-\x00\x01\x02\x03"),
        RequestVote(term=8, sender="n2", to="n1", last_index=43, last_term=7, pre_vote=True),
        RequestVote(term=8, sender="n2", to="n3", last_index=43, last_term=7, transfer=True),
        VoteResponse(term=8, sender="n3", to="n2", granted=True),
        VoteResponse(term=8, sender="n1", to="n2", granted=False, pre_vote=True),
        InstallSnapshot(
            term=7,
            sender="n1",
            to="n4",
            meta=SnapshotMeta(index=1000, term=6, config=config),
            offset=len(data),
            total=3 * len(data),
            data=data,
            done=False,
        ),
        SnapshotResponse(term=7, sender="n4", to="n1", index=1000, offset=2 * len(data)),
        SnapshotResponse(term=7, sender="n4", to="n1", index=1000, offset=0, reject=True),
        TimeoutNow(term=7, sender="n1", to="n2"),
        ReadIndexRequest(term=7, sender="n3", to="n1", context=b"\xffctx"),
        ReadIndexResponse(term=7, sender="n1", to="n3", context=b"\xffctx", index=43),
    ]


def sample_wire_messages(snapshot_bytes: int = 4096) -> list[WireMessage]:
    """Realistic instances of every wire message type, Raft frames for every Raft type."""
    nonce_a = bytes(range(NONCE_BYTES))
    nonce_b = bytes(reversed(range(NONCE_BYTES)))
    proof = bytes(range(100, 100 + PROOF_BYTES))
    messages: list[WireMessage] = [
        Hello(node_id="n1", role=PeerRole.NODE, nonce=nonce_a),
        Hello(node_id="client-7f3a", role=PeerRole.CLIENT, nonce=nonce_b),
        Challenge(node_id="n2", nonce=nonce_b),
        Proof(proof=proof),
        Welcome(proof=proof[::-1]),
        *(Refused(reason=reason, message=f"because {reason.name}") for reason in RefusalReason),
    ]
    for group, message in enumerate(sample_raft_messages(snapshot_bytes)):
        messages.append(RaftFrame(group=group * 1_000_003, message=message))
    messages += [
        RpcRequest(call_id=1, method="kv.get", timeout_ms=2500, body=b"\x81\xa3key\xa4u:42"),
        RpcRequest(call_id=MAX_CALL_ID, method="shard.pull", timeout_ms=1, body=b""),
        RpcResponse(call_id=1, body=b"\x81\xa5value\xa5alice"),
        RpcResponse(call_id=2, body=b""),
        *(RpcFailure(call_id=3, code=code, message=f"because {code.name}") for code in FailureCode),
        *(Goodbye(reason=reason) for reason in GoodbyeReason),
    ]
    return messages
