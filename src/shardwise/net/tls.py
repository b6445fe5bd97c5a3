"""TLS contexts for the transport (optional; the HMAC handshake runs inside TLS too).

The handshake proves both ends know the cluster secret; TLS adds privacy and integrity
of everything after it. A cluster's certificates are its own (a private CA, or one
self-signed certificate shared by every node): clients verify the server's certificate
against ``cafile``; with ``cafile`` on the server side too, servers also demand client
certificates (mutual TLS).
"""

from __future__ import annotations

import ssl
from pathlib import Path

PathLike = str | Path


def server_context(
    certfile: PathLike, keyfile: PathLike, *, cafile: PathLike | None = None
) -> ssl.SSLContext:
    """For a node's listener: TLS 1.2 or newer; client certificates required if
    ``cafile`` is given."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(certfile, keyfile)
    if cafile is not None:
        context.load_verify_locations(cafile)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def client_context(
    cafile: PathLike,
    *,
    certfile: PathLike | None = None,
    keyfile: PathLike | None = None,
    check_hostname: bool = True,
) -> ssl.SSLContext:
    """For dialling: the server's certificate must chain to ``cafile`` (and name the
    host dialled, unless ``check_hostname`` is off, e.g. for a certificate shared by
    every node)."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(cafile))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = check_hostname
    if certfile is not None:
        context.load_cert_chain(certfile, keyfile)
    return context
