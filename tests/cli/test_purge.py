"""Review of ``shardwise down --purge``: it deletes what the cluster's processes wrote
(their data and logs), never a directory it did not make, whatever the description's
``data_dir`` and ``log_dir`` say. Through the real command (no cluster runs, so it only
deletes)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Final

from shardwise.clusterfile import ClusterLayout, ensure_secret, local_layout

CLI_TIMEOUT_S: Final = 60.0


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shardwise.cli", *args],
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
        check=False,
        env=dict(os.environ),
    )


def _cluster(root: Path, data_dir: str, log_dir: str) -> ClusterLayout:
    """A description in ``root`` whose data and logs are where the operator says, and
    the files its processes would have written there."""
    layout = local_layout(root, base_port=0, controllers=1, groups=1, replicas=2)
    layout.write()
    text = layout.path.read_text()
    text = text.replace('data_dir = "data"', f'data_dir = "{data_dir}"')
    text = text.replace('log_dir = "logs"', f'log_dir = "{log_dir}"')
    layout.path.write_text(text)
    ensure_secret(layout.secret_file)
    for process in layout.processes:
        raft = root / data_dir / process.name / "raft"
        raft.mkdir(parents=True)
        (raft / "segment").write_bytes(b"x")
        (root / log_dir).mkdir(parents=True, exist_ok=True)
        (root / log_dir / f"{process.name}.log").write_text("{}\n")
    return layout


def test_purge_with_data_next_to_the_description_keeps_what_is_not_the_clusters(
    tmp_path: Path,
) -> None:
    """``data_dir = "."``: each process keeps its data in ``<dir>/<name>``, beside the
    operator's description (which ``--purge`` with ``--config`` promises to keep) and
    whatever else the operator has there. Before the fix, ``--purge`` ran ``rmtree`` on
    the whole directory."""
    root = tmp_path / "ops"
    layout = _cluster(root, ".", ".")
    precious = root / "notes.txt"
    precious.write_text("not the cluster's")
    purged = _cli("down", "--purge", "--config", str(layout.path))
    assert purged.returncode == 0, purged.stderr
    assert precious.exists(), "down --purge deleted a file the cluster never wrote"
    assert layout.path.exists(), "down --purge --config deleted the operator's description"
    for process in layout.processes:
        assert not (root / process.name).exists()
        assert not (root / f"{process.name}.log").exists()


def test_purge_with_a_shared_data_directory_deletes_only_the_processes_data(
    tmp_path: Path,
) -> None:
    """``data_dir`` names a directory shared with other things (``../shared``): only the
    processes' own directories in it go, and the cluster directory (``shardwise up``'s
    own description, so it is removed once empty)."""
    root = tmp_path / "cluster"
    _cluster(root, "../shared", "../shared-logs")
    other = tmp_path / "shared" / "another-program"
    other.mkdir()
    (other / "data").write_text("keep")
    other_log = tmp_path / "shared-logs" / "another-program.log"
    other_log.write_text("keep")
    purged = _cli("down", "--purge", "--cluster-dir", str(root))
    assert purged.returncode == 0, purged.stderr
    assert (other / "data").exists(), "down --purge deleted another program's data"
    assert other_log.exists(), "down --purge deleted another program's log"
    assert not (tmp_path / "shared" / "g1-1").exists()
    assert not (tmp_path / "shared-logs" / "g1-1.log").exists()
    assert not root.exists()


def test_purge_of_a_cluster_up_made_still_removes_everything(tmp_path: Path) -> None:
    """The ordinary case keeps working: nothing of the cluster is left."""
    root = tmp_path / "cluster"
    _cluster(root, "data", "logs")
    purged = _cli("down", "--purge", "--cluster-dir", str(root))
    assert purged.returncode == 0, purged.stderr
    assert not root.exists(), sorted(str(p) for p in root.rglob("*"))
