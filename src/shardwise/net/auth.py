"""Mutual authentication by a shared cluster secret: a sans-IO challenge-response.

Four messages, each side contributing a fresh 256-bit nonce::

    dialer   -> acceptor   Hello(dialer_id, role, dialer_nonce)
    acceptor -> dialer     Challenge(acceptor_id, acceptor_nonce)
    dialer   -> acceptor   Proof(HMAC(secret, transcript("dialer->acceptor")))
    acceptor -> dialer     Welcome(HMAC(secret, transcript("acceptor->dialer")))

The transcript binds the protocol label, the direction, both identities, the dialer's
role and both nonces, MessagePack-encoded so no two different transcripts share bytes.
Hence: the secret never crosses the wire; a recorded handshake replayed on a new
connection fails (the acceptor's nonce is new); a proof reflected back to its sender
fails (the direction differs); a proof cannot be moved to other identities. The
acceptor proves itself last, so a peer that does not know the secret learns nothing but
a random nonce. HMAC-SHA256 via :mod:`hmac`; proofs are compared in constant time.

This authenticates the two ends when the connection opens; it does not protect the bytes
that follow. Where the network is not trusted, run the connection over TLS as well.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import Final

import msgspec

from shardwise.errors import AuthenticationError
from shardwise.net.wire import NONCE_BYTES, Challenge, Hello, PeerRole, Proof, Welcome

MIN_SECRET_BYTES: Final = 16
"""Shortest cluster secret accepted: 128 bits."""

MAX_SECRET_BYTES: Final = 1024
"""Longest cluster secret accepted (HMAC hashes longer keys anyway)."""

AUTH_LABEL: Final = b"shardwise-net-auth/1"
"""Domain separation: a proof made for this protocol is useless anywhere else."""

DIALER_TO_ACCEPTOR: Final = b"dialer->acceptor"
ACCEPTOR_TO_DIALER: Final = b"acceptor->dialer"

_encode = msgspec.msgpack.Encoder().encode


def check_secret(secret: bytes) -> bytes:
    if not isinstance(secret, bytes):
        raise TypeError("the cluster secret must be bytes")
    if not MIN_SECRET_BYTES <= len(secret) <= MAX_SECRET_BYTES:
        raise ValueError(
            f"the cluster secret must be {MIN_SECRET_BYTES} to {MAX_SECRET_BYTES} bytes long"
        )
    return secret


def compute_proof(
    secret: bytes,
    direction: bytes,
    *,
    dialer_id: str,
    dialer_role: PeerRole,
    acceptor_id: str,
    dialer_nonce: bytes,
    acceptor_nonce: bytes,
) -> bytes:
    """HMAC-SHA256 over the whole transcript, for one direction."""
    transcript = _encode(
        (
            AUTH_LABEL,
            direction,
            dialer_id,
            int(dialer_role),
            acceptor_id,
            dialer_nonce,
            acceptor_nonce,
        )
    )
    return hmac.new(secret, transcript, hashlib.sha256).digest()


class DialerHandshake:
    """The dialing side. ``expected_peer`` is the node we meant to reach, if we know it."""

    def __init__(
        self,
        secret: bytes,
        node_id: str,
        role: PeerRole,
        *,
        expected_peer: str | None = None,
        nonce: bytes | None = None,
    ) -> None:
        self._secret = check_secret(secret)
        self.node_id = node_id
        self.role = role
        self.expected_peer = expected_peer
        self._nonce = nonce if nonce is not None else secrets.token_bytes(NONCE_BYTES)
        self._challenge: Challenge | None = None
        self.peer_id: str | None = None
        """The acceptor's id, set once it has proved itself."""

    def hello(self) -> Hello:
        return Hello(node_id=self.node_id, role=self.role, nonce=self._nonce)

    def on_challenge(self, challenge: Challenge) -> Proof:
        if self._challenge is not None:
            raise AuthenticationError("a second challenge in one handshake")
        if self.expected_peer is not None and challenge.node_id != self.expected_peer:
            raise AuthenticationError(
                f"dialed {self.expected_peer!r} but {challenge.node_id!r} answered"
            )
        if challenge.node_id == self.node_id or hmac.compare_digest(challenge.nonce, self._nonce):
            raise AuthenticationError("the handshake was reflected back to its sender")
        self._challenge = challenge
        return Proof(proof=self._proof(DIALER_TO_ACCEPTOR))

    def on_welcome(self, welcome: Welcome) -> str:
        """Check the acceptor's proof; return its id."""
        if self._challenge is None:
            raise AuthenticationError("welcome before challenge")
        if not hmac.compare_digest(welcome.proof, self._proof(ACCEPTOR_TO_DIALER)):
            raise AuthenticationError(
                f"{self._challenge.node_id!r} does not know the cluster secret"
            )
        self.peer_id = self._challenge.node_id
        return self.peer_id

    def _proof(self, direction: bytes) -> bytes:
        assert self._challenge is not None
        return compute_proof(
            self._secret,
            direction,
            dialer_id=self.node_id,
            dialer_role=self.role,
            acceptor_id=self._challenge.node_id,
            dialer_nonce=self._nonce,
            acceptor_nonce=self._challenge.nonce,
        )


class AcceptorHandshake:
    """The accepting side: it authenticates the dialer before it proves itself."""

    def __init__(self, secret: bytes, node_id: str, *, nonce: bytes | None = None) -> None:
        self._secret = check_secret(secret)
        self.node_id = node_id
        self._nonce = nonce if nonce is not None else secrets.token_bytes(NONCE_BYTES)
        self._hello: Hello | None = None
        self.peer_id: str | None = None
        """The dialer's id, set once it has proved itself."""
        self.peer_role: PeerRole | None = None

    @property
    def claimed_peer(self) -> Hello | None:
        """The dialer's (not yet proved) hello."""
        return self._hello

    def on_hello(self, hello: Hello) -> Challenge:
        if self._hello is not None:
            raise AuthenticationError("a second hello in one handshake")
        if hello.node_id == self.node_id or hmac.compare_digest(hello.nonce, self._nonce):
            raise AuthenticationError("the handshake was reflected back to its sender")
        self._hello = hello
        return Challenge(node_id=self.node_id, nonce=self._nonce)

    def on_proof(self, proof: Proof) -> Welcome:
        """Check the dialer's proof; on success the dialer is authenticated."""
        hello = self._hello
        if hello is None:
            raise AuthenticationError("proof before hello")
        if not hmac.compare_digest(proof.proof, self._proof(DIALER_TO_ACCEPTOR)):
            raise AuthenticationError(f"{hello.node_id!r} does not know the cluster secret")
        self.peer_id = hello.node_id
        self.peer_role = hello.role
        return Welcome(proof=self._proof(ACCEPTOR_TO_DIALER))

    def _proof(self, direction: bytes) -> bytes:
        hello = self._hello
        assert hello is not None
        return compute_proof(
            self._secret,
            direction,
            dialer_id=hello.node_id,
            dialer_role=hello.role,
            acceptor_id=self.node_id,
            dialer_nonce=hello.nonce,
            acceptor_nonce=self._nonce,
        )
