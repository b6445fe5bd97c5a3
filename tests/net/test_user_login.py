"""Users logging in with SCRAM-SHA-256 over the sans-IO handshake (net/auth.py).

Each test drives both sides by hand, so what is checked is the protocol itself: a right
password gets in (and the client checks the server back), a wrong one, a missing user
and a replayed proof do not, and a user can never pass as a node.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest

from shardwise.errors import AuthenticationError
from shardwise.model import scram
from shardwise.model.scram import ScramVerifier, make_verifier
from shardwise.net.auth import AcceptorHandshake, DialerHandshake, Login
from shardwise.net.wire import Challenge, Hello, PeerRole, Welcome

SECRET = b"s" * 32
ALICE = make_verifier("correct horse", salt=b"0123456789abcdef")
USERS = {"alice": ALICE}


def run(
    login: Login, *, users: dict[str, ScramVerifier] | None = None
) -> tuple[DialerHandshake, AcceptorHandshake]:
    dialer = DialerHandshake(None, "cli-1", PeerRole.CLIENT, login=login)
    table = USERS if users is None else users
    acceptor = AcceptorHandshake(SECRET, "n1", users=table.get)
    challenge = acceptor.on_hello(dialer.hello())
    welcome = acceptor.on_proof(dialer.on_challenge(challenge))
    dialer.on_welcome(welcome)
    return dialer, acceptor


def test_the_right_password_logs_in_and_the_server_proves_itself() -> None:
    dialer, acceptor = run(Login("alice", "correct horse"))
    assert acceptor.peer_user == "alice"
    assert acceptor.peer_id == "cli-1"
    assert acceptor.peer_role is PeerRole.CLIENT
    assert dialer.peer_id == "n1"


def test_a_wrong_password_and_a_missing_user_fail_alike() -> None:
    with pytest.raises(AuthenticationError, match="password authentication failed"):
        run(Login("alice", "wrong"))
    with pytest.raises(AuthenticationError, match="password authentication failed"):
        run(Login("mallory", "correct horse"))


def test_a_missing_user_gets_the_same_decoy_salt_every_time() -> None:
    """So asking twice does not reveal that the user is made up."""
    salts = []
    for _ in range(2):
        acceptor = AcceptorHandshake(SECRET, "n1", users=USERS.get)
        dialer = DialerHandshake(None, "c", PeerRole.CLIENT, login=Login("ghost", "x"))
        salts.append(acceptor.on_hello(dialer.hello()).salt)
    assert salts[0] == salts[1] and len(salts[0]) == scram.SALT_BYTES


def test_a_server_without_the_verifier_cannot_pose_as_the_cluster() -> None:
    """The client checks the server's signature: an impostor that knows the salt but
    not the verifier's ServerKey is caught by the client."""
    dialer = DialerHandshake(None, "c", PeerRole.CLIENT, login=Login("alice", "correct horse"))
    impostor_verifier = make_verifier("guess", salt=ALICE.salt)
    impostor = AcceptorHandshake(SECRET, "n1", users={"alice": impostor_verifier}.get)
    dialer.on_challenge(impostor.on_hello(dialer.hello()))
    forged = Welcome(proof=scram.server_signature(impostor_verifier.server_key, b"transcript"))
    with pytest.raises(AuthenticationError, match="does not hold the verifier"):
        dialer.on_welcome(forged)


def test_a_recorded_proof_does_not_work_on_a_new_connection() -> None:
    dialer = DialerHandshake(None, "c", PeerRole.CLIENT, login=Login("alice", "correct horse"))
    first = AcceptorHandshake(SECRET, "n1", users=USERS.get)
    proof = dialer.on_challenge(first.on_hello(dialer.hello()))
    first.on_proof(proof)
    second = AcceptorHandshake(SECRET, "n1", users=USERS.get)
    second.on_hello(dialer.hello())
    with pytest.raises(AuthenticationError):
        second.on_proof(proof)


def test_a_user_cannot_claim_the_node_role() -> None:
    acceptor = AcceptorHandshake(SECRET, "n1", users=USERS.get)
    hello = Hello(node_id="evil", role=PeerRole.NODE, nonce=b"n" * 32, user="alice")
    with pytest.raises(AuthenticationError, match="only a client"):
        acceptor.on_hello(hello)
    with pytest.raises(ValueError):
        DialerHandshake(None, "evil", PeerRole.NODE, login=Login("alice", "correct horse"))


def test_a_node_never_answers_a_password_challenge() -> None:
    """A server that asks a secret-holding dialer for a password is not followed."""
    dialer = DialerHandshake(SECRET, "n2", PeerRole.NODE)
    dialer.hello()
    with pytest.raises(AuthenticationError, match="asked a node for a password"):
        dialer.on_challenge(Challenge(node_id="n1", nonce=b"m" * 32, salt=b"s", iterations=4096))


def test_a_login_to_a_server_without_users_is_refused_cleanly() -> None:
    dialer = DialerHandshake(None, "c", PeerRole.CLIENT, login=Login("alice", "pw"))
    acceptor = AcceptorHandshake(SECRET, "n1")  # no user table: secret holders only
    challenge = acceptor.on_hello(dialer.hello())
    with pytest.raises(AuthenticationError):
        acceptor.on_proof(dialer.on_challenge(challenge))


def test_the_verifier_text_is_postgresql_s() -> None:
    """Checked against RFC 5802's definitions computed here by hand."""
    salt = b"saltsaltsaltsalt"
    verifier = make_verifier("pencil", salt=salt, iterations=4096)
    salted = hashlib.pbkdf2_hmac("sha256", b"pencil", salt, 4096)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    assert verifier.stored_key == hashlib.sha256(client_key).digest()
    assert verifier.server_key == hmac.new(salted, b"Server Key", hashlib.sha256).digest()
    text = verifier.to_text()
    assert text.startswith("SCRAM-SHA-256$4096:" + base64.b64encode(salt).decode() + "$")
    assert ScramVerifier.from_text(text) == verifier
    for bad in ("md5abc", "SCRAM-SHA-256$1:AA==$AA==:AA==", text.replace("4096", "x")):
        with pytest.raises(ValueError):
            ScramVerifier.from_text(bad)


def test_a_server_cannot_make_a_client_spin() -> None:
    dialer = DialerHandshake(None, "c", PeerRole.CLIENT, login=Login("alice", "pw"))
    dialer.hello()
    huge = Challenge(node_id="n1", nonce=b"m" * 32, salt=b"s", iterations=10**9)
    with pytest.raises(AuthenticationError, match="iterations"):
        dialer.on_challenge(huge)
