"""The ``[tls]`` table of ``cluster.toml``: written, read back, certificates made, and
every server's command line carrying them."""

from __future__ import annotations

import ssl
import stat
from pathlib import Path

import pytest

from shardwise.clusterfile import load_layout, local_layout
from shardwise.errors import ClusterConfigError
from shardwise.net.tls import certificate_uris, node_uri


def test_a_tls_cluster_is_described_certified_and_started_with_its_certificates(
    tmp_path: Path,
) -> None:
    layout = local_layout(tmp_path, controllers=1, groups=1, replicas=2, base_port=0, tls=True)
    layout.write()
    again = load_layout(layout.path)
    assert again.tls == layout.tls and again.tls is not None
    made = again.ensure_certificates()
    assert sorted(made) == sorted(p.name for p in again.processes)
    assert again.ensure_certificates() == []  # nothing missing the second time
    assert stat.S_IMODE((again.tls.cert_dir / "ca.key").stat().st_mode) == 0o600
    for process in again.processes:
        files = again.tls.files(process.name)
        decoded = ssl._ssl._test_decode_cert(str(files.cert))  # type: ignore[attr-defined]
        assert certificate_uris(decoded) == [node_uri(process.node_id)]
        command = again.command(process.name)
        assert f"--tls-cert={files.cert}" in command
        assert f"--tls-ca={again.tls.ca_file}" in command
    assert isinstance(again.client_ssl(), ssl.SSLContext)


def test_a_plain_cluster_has_no_tls_and_a_bad_table_is_refused(tmp_path: Path) -> None:
    layout = local_layout(tmp_path, controllers=1, groups=1, base_port=0)
    layout.write()
    plain = load_layout(layout.path)
    assert plain.tls is None and plain.client_ssl() is None
    assert not any(a.startswith("--tls") for a in plain.command("c1"))
    layout.path.write_text(layout.path.read_text() + '\n[tls]\nca = "x"\n')
    with pytest.raises(ClusterConfigError):
        load_layout(layout.path)
