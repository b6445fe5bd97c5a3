"""The in-process cluster: the real servers on loopback in one background thread."""

from __future__ import annotations

from pathlib import Path

import shardwise
from shardwise.embedded import EmbeddedCluster


def test_an_embedded_cluster_serves_the_same_client_api(tmp_path: Path) -> None:
    with shardwise.EmbeddedCluster(groups=2, spare_groups=1, data_dir=tmp_path) as cluster:
        assert isinstance(cluster, EmbeddedCluster)
        with cluster.client() as kv:
            kv.mput({f"k{i}": str(i) for i in range(50)})
            assert kv.get("k7") == "7"
            result = cluster.join(3)
            assert result.moves and all(m.target == 3 for m in result.moves)
            assert kv.mget([f"k{i}" for i in range(50)]) == {f"k{i}": str(i) for i in range(50)}
