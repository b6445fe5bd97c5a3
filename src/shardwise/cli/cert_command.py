"""``shardwise cert``: a cluster's CA, node certificates and client certificates.

The certificates themselves are made by :mod:`shardwise.net.certs`; this module only
reads the options and says what it wrote.
"""

from __future__ import annotations

from pathlib import Path

import click

from shardwise.cli.common import out
from shardwise.net.certs import Issued, make_ca, make_client_certificate, make_node_certificate

_DIR = click.Path(file_okay=False, path_type=Path)


def _wrote(what: str, issued: Issued) -> None:
    out.print(f"{what}: {issued.cert}\nkey (mode 0600): {issued.key}", highlight=False)


@click.group()
def cert() -> None:
    """Make the certificates of a cluster that runs TLS.

    A CA first (`shardwise cert ca DIR`), then a node certificate per server process
    (named by its node id: a controller replica's name, a group server's HOST:PORT), and
    client certificates for users. `shardwise up --tls` does all of it by itself.
    """


@cert.command("ca")
@click.argument("directory", type=_DIR)
def ca(directory: Path) -> None:
    """Make a CA in DIRECTORY (ca.pem, and ca.key, which only issues certificates:
    keep it off the servers)."""
    _wrote("CA certificate", make_ca(directory))


@cert.command("node")
@click.argument("node_id")
@click.option("--ca", "ca_dir", required=True, type=_DIR, help="The CA's directory.")
@click.option(
    "--out", "out_dir", type=_DIR, help="Where to write it (default: the CA's directory)."
)
@click.option(
    "--host",
    "hosts",
    multiple=True,
    help="A name or address the node is reached at (repeat); loopback is always in.",
)
def node(node_id: str, ca_dir: Path, out_dir: Path | None, hosts: tuple[str, ...]) -> None:
    """Make the node certificate of NODE_ID: it lets that process, and only it, act as
    that node of the cluster."""
    issued = make_node_certificate(ca_dir, node_id, out_dir or ca_dir, hosts=hosts)
    _wrote(f"node certificate of {node_id}", issued)


@cert.command("client")
@click.argument("name")
@click.option("--ca", "ca_dir", required=True, type=_DIR, help="The CA's directory.")
@click.option(
    "--out", "out_dir", type=_DIR, help="Where to write it (default: the CA's directory)."
)
def client(name: str, ca_dir: Path, out_dir: Path | None) -> None:
    """Make a client certificate naming user NAME (it can never act as a node)."""
    _wrote(
        f"client certificate of {name}", make_client_certificate(ca_dir, name, out_dir or ca_dir)
    )
