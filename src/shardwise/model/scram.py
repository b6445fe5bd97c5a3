"""Password verifiers and proofs of SCRAM-SHA-256 (RFC 5802, RFC 7677), as pure functions.

A server never holds a password, only its *verifier*: a salt, an iteration count and two
keys derived from the salted password. From them it can check a client's proof and prove
itself back, but it cannot log in as the user: a stolen verifier is not a password. The
verifier's text form is PostgreSQL's (``SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:
<ServerKey>``, base64), so a verifier made here works wherever PostgreSQL's does.

The exchange (``net/auth.py`` carries it in the four handshake messages)::

    client -> server   user, client nonce
    server -> client   server nonce, salt, iterations
    client -> server   ClientProof  = ClientKey XOR HMAC(StoredKey, AuthMessage)
    server -> client   ServerSignature = HMAC(ServerKey, AuthMessage)

where ``AuthMessage`` is the transcript both sides saw. The server checks the proof by
recovering ClientKey and hashing it to StoredKey; the client checks the signature, so a
server that does not hold the verifier learns nothing and cannot pose as the cluster.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import unicodedata
from typing import Annotated, Final

import msgspec

SCRAM_ITERATIONS: Final = 4096
"""PBKDF2 rounds for new verifiers: PostgreSQL's default. The client pays them once per
connection (a few milliseconds); the server never does, so logins cannot be used to
make a server burn CPU."""

MIN_ITERATIONS: Final = 4096
"""Fewest rounds a verifier may have (RFC 7677's minimum)."""

MAX_ITERATIONS: Final = 1_000_000
"""Most rounds a verifier may have: a server-chosen count a client must not be made to
spend seconds on."""

SALT_BYTES: Final = 16
KEY_BYTES: Final = 32
"""SHA-256's output: StoredKey, ServerKey, proofs and signatures."""

MAX_SALT_BYTES: Final = 64
MAX_PASSWORD_CHARS: Final = 1024
"""Longest password accepted (PBKDF2 hashes a long one first anyway)."""

VERIFIER_PREFIX: Final = "SCRAM-SHA-256"


class ScramVerifier(msgspec.Struct, frozen=True, array_like=True):
    """What a server stores for a password."""

    salt: Annotated[bytes, msgspec.Meta(min_length=1, max_length=MAX_SALT_BYTES)]
    iterations: Annotated[int, msgspec.Meta(ge=MIN_ITERATIONS, le=MAX_ITERATIONS)]
    stored_key: Annotated[bytes, msgspec.Meta(min_length=KEY_BYTES, max_length=KEY_BYTES)]
    server_key: Annotated[bytes, msgspec.Meta(min_length=KEY_BYTES, max_length=KEY_BYTES)]

    def to_text(self) -> str:
        """PostgreSQL's form of the verifier."""
        b64 = base64.b64encode
        return (
            f"{VERIFIER_PREFIX}${self.iterations}:{b64(self.salt).decode()}"
            f"${b64(self.stored_key).decode()}:{b64(self.server_key).decode()}"
        )

    @classmethod
    def from_text(cls, text: str) -> ScramVerifier:
        """Parse PostgreSQL's form; ``ValueError`` if it is not one."""
        try:
            prefix, params, keys = text.split("$")
            iterations, salt = params.split(":")
            stored_key, server_key = keys.split(":")
            if prefix != VERIFIER_PREFIX:
                raise ValueError(prefix)
            verifier = cls(
                base64.b64decode(salt, validate=True),
                int(iterations),
                base64.b64decode(stored_key, validate=True),
                base64.b64decode(server_key, validate=True),
            )
            return msgspec.convert(msgspec.to_builtins(verifier), cls)
        except (ValueError, binascii.Error, msgspec.ValidationError) as exc:
            raise ValueError(f"not a {VERIFIER_PREFIX} verifier: {exc}") from None


def normalize_password(password: str) -> bytes:
    """The bytes a password is hashed as: Unicode NFKC, as SASLprep would map it (close
    enough that the same typed password gives the same bytes on every client)."""
    if not password:
        raise ValueError("a password must not be empty")
    if len(password) > MAX_PASSWORD_CHARS:
        raise ValueError(f"a password is at most {MAX_PASSWORD_CHARS} characters")
    return unicodedata.normalize("NFKC", password).encode()


def salted_password(password: str, salt: bytes, iterations: int) -> bytes:
    if not MIN_ITERATIONS <= iterations <= MAX_ITERATIONS:
        raise ValueError(f"SCRAM iterations must be {MIN_ITERATIONS}..{MAX_ITERATIONS}")
    return hashlib.pbkdf2_hmac("sha256", normalize_password(password), salt, iterations)


def _hmac(key: bytes, message: bytes) -> bytes:
    return hmac.new(key, message, hashlib.sha256).digest()


def client_key(salted: bytes) -> bytes:
    return _hmac(salted, b"Client Key")


def server_key(salted: bytes) -> bytes:
    return _hmac(salted, b"Server Key")


def make_verifier(
    password: str, *, salt: bytes | None = None, iterations: int = SCRAM_ITERATIONS
) -> ScramVerifier:
    """A fresh verifier for ``password`` (a random salt unless one is given)."""
    salt = salt if salt is not None else secrets.token_bytes(SALT_BYTES)
    salted = salted_password(password, salt, iterations)
    return ScramVerifier(
        salt, iterations, hashlib.sha256(client_key(salted)).digest(), server_key(salted)
    )


def client_proof(salted: bytes, auth_message: bytes) -> bytes:
    key = client_key(salted)
    signature = _hmac(hashlib.sha256(key).digest(), auth_message)
    return bytes(a ^ b for a, b in zip(key, signature, strict=True))


def server_signature(server_key_: bytes, auth_message: bytes) -> bytes:
    return _hmac(server_key_, auth_message)


def check_client_proof(verifier: ScramVerifier, auth_message: bytes, proof: bytes) -> bool:
    """Whether ``proof`` shows knowledge of the password behind ``verifier``; constant
    time in the proof's content."""
    if len(proof) != KEY_BYTES:
        return False
    signature = _hmac(verifier.stored_key, auth_message)
    key = bytes(a ^ b for a, b in zip(proof, signature, strict=True))
    return hmac.compare_digest(hashlib.sha256(key).digest(), verifier.stored_key)


def decoy_verifier(key: bytes, user: str) -> ScramVerifier:
    """A verifier for a user that does not exist: the same salt every time for the same
    user (derived from ``key``, a server secret), and keys nobody can match, so a client
    cannot tell a missing user from a wrong password."""
    derived = _hmac(key, b"decoy-user:" + user.encode())
    return ScramVerifier(
        derived[:SALT_BYTES], SCRAM_ITERATIONS, _hmac(derived, b"stored"), _hmac(derived, b"srv")
    )
