"""Making a cluster's certificates: a private CA, node certificates, client certificates.

What ``shardwise cert`` and ``shardwise up --tls`` use (see ``tls.py`` for what the
transport checks). Keys are ECDSA P-256 (small, fast handshakes, supported everywhere);
certificates are signed with SHA-256.

* the **CA** (``ca.pem``, ``ca.key``): a self-signed certificate allowed to sign and
  nothing else; its key is written mode 0600 and is needed only to issue certificates;
* a **node certificate** names its node id in the SAN URI ``shardwise:node:<id>``, plus
  DNS and IP SANs for loopback and the hosts it is reached at; it serves and dials
  (server and client authentication);
* a **client certificate** names a user in ``shardwise:user:<name>`` and has only client
  authentication: presented as a node it is refused.

``cryptography`` is imported when a certificate is made, not when the transport loads.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

from shardwise.errors import ShardwiseError
from shardwise.net.tls import node_uri, user_uri
from shardwise.net.wire import check_node_id

if TYPE_CHECKING:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec

CA_VALIDITY_DAYS: Final = 3650
"""Ten years: a CA outliving the certificates it issues; rotating it means re-issuing all."""

LEAF_VALIDITY_DAYS: Final = 825
"""About 27 months, the longest lifetime browsers accepted for server certificates:
long enough for a cluster not to need a renewal job, short enough to expire a leaked key."""

CLOCK_SKEW: Final = datetime.timedelta(minutes=5)
"""Certificates are valid from slightly before their creation, for machines whose clocks
are a little behind the issuer's."""

MAX_HOSTS: Final = 64
"""Extra host names or addresses one node certificate may name."""

LOOPBACK_NAMES: Final = ("localhost",)
LOOPBACK_ADDRESSES: Final = ("127.0.0.1", "::1")

CA_CERT: Final = "ca.pem"
CA_KEY: Final = "ca.key"

_FILE_SAFE: Final = re.compile(r"[^A-Za-z0-9_.-]")


class CertificateError(ShardwiseError):
    """A certificate cannot be made (no CA there, a file in the way, a bad name)."""


@dataclass(frozen=True, slots=True)
class Issued:
    """Where a certificate and its key were written."""

    cert: Path
    key: Path


def file_stem(name: str) -> str:
    """A file name for a node id or user (``127.0.0.1:7201`` -> ``127.0.0.1_7201``)."""
    return _FILE_SAFE.sub("_", name)


def make_ca(directory: Path, *, name: str = "shardwise cluster CA") -> Issued:
    """A new CA in ``directory`` (``ca.pem``, and ``ca.key`` mode 0600); refuses to
    overwrite one."""
    from cryptography import x509  # noqa: PLC0415 - only when making certificates
    from cryptography.x509.oid import NameOID  # noqa: PLC0415

    paths = Issued(directory / CA_CERT, directory / CA_KEY)
    if paths.cert.exists() or paths.key.exists():
        raise CertificateError(f"{directory} already holds a CA ({CA_CERT}, {CA_KEY})")
    key = _new_key()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    builder = (
        _builder(subject, subject, key, CA_VALIDITY_DAYS)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    _write(paths, builder, key, key)
    return paths


def make_node_certificate(
    ca_dir: Path, node_id: str, out_dir: Path, *, hosts: Iterable[str] = (), stem: str = ""
) -> Issued:
    """A node certificate for ``node_id`` signed by the CA in ``ca_dir``, written to
    ``out_dir/<stem>.pem`` and ``.key`` (``stem``: the node id made a file name). Its SANs
    name the node and loopback, and every host in ``hosts`` (names or IP addresses)."""
    from cryptography import x509  # noqa: PLC0415
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID  # noqa: PLC0415

    check_node_id(node_id)
    hosts = list(dict.fromkeys([*LOOPBACK_NAMES, *LOOPBACK_ADDRESSES, *hosts]))
    if len(hosts) > MAX_HOSTS + len(LOOPBACK_NAMES) + len(LOOPBACK_ADDRESSES):
        raise CertificateError(f"at most {MAX_HOSTS} hosts in one certificate")
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(node_uri(node_id))]
    names += [_host_name(host) for host in hosts]
    usage = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "shardwise node"),
            x509.NameAttribute(NameOID.COMMON_NAME, node_id),
        ]
    )
    return _issue(ca_dir, out_dir / (stem or file_stem(node_id)), subject, names, usage)


def make_client_certificate(ca_dir: Path, user: str, out_dir: Path) -> Issued:
    """A client certificate for ``user`` (``out_dir/<user>.pem`` and ``.key``): client
    authentication only, no node URI."""
    from cryptography import x509  # noqa: PLC0415
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID  # noqa: PLC0415

    check_node_id(user)  # a user name travels where a client id does: the same bound
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "shardwise client"),
            x509.NameAttribute(NameOID.COMMON_NAME, user),
        ]
    )
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(user_uri(user))]
    usage = [ExtendedKeyUsageOID.CLIENT_AUTH]
    return _issue(ca_dir, out_dir / file_stem(user), subject, names, usage)


# --- helpers -------------------------------------------------------------------------


def _new_key() -> ec.EllipticCurvePrivateKey:
    from cryptography.hazmat.primitives.asymmetric import ec  # noqa: PLC0415

    return ec.generate_private_key(ec.SECP256R1())


def _builder(
    subject: x509.Name, issuer: x509.Name, key: ec.EllipticCurvePrivateKey, days: int
) -> x509.CertificateBuilder:
    from cryptography import x509  # noqa: PLC0415

    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + datetime.timedelta(days=days))
    )


def _host_name(host: str) -> x509.GeneralName:
    from cryptography import x509  # noqa: PLC0415

    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        if not host or len(host) > 253:
            raise CertificateError(f"{host!r} is not a host name or address") from None
        return x509.DNSName(host)


def _load_ca(ca_dir: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    from cryptography import x509  # noqa: PLC0415
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415
    from cryptography.hazmat.primitives.asymmetric import ec  # noqa: PLC0415

    try:
        cert = x509.load_pem_x509_certificate((ca_dir / CA_CERT).read_bytes())
        key = serialization.load_pem_private_key((ca_dir / CA_KEY).read_bytes(), None)
    except FileNotFoundError:
        raise CertificateError(
            f"no CA in {ca_dir} (make one with `shardwise cert ca {ca_dir}`)"
        ) from None
    except (OSError, ValueError, TypeError) as exc:
        raise CertificateError(f"cannot read the CA in {ca_dir}: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CertificateError(f"the CA key in {ca_dir} is not an ECDSA key")
    return cert, key


def _issue(
    ca_dir: Path,
    base: Path,
    subject: x509.Name,
    names: list[x509.GeneralName],
    usage: list[x509.ObjectIdentifier],
) -> Issued:
    from cryptography import x509  # noqa: PLC0415

    ca_cert, ca_key = _load_ca(ca_dir)
    paths = Issued(base.with_name(base.name + ".pem"), base.with_name(base.name + ".key"))
    key = _new_key()
    builder = (
        _builder(subject, ca_cert.subject, key, LEAF_VALIDITY_DAYS)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.ExtendedKeyUsage(usage), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    _write(paths, builder, key, ca_key)
    return paths


def _write(
    paths: Issued,
    builder: x509.CertificateBuilder,
    key: ec.EllipticCurvePrivateKey,
    signer: ec.EllipticCurvePrivateKey,
) -> None:
    from cryptography.hazmat.primitives import hashes, serialization  # noqa: PLC0415

    certificate = builder.sign(signer, hashes.SHA256())
    paths.cert.parent.mkdir(parents=True, exist_ok=True)
    key_bytes = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    # The key first and exclusively, mode 0600 from its creation: never readable by others,
    # and an existing key is never overwritten.
    try:
        fd = os.open(paths.key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise CertificateError(f"{paths.key} exists: remove it to issue a new one") from None
    with os.fdopen(fd, "wb") as handle:
        handle.write(key_bytes)
    temp = paths.cert.with_name(paths.cert.name + ".tmp")
    temp.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    os.replace(temp, paths.cert)
