"""TLS under the handshake, with a CA and node certificates made by ``net/certs.py``.

Every node presents the node certificate of its id; a client may present none.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest

from shardwise.errors import NetError
from shardwise.net.certs import (
    CA_CERT,
    CertificateError,
    make_ca,
    make_client_certificate,
    make_node_certificate,
)
from shardwise.net.harness import TEST_SECRET, eventually
from shardwise.net.rpc import CallContext, RpcMethod
from shardwise.net.tls import (
    TlsFiles,
    certificate_uris,
    client_context,
    node_uri,
    user_uri,
)
from shardwise.net.transport import Transport
from shardwise.net.wire import PeerRole
from shardwise.raft.messages import Heartbeat, Message

READ_S = 20.0


class Num(msgspec.Struct, frozen=True):
    n: int


ECHO = RpcMethod("echo", Num, Num)


async def echo(request: Num, context: CallContext) -> Num:
    return Num(request.n + 1)


def _files(ca: Path, node: str, out: Path) -> TlsFiles:
    issued = make_node_certificate(ca, node, out)
    return TlsFiles(issued.cert, issued.key, ca / CA_CERT)


@contextlib.asynccontextmanager
async def tls_nodes(tmp_path: Path, names: list[str]) -> AsyncIterator[dict[str, Transport]]:
    """Started node transports, each with its own node certificate, knowing each other."""
    make_ca(tmp_path / "ca")
    nodes = {}
    for name in names:
        files = _files(tmp_path / "ca", name, tmp_path / "certs")
        nodes[name] = Transport(
            name,
            TEST_SECRET,
            server_ssl=files.server_context(),
            client_ssl=files.client_context(),
        )
    try:
        for node in nodes.values():
            await node.start()
        for node in nodes.values():
            for other in nodes.values():
                if other is not node:
                    node.set_peer(other.id, other.address)
        yield nodes
    finally:
        for node in nodes.values():
            await node.close()


async def test_raft_and_calls_cross_tls_and_a_client_needs_no_certificate(
    tmp_path: Path,
) -> None:
    async with tls_nodes(tmp_path, ["a", "b"]) as nodes:
        got: list[Message] = []
        nodes["b"].on_raft(1, got.append)
        nodes["b"].serve(ECHO, echo)
        nodes["a"].send_raft(1, Heartbeat(term=1, sender="a", to="b"))
        await eventually(nodes.values(), lambda: len(got) == 1)
        assert await nodes["a"].call("b", ECHO, Num(1)) == Num(2)
        tool = Transport(
            "tool",
            TEST_SECRET,
            role=PeerRole.CLIENT,
            client_ssl=client_context(tmp_path / "ca" / CA_CERT),
            peers={"b": nodes["b"].address},
        )
        await tool.start()
        try:
            assert await tool.call("b", ECHO, Num(5)) == Num(6)
        finally:
            await tool.close()
        conn = next(iter(nodes["b"]._connections))
        assert isinstance(conn.writer.get_extra_info("ssl_object"), ssl.SSLObject)


async def test_a_plaintext_dialer_is_refused_and_the_node_keeps_serving(tmp_path: Path) -> None:
    async with tls_nodes(tmp_path, ["a", "b"]) as nodes:
        nodes["b"].serve(ECHO, echo)
        assert await nodes["a"].call("b", ECHO, Num(1)) == Num(2)
        reader, writer = await asyncio.open_connection(*nodes["b"].address)
        writer.write(b"\xd5SWN not a TLS record" * 10)
        with contextlib.suppress(ConnectionResetError):
            assert await asyncio.wait_for(reader.read(), READ_S) == b""
        writer.close()
        with contextlib.suppress(ConnectionResetError):
            await writer.wait_closed()
        assert await nodes["a"].call("b", ECHO, Num(2)) == Num(3)


@pytest.mark.parametrize("certificate", ["client", "other node", "none"])
async def test_the_node_role_needs_the_node_certificate_of_the_id_claimed(
    tmp_path: Path, certificate: str
) -> None:
    async with tls_nodes(tmp_path, ["a", "b"]) as nodes:
        nodes["b"].serve(ECHO, echo)
        ca = tmp_path / "ca"
        if certificate == "client":
            issued = make_client_certificate(ca, "mallory", tmp_path / "m")
            context = client_context(ca / CA_CERT, certfile=issued.cert, keyfile=issued.key)
        elif certificate == "other node":
            context = _files(ca, "mallory", tmp_path / "m").client_context()
        else:
            context = client_context(ca / CA_CERT)
        # Claims to be node "c" (or "a": a real node) with the cluster secret.
        for claimed in ("c", "a"):
            intruder = Transport(
                claimed,
                TEST_SECRET,
                listen=None,
                client_ssl=context,
                peers={"b": nodes["b"].address},
            )
            await intruder.start()
            try:
                with pytest.raises(NetError):
                    await intruder.call("b", ECHO, Num(1), timeout_s=READ_S)
            finally:
                await intruder.close()
        assert nodes["b"].stats.auth_failures >= 2


def test_certificates_name_what_they_are_for(tmp_path: Path) -> None:
    ca = make_ca(tmp_path / "ca")
    assert stat.S_IMODE(ca.key.stat().st_mode) == 0o600
    with pytest.raises(CertificateError):
        make_ca(tmp_path / "ca")
    node = make_node_certificate(tmp_path / "ca", "127.0.0.1:7201", tmp_path, hosts=["db1"])
    assert node.cert.name == "127.0.0.1_7201.pem"
    assert stat.S_IMODE(node.key.stat().st_mode) == 0o600
    decoded = ssl._ssl._test_decode_cert(str(node.cert))  # type: ignore[attr-defined]
    assert certificate_uris(decoded) == [node_uri("127.0.0.1:7201")]
    names = dict(decoded["subjectAltName"])
    assert names["DNS"] in ("localhost", "db1")
    assert ("DNS", "db1") in decoded["subjectAltName"]
    assert ("IP Address", "127.0.0.1") in decoded["subjectAltName"]
    client = make_client_certificate(tmp_path / "ca", "alice", tmp_path)
    decoded = ssl._ssl._test_decode_cert(str(client.cert))  # type: ignore[attr-defined]
    assert certificate_uris(decoded) == [user_uri("alice")]
    with pytest.raises(CertificateError):  # never overwrites a key
        make_client_certificate(tmp_path / "ca", "alice", tmp_path)
    with pytest.raises(CertificateError):
        make_node_certificate(tmp_path / "nowhere", "n1", tmp_path)


async def test_a_dialler_refuses_a_server_whose_certificate_names_another_node(
    tmp_path: Path,
) -> None:
    # An impostor knows the secret and answers as "b", but holds the certificate of
    # "mallory": the handshake alone would accept it.
    make_ca(tmp_path / "ca")
    ca = tmp_path / "ca"
    impostor_files = _files(ca, "mallory", tmp_path / "m")
    impostor = Transport(
        "b",
        TEST_SECRET,
        server_ssl=impostor_files.server_context(),
        client_ssl=impostor_files.client_context(),
    )
    impostor.serve(ECHO, echo)
    await impostor.start()
    dialer_files = _files(ca, "a", tmp_path / "a")
    dialer = Transport(
        "a",
        TEST_SECRET,
        listen=None,
        client_ssl=dialer_files.client_context(),
        peers={"b": impostor.address},
    )
    await dialer.start()
    try:
        with pytest.raises(NetError):
            await dialer.call("b", ECHO, Num(1), timeout_s=READ_S)
        assert impostor.stats.connections_accepted == 0
    finally:
        await dialer.close()
        await impostor.close()
