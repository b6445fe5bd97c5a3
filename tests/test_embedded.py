"""The in-process cluster: the real servers on loopback in one background thread."""

from __future__ import annotations

from pathlib import Path

import pytest

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


def test_a_blocking_transaction_commits_both_or_neither(tmp_path: Path) -> None:
    """The README's transaction, through the blocking client: the block commits on exit;
    an exception inside it aborts (nothing written)."""
    cluster = shardwise.EmbeddedCluster(groups=2, replicas=1, controllers=1, data_dir=tmp_path)
    with cluster as c, c.client() as kv:
        with kv.transaction() as tx:
            a, b = int(tx.get("acct:a") or 100), int(tx.get("acct:b") or 100)
            tx.put("acct:a", str(a - 10))
            tx.put("acct:b", str(b + 10))
        assert (kv.get("acct:a"), kv.get("acct:b")) == ("90", "110")
        with pytest.raises(ZeroDivisionError), kv.transaction() as tx:
            tx.put("acct:a", "0")
            _ = 1 / 0
        assert kv.get("acct:a") == "90"
        total = kv.run_transaction(
            lambda tx: int(tx.get("acct:a") or 0) + int(tx.get("acct:b") or 0)
        )
        assert total == 200
