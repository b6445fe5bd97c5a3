"""TLS for the transport, and who a certificate says its holder is.

The HMAC handshake proves both ends know the cluster secret; TLS adds privacy and
integrity of everything after it, and **identity**: a cluster node presents a *node
certificate* issued by the cluster's CA, which names its node id in a subject
alternative name URI ``shardwise:node:<id>`` (``certs.py`` makes them). With TLS on:

* a connection that declares the node role (Raft traffic, calls only nodes may make) is
  admitted only if its verified certificate is a node certificate for exactly the node
  id it claims (:func:`require_node_certificate`, called by the acceptor before it
  welcomes the dialer). A client certificate from the same CA names a *user*
  (``shardwise:user:<name>``) and can never pass as a node;
* a dialer checks that the acceptor's certificate names the node it meant to reach;
* a client connection may present no certificate at all (``CERT_OPTIONAL``): clients
  are authenticated above TLS.

The cluster secret alone therefore no longer makes anyone a Raft peer.
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote

from shardwise.errors import AuthenticationError

PathLike = str | Path

NODE_URI_PREFIX: Final = "shardwise:node:"
"""A node certificate's mark: a SAN URI of this prefix and the (percent-encoded) node id."""

USER_URI_PREFIX: Final = "shardwise:user:"
"""A client certificate's: the user it authenticates."""

_URI_SAFE: Final = "!$&'()*+,;=:@-._~"
"""RFC 3986 ``pchar`` punctuation: left as is in a URI path, everything else is
percent-encoded (ids of servers are ``HOST:PORT``, which stay readable)."""


def node_uri(node_id: str) -> str:
    """The SAN URI that names ``node_id`` in its node certificate."""
    return NODE_URI_PREFIX + quote(node_id, safe=_URI_SAFE)


def user_uri(user: str) -> str:
    """The SAN URI that names ``user`` in a client certificate."""
    return USER_URI_PREFIX + quote(user, safe=_URI_SAFE)


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """A process's TLS material: its certificate and key, and the cluster CA."""

    cert: Path
    key: Path
    ca: Path

    def server_context(self) -> ssl.SSLContext:
        return server_context(self.cert, self.key, cafile=self.ca)

    def client_context(self) -> ssl.SSLContext:
        """For a node's outbound connections: presents its node certificate."""
        return client_context(self.ca, certfile=self.cert, keyfile=self.key)


def server_context(
    certfile: PathLike, keyfile: PathLike, *, cafile: PathLike | None = None
) -> ssl.SSLContext:
    """For a node's listener: TLS 1.2 or newer. With ``cafile``, a certificate a dialer
    presents must chain to it, but none is required (``CERT_OPTIONAL``): clients may
    come without one, and a dialer claiming the node role without a node certificate is
    refused by the transport (:func:`require_node_certificate`). Without ``cafile`` no
    dialer can prove it is a node, so no node connection is admitted."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(certfile, keyfile)
    if cafile is not None:
        context.load_verify_locations(cafile)
        context.verify_mode = ssl.CERT_OPTIONAL
    return context


def client_context(
    cafile: PathLike,
    *,
    certfile: PathLike | None = None,
    keyfile: PathLike | None = None,
    check_hostname: bool = True,
) -> ssl.SSLContext:
    """For dialling: the server's certificate must chain to ``cafile`` and name the host
    dialled (unless ``check_hostname`` is off); the transport also checks it is a node
    certificate for the node dialled. ``certfile``: this end's own certificate (a node's,
    or a client's)."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(cafile))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = check_hostname
    if certfile is not None:
        context.load_cert_chain(certfile, keyfile)
    return context


def peer_certificate(writer: asyncio.StreamWriter) -> dict[str, Any] | None:
    """The verified certificate the other end of ``writer`` presented, or None (no TLS,
    or no certificate)."""
    ssl_object = writer.get_extra_info("ssl_object")
    if ssl_object is None:
        return None
    cert = ssl_object.getpeercert()
    return cert or None


def certificate_uris(cert: dict[str, Any] | None) -> list[str]:
    """The URI subject alternative names of a certificate (``getpeercert()`` form)."""
    if not cert:
        return []
    return [value for kind, value in cert.get("subjectAltName", ()) if kind == "URI"]


def certified_node_ids(cert: dict[str, Any] | None) -> list[str]:
    """The node URIs a certificate carries (a well-made one carries exactly one)."""
    return [uri for uri in certificate_uris(cert) if uri.startswith(NODE_URI_PREFIX)]


def require_node_certificate(writer: asyncio.StreamWriter, node_id: str) -> None:
    """Raise ``AuthenticationError`` unless the other end presented a verified node
    certificate for exactly ``node_id`` (and no other node)."""
    cert = peer_certificate(writer)
    if cert is None:
        raise AuthenticationError(f"{node_id!r} claims to be a node but has no node certificate")
    nodes = certified_node_ids(cert)
    if nodes != [node_uri(node_id)]:
        shown = ", ".join(nodes) or "none (not a node certificate)"
        raise AuthenticationError(
            f"{node_id!r} claims to be a node but its certificate names {shown}"
        )
