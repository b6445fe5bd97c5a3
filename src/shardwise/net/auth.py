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

**Users.** A client may log in as a user instead, with a password the acceptor knows only
as a SCRAM-SHA-256 verifier (``model/scram.py``). The same four messages carry it: the
hello names the user, the challenge carries the verifier's salt and iteration count, the
proof is SCRAM's ClientProof and the welcome its ServerSignature, both over the same kind
of transcript (plus the salt and count). A client that logs in never holds the cluster
secret, and may never act as a node: a hello naming a user with the node role is refused.
A user the acceptor does not know gets a decoy salt and fails at the proof like a wrong
password, so the handshake does not tell who exists.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final, TypeAlias

import msgspec

from shardwise.errors import AuthenticationError
from shardwise.model import scram
from shardwise.model.scram import ScramVerifier
from shardwise.net.wire import NONCE_BYTES, Challenge, Hello, PeerRole, Proof, Welcome

MIN_SECRET_BYTES: Final = 16
"""Shortest cluster secret accepted: 128 bits."""

MAX_SECRET_BYTES: Final = 1024
"""Longest cluster secret accepted (HMAC hashes longer keys anyway)."""

AUTH_LABEL: Final = b"shardwise-net-auth/1"
"""Domain separation: a proof made for this protocol is useless anywhere else."""

SCRAM_LABEL: Final = b"shardwise-net-scram/1"
"""Domain separation for a user's login transcript."""

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


UserLookup = Callable[[str], ScramVerifier | None]
"""How an acceptor finds a user's verifier (``None``: no such user)."""


@dataclass(frozen=True, slots=True)
class Login:
    """A user's name and password, for a client that logs in rather than holding the
    cluster secret."""

    user: str
    password: str = field(repr=False)


Credentials: TypeAlias = "bytes | Login"
"""What a client proves: the cluster secret (it may then do anything), or a user's
login (it may do what the user's roles allow)."""


def credentials_secret(credentials: Credentials) -> bytes | None:
    return credentials if isinstance(credentials, bytes) else None


def credentials_login(credentials: Credentials) -> Login | None:
    return credentials if isinstance(credentials, Login) else None


def scram_transcript(
    *,
    dialer_id: str,
    user: str,
    acceptor_id: str,
    dialer_nonce: bytes,
    acceptor_nonce: bytes,
    salt: bytes,
    iterations: int,
) -> bytes:
    """SCRAM's AuthMessage for this protocol: everything both sides saw."""
    return _encode(
        (
            SCRAM_LABEL,
            dialer_id,
            int(PeerRole.CLIENT),
            user,
            acceptor_id,
            dialer_nonce,
            acceptor_nonce,
            salt,
            iterations,
        )
    )


class DialerHandshake:
    """The dialing side. ``expected_peer`` is the node we meant to reach, if we know it."""

    def __init__(
        self,
        secret: bytes | None,
        node_id: str,
        role: PeerRole,
        *,
        expected_peer: str | None = None,
        nonce: bytes | None = None,
        login: Login | None = None,
    ) -> None:
        if login is None and secret is None:
            raise ValueError("a dialer needs the cluster secret or a user login")
        if login is not None and role is not PeerRole.CLIENT:
            raise ValueError("only a client logs in as a user")
        self._secret = check_secret(secret) if login is None and secret is not None else b""
        self._login = login
        self._salted = b""
        self.node_id = node_id
        self.role = role
        self.expected_peer = expected_peer
        self._nonce = nonce if nonce is not None else secrets.token_bytes(NONCE_BYTES)
        self._challenge: Challenge | None = None
        self.peer_id: str | None = None
        """The acceptor's id, set once it has proved itself."""

    def hello(self) -> Hello:
        user = self._login.user if self._login is not None else ""
        return Hello(node_id=self.node_id, role=self.role, nonce=self._nonce, user=user)

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
        if self._login is not None:
            if not challenge.salt:
                raise AuthenticationError(f"{challenge.node_id!r} does not take user logins")
            try:
                self._salted = scram.salted_password(
                    self._login.password, challenge.salt, challenge.iterations
                )
            except ValueError as exc:
                raise AuthenticationError(f"{challenge.node_id!r}: {exc}") from None
            return Proof(proof=scram.client_proof(self._salted, self._scram_transcript()))
        if challenge.salt:
            raise AuthenticationError(f"{challenge.node_id!r} asked a node for a password")
        return Proof(proof=self._proof(DIALER_TO_ACCEPTOR))

    def on_welcome(self, welcome: Welcome) -> str:
        """Check the acceptor's proof; return its id."""
        if self._challenge is None:
            raise AuthenticationError("welcome before challenge")
        if self._login is not None:
            expected = scram.server_signature(
                scram.server_key(self._salted), self._scram_transcript()
            )
            if not hmac.compare_digest(welcome.proof, expected):
                raise AuthenticationError(
                    f"{self._challenge.node_id!r} does not hold the verifier of user "
                    f"{self._login.user!r}"
                )
            self.peer_id = self._challenge.node_id
            return self.peer_id
        if not hmac.compare_digest(welcome.proof, self._proof(ACCEPTOR_TO_DIALER)):
            raise AuthenticationError(
                f"{self._challenge.node_id!r} does not know the cluster secret"
            )
        self.peer_id = self._challenge.node_id
        return self.peer_id

    def _scram_transcript(self) -> bytes:
        assert self._challenge is not None and self._login is not None
        return scram_transcript(
            dialer_id=self.node_id,
            user=self._login.user,
            acceptor_id=self._challenge.node_id,
            dialer_nonce=self._nonce,
            acceptor_nonce=self._challenge.nonce,
            salt=self._challenge.salt,
            iterations=self._challenge.iterations,
        )

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

    def __init__(
        self,
        secret: bytes,
        node_id: str,
        *,
        nonce: bytes | None = None,
        users: UserLookup | None = None,
    ) -> None:
        """``users`` finds the verifier of a user who logs in; without it, only holders
        of the cluster secret get in."""
        self._secret = check_secret(secret)
        self._users = users
        self._verifier: ScramVerifier | None = None
        self._known_user = False
        self.peer_user: str | None = None
        """The user the dialer logged in as (``None``: it proved the cluster secret)."""
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
        if hello.user:
            if hello.role is not PeerRole.CLIENT:
                raise AuthenticationError(f"{hello.node_id!r}: only a client logs in as a user")
            found = self._users(hello.user) if self._users is not None else None
            self._known_user = found is not None
            self._verifier = found or scram.decoy_verifier(self._secret, hello.user)
            return Challenge(
                node_id=self.node_id,
                nonce=self._nonce,
                salt=self._verifier.salt,
                iterations=self._verifier.iterations,
            )
        return Challenge(node_id=self.node_id, nonce=self._nonce)

    def on_proof(self, proof: Proof) -> Welcome:
        """Check the dialer's proof; on success the dialer is authenticated."""
        hello = self._hello
        if hello is None:
            raise AuthenticationError("proof before hello")
        if self._verifier is not None:
            return self._on_scram_proof(hello, self._verifier, proof)
        if not hmac.compare_digest(proof.proof, self._proof(DIALER_TO_ACCEPTOR)):
            raise AuthenticationError(f"{hello.node_id!r} does not know the cluster secret")
        self.peer_id = hello.node_id
        self.peer_role = hello.role
        return Welcome(proof=self._proof(ACCEPTOR_TO_DIALER))

    def _on_scram_proof(self, hello: Hello, verifier: ScramVerifier, proof: Proof) -> Welcome:
        transcript = scram_transcript(
            dialer_id=hello.node_id,
            user=hello.user,
            acceptor_id=self.node_id,
            dialer_nonce=hello.nonce,
            acceptor_nonce=self._nonce,
            salt=verifier.salt,
            iterations=verifier.iterations,
        )
        # Check the proof even for a decoy, so both failures take the same time.
        valid = scram.check_client_proof(verifier, transcript, proof.proof)
        if not (valid and self._known_user):
            raise AuthenticationError(f"password authentication failed for user {hello.user!r}")
        self.peer_id = hello.node_id
        self.peer_role = hello.role
        self.peer_user = hello.user
        return Welcome(proof=scram.server_signature(verifier.server_key, transcript))

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
