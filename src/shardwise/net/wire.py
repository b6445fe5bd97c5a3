"""The messages that travel between shardwise processes, and their limits.

Every message is a frozen msgspec Struct encoded as a MessagePack array whose first
element is a tag naming its type and that type's version (``"raft/1"``). Decoding goes
through one typed decoder for the whole union, so a body either becomes a fully validated
message or is rejected: never a half-built object. Fields carry their bounds as
``msgspec.Meta`` constraints (lengths of ids and nonces, ranges of ids and timeouts), so a
peer cannot smuggle an oversized id or a negative call id past the decoder.

To change a message incompatibly, add a new Struct with the next version in its tag
(``"raft/2"``) and keep accepting the old one while any peer may still send it; adding a
field with a default at the end is compatible and needs no new version.
"""

from __future__ import annotations

import enum
from typing import Annotated, Final, TypeAlias

import msgspec

from shardwise.model.access import MAX_ACCESS_NAME
from shardwise.model.scram import MAX_ITERATIONS, MAX_SALT_BYTES
from shardwise.raft.messages import Message

PROTOCOL_VERSION: Final = 1
"""The frame format's version, in every frame header (see ``frames.py``)."""

NONCE_BYTES: Final = 32
"""Random bytes each side contributes to a handshake: 256 bits, never repeated."""

PROOF_BYTES: Final = 32
"""An HMAC-SHA256 proof."""

MAX_NODE_ID_CHARS: Final = 128
"""Longest node or client id accepted, in characters."""

MAX_METHOD_CHARS: Final = 128
"""Longest RPC method name accepted, in characters."""

MAX_FAILURE_MESSAGE_CHARS: Final = 1024
"""Longest error text sent with a failed call: enough to explain, too short to leak a
traceback or to be a channel for bulk data."""

MAX_REFUSAL_MESSAGE_CHARS: Final = 200
"""Longest explanation sent with a refusal: it travels before the dialer is
authenticated, so the frame must fit the 512-byte handshake frame limit."""

MAX_GROUP_ID: Final = (1 << 63) - 1
"""Group ids are non-negative 63-bit integers (they fit a signed 64-bit column)."""

MAX_CALL_ID: Final = (1 << 63) - 1
"""Call ids are non-negative 63-bit integers, unique per caller."""

MAX_RPC_TIMEOUT_MS: Final = 10 * 60 * 1000
"""Longest deadline a call may carry (ten minutes)."""

NodeId: TypeAlias = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_NODE_ID_CHARS)]
Nonce: TypeAlias = Annotated[bytes, msgspec.Meta(min_length=NONCE_BYTES, max_length=NONCE_BYTES)]
ProofBytes: TypeAlias = Annotated[
    bytes, msgspec.Meta(min_length=PROOF_BYTES, max_length=PROOF_BYTES)
]
GroupId: TypeAlias = Annotated[int, msgspec.Meta(ge=0, le=MAX_GROUP_ID)]
CallId: TypeAlias = Annotated[int, msgspec.Meta(ge=0, le=MAX_CALL_ID)]
MethodName: TypeAlias = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_METHOD_CHARS)]
TimeoutMs: TypeAlias = Annotated[int, msgspec.Meta(ge=1, le=MAX_RPC_TIMEOUT_MS)]
FailureText: TypeAlias = Annotated[str, msgspec.Meta(max_length=MAX_FAILURE_MESSAGE_CHARS)]
RefusalText: TypeAlias = Annotated[str, msgspec.Meta(max_length=MAX_REFUSAL_MESSAGE_CHARS)]


UserName: TypeAlias = Annotated[str, msgspec.Meta(max_length=MAX_ACCESS_NAME)]
ScramSalt: TypeAlias = Annotated[bytes, msgspec.Meta(max_length=MAX_SALT_BYTES)]
ScramIterations: TypeAlias = Annotated[int, msgspec.Meta(ge=0, le=MAX_ITERATIONS)]


def check_node_id(node_id: str) -> str:
    """``node_id`` if it fits the wire (1 to :data:`MAX_NODE_ID_CHARS` characters)."""
    if not 0 < len(node_id) <= MAX_NODE_ID_CHARS:
        raise ValueError(f"a node id must be 1 to {MAX_NODE_ID_CHARS} characters")
    return node_id


class PeerRole(enum.IntEnum):
    """What the dialing side is: a cluster node (Raft traffic and calls both ways) or a
    client (it only makes calls)."""

    NODE = 0
    CLIENT = 1


class FailureCode(enum.IntEnum):
    """Why a call failed at the callee."""

    UNKNOWN_METHOD = 1
    """No handler is registered under the method name."""
    BAD_REQUEST = 2
    """The request body does not validate as the method's request type."""
    OVERLOADED = 3
    """Too many calls are running at the callee; the call was not executed."""
    DEADLINE_EXCEEDED = 4
    """The handler did not finish within the call's deadline; its effect is unknown."""
    INTERNAL = 5
    """The handler raised; its effect is unknown."""
    SHUTTING_DOWN = 6
    """The callee is shutting down; the call was not executed."""


class GoodbyeReason(enum.IntEnum):
    """Why a side is about to close a connection (its last frame)."""

    SHUTDOWN = 1
    """The transport is closing."""
    SUPERSEDED = 2
    """Another connection between the same two nodes won (see DESIGN.md, ownership)."""


class RefusalReason(enum.IntEnum):
    """Why an acceptor turns a connection away during the handshake. Only
    ``AUTHENTICATION_FAILED`` says anything about the dialer's secret."""

    TOO_MANY_CONNECTIONS = 1
    """The connection cap is reached, or this connection was the oldest of too many
    still in their handshake and made room for a newer one: retry."""
    SHUTTING_DOWN = 2
    """The acceptor is closing: try another replica."""
    AUTHENTICATION_FAILED = 3
    """The dialer's proof did not verify: it does not know the cluster's secret (or
    replayed or reflected a handshake)."""
    TIMED_OUT = 4
    """The handshake did not finish within the acceptor's deadline."""
    NOT_ADMITTED = 5
    """The dialer proved the secret but the acceptor will not take it (too many peers,
    a cut link): the message says why."""


class _Wire(msgspec.Struct, frozen=True, array_like=True, tag_field="k"):
    """Base of every wire message: encoded as ``[tag, field, ...]``."""


# --- handshake (the only messages accepted before a peer is authenticated) ------------


class Hello(_Wire, tag="hello/1", frozen=True):
    """Dialer to acceptor: who I am and my fresh nonce."""

    node_id: NodeId
    role: PeerRole
    nonce: Nonce
    user: UserName = ""
    """A client logging in as a user (SCRAM, see auth.py); empty: the cluster secret."""


class Challenge(_Wire, tag="challenge/1", frozen=True):
    """Acceptor to dialer: who I am and my fresh nonce; prove you know the secret."""

    node_id: NodeId
    nonce: Nonce
    salt: ScramSalt = b""
    """For a user's login: the salt and iteration count of its password verifier."""
    iterations: ScramIterations = 0


class Proof(_Wire, tag="proof/1", frozen=True):
    """Dialer to acceptor: HMAC over both identities and both nonces, dialer's direction."""

    proof: ProofBytes


class Welcome(_Wire, tag="welcome/1", frozen=True):
    """Acceptor to dialer: accepted; and the acceptor's own proof, its direction."""

    proof: ProofBytes


class Refused(_Wire, tag="refuse/1", frozen=True):
    """Acceptor to dialer, instead of a challenge or a welcome: the connection is turned
    away, and why. The acceptor closes the connection after it."""

    reason: RefusalReason
    message: RefusalText = ""


# --- session (only after the handshake) ----------------------------------------------


class RaftFrame(_Wire, tag="raft/1", frozen=True):
    """A one-way Raft message for one group."""

    group: GroupId
    message: Message


class RpcRequest(_Wire, tag="call/1", frozen=True):
    """A call: ``body`` is the method's request type, MessagePack-encoded."""

    call_id: CallId
    method: MethodName
    timeout_ms: TimeoutMs
    """The caller's remaining budget: the callee gives up after it (clocks are not shared,
    so a relative time, not a deadline, crosses the wire)."""
    body: bytes


class RpcResponse(_Wire, tag="reply/1", frozen=True):
    """A call's result: ``body`` is the method's response type, MessagePack-encoded."""

    call_id: CallId
    body: bytes


class RpcFailure(_Wire, tag="fail/1", frozen=True):
    """A call failed at the callee."""

    call_id: CallId
    code: FailureCode
    message: FailureText = ""


class Goodbye(_Wire, tag="bye/1", frozen=True):
    """The sender writes nothing after this frame on this connection."""

    reason: GoodbyeReason


WireMessage: TypeAlias = (
    Hello
    | Challenge
    | Proof
    | Welcome
    | Refused
    | RaftFrame
    | RpcRequest
    | RpcResponse
    | RpcFailure
    | Goodbye
)

WIRE_TYPES: Final[tuple[type[WireMessage], ...]] = (
    Hello,
    Challenge,
    Proof,
    Welcome,
    Refused,
    RaftFrame,
    RpcRequest,
    RpcResponse,
    RpcFailure,
    Goodbye,
)

HANDSHAKE_TYPES: Final[frozenset[type[WireMessage]]] = frozenset(
    {Hello, Challenge, Proof, Welcome, Refused}
)
"""The only types a connection accepts before it is authenticated."""


def _tag_of(cls: type[WireMessage]) -> str:
    tag = cls.__struct_config__.tag
    assert isinstance(tag, str)
    return tag


TYPE_VERSIONS: Final[dict[str, int]] = {
    name: int(version) for name, version in (_tag_of(cls).split("/") for cls in WIRE_TYPES)
}
"""Each wire type's name and the version this node speaks, from the tags."""


def type_name(message: WireMessage) -> str:
    """A message's tag without its version: ``"raft"``, ``"call"``, ..."""
    return _tag_of(type(message)).split("/", 1)[0]
