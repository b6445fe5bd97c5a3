"""TLS under the handshake, with a self-signed certificate made by the test."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import shutil
import ssl
import subprocess
from pathlib import Path

import msgspec
import pytest

from shardwise.net.harness import Mesh, eventually
from shardwise.net.rpc import CallContext, RpcMethod
from shardwise.net.tls import client_context, server_context
from shardwise.raft.messages import Heartbeat, Message

READ_S = 20.0


class Num(msgspec.Struct, frozen=True):
    n: int


ECHO = RpcMethod("echo", Num, Num)


async def echo(request: Num, context: CallContext) -> Num:
    return Num(request.n + 1)


def _with_cryptography(cert: Path, key: Path) -> bool:
    try:
        from cryptography import x509  # noqa: PLC0415 -- optional test dependency
        from cryptography.hazmat.primitives import hashes, serialization  # noqa: PLC0415
        from cryptography.hazmat.primitives.asymmetric import ec  # noqa: PLC0415
        from cryptography.x509.oid import NameOID  # noqa: PLC0415
    except ImportError:
        return False
    private = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "shardwise-test")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(private, hashes.SHA256())
    )
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return True


def _with_openssl(cert: Path, key: Path) -> bool:
    openssl = shutil.which("openssl")
    if openssl is None:
        return False
    subprocess.run(
        [
            openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-days", "1", "-subj", "/CN=shardwise-test",
            "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
            "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )  # fmt: skip
    return True


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    cert, key = tmp_path / "node.pem", tmp_path / "node.key"
    if not (_with_cryptography(cert, key) or _with_openssl(cert, key)):
        pytest.skip("TLS tests need the cryptography package or the openssl command")
    return cert, key


async def test_raft_and_calls_cross_tls(certificate: tuple[Path, Path]) -> None:
    cert, key = certificate
    server = server_context(cert, key)
    client = client_context(cert)
    async with Mesh(["a", "b"], server_ssl=server, client_ssl=client) as mesh:
        got: list[Message] = []
        mesh["b"].on_raft(1, got.append)
        mesh["b"].serve(ECHO, echo)
        mesh["a"].send_raft(1, Heartbeat(term=1, sender="a", to="b"))
        await eventually(mesh.all, lambda: len(got) == 1)
        assert await mesh["a"].call("b", ECHO, Num(1)) == Num(2)
        tool = await mesh.client("tool")
        assert await tool.call("b", ECHO, Num(5)) == Num(6)
        conn = next(iter(mesh["b"]._connections))
        assert isinstance(conn.writer.get_extra_info("ssl_object"), ssl.SSLObject)


async def test_mutual_tls_and_a_plaintext_dialer_is_refused(certificate: tuple[Path, Path]) -> None:
    cert, key = certificate
    server = server_context(cert, key, cafile=cert)
    client = client_context(cert, certfile=cert, keyfile=key)
    async with Mesh(["a", "b"], server_ssl=server, client_ssl=client) as mesh:
        mesh["b"].serve(ECHO, echo)
        assert await mesh["a"].call("b", ECHO, Num(1)) == Num(2)
        # Plain TCP to a TLS listener: the TLS layer rejects it, the node keeps serving.
        reader, writer = await asyncio.open_connection(*mesh["b"].address)
        writer.write(b"\xd5SWN not a TLS record" * 10)
        with contextlib.suppress(ConnectionResetError):
            assert await asyncio.wait_for(reader.read(), READ_S) == b""
        writer.close()
        with contextlib.suppress(ConnectionResetError):
            await writer.wait_closed()
        assert await mesh["a"].call("b", ECHO, Num(2)) == Num(3)


def test_the_openssl_fallback_makes_a_usable_certificate(tmp_path: Path) -> None:
    cert, key = tmp_path / "c.pem", tmp_path / "c.key"
    if not _with_openssl(cert, key):
        pytest.skip("no openssl command")
    assert server_context(cert, key) and client_context(cert)
