"""``shardwise status`` tells the shard map's changes from the catalog's (issue 18, point
13): DDL makes numbered configurations, and status shows which configuration last changed
each, through the real command against a real (embedded) cluster."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Final

import pytest

from shardwise.embedded import EmbeddedCluster

pytestmark = pytest.mark.timeout(180)

CLI_TIMEOUT_S: Final = 60.0


def cli(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shardwise.cli", *args, "--cluster-dir", str(root)],
        env={**os.environ, "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
        check=False,
    )


def test_status_shows_the_shard_map_and_catalog_numbers(tmp_path: Path) -> None:
    with EmbeddedCluster(
        groups=2, spare_groups=1, replicas=1, controllers=1, data_dir=tmp_path / "data"
    ) as c:
        root = tmp_path / "cluster"
        c.describe(root)
        joined = json.loads(cli(root, "status", "--json").stdout)["config_num"]  # the join
        with c.client() as client:
            client.sql("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT) WITH (distribution='id')")
            client.sql("ALTER TABLE t ADD COLUMN w INTEGER")
            client.sql("CREATE INDEX t_w ON t (w)")
        latest = joined + 3
        shown = cli(root, "status")
        assert shown.returncode == 0, shown.stderr
        assert f"Configuration {latest} (shard map {joined}, catalog {latest})" in shown.stdout
        data = json.loads(cli(root, "status", "--json").stdout)
        assert (data["config_num"], data["shard_map_changed_at"], data["catalog_changed_at"]) == (
            latest,
            joined,
            latest,
        )
        # A change of the shard map moves its number, and leaves the catalog's.
        assert c.join(3).num == latest + 1
        moved = json.loads(cli(root, "status", "--json").stdout)
        assert (moved["shard_map_changed_at"], moved["catalog_changed_at"]) == (latest + 1, latest)
