"""SQL transactions through the clients users reach them with, against a real (embedded)
cluster: the DB-API (autocommit off by default, ``commit`` and ``rollback`` real), the
``shardwise sql`` shell (``BEGIN`` ... ``COMMIT`` / ``ROLLBACK``), and the blocking
client's ``sql``."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Final

import pytest

from shardwise import dbapi
from shardwise.embedded import EmbeddedCluster
from shardwise.model.txn import TransactionConflictError

pytestmark = pytest.mark.timeout(180)

CLI_TIMEOUT_S: Final = 60.0
ACCOUNTS: Final = (
    "CREATE TABLE accounts (id INTEGER PRIMARY KEY, balance INTEGER NOT NULL) "
    "WITH (distribution = 'id')"
)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[EmbeddedCluster, Path]]:
    root = tmp_path_factory.mktemp("sqltxn")
    with EmbeddedCluster(groups=2, replicas=1, controllers=1, data_dir=root / "data") as cluster:
        described = root / "cluster"
        cluster.describe(described)
        with cluster.client() as client:
            client.sql(ACCOUNTS)
            rows = ", ".join(f"({i}, 100)" for i in range(1, 21))
            client.sql(f"INSERT INTO accounts VALUES {rows}")
        yield cluster, described


def _balances(cluster: EmbeddedCluster) -> dict[int, int]:
    with cluster.client() as client:
        rows = client.sql("SELECT id, balance FROM accounts ORDER BY id").rows
    return {int(r[0]): int(r[1]) for r in rows}  # type: ignore[arg-type]


def test_dbapi_commits_rolls_back_and_reports_conflicts(
    cluster: tuple[EmbeddedCluster, Path],
) -> None:
    with dbapi.connect(cluster[1]) as conn, dbapi.connect(cluster[1]) as other:
        cur = conn.cursor()
        cur.execute("UPDATE accounts SET balance = balance - 10 WHERE id = 1")
        cur.execute("UPDATE accounts SET balance = balance + 10 WHERE id = 2")
        cur.execute("SELECT balance FROM accounts WHERE id IN (1, 2) ORDER BY id")
        assert cur.fetchall() == [(90,), (110,)]
        assert _balances(cluster[0])[1] == 100  # not committed yet
        conn.commit()
        assert _balances(cluster[0])[1] == 90

        cur.execute("DELETE FROM accounts WHERE id = 3")
        conn.rollback()
        assert 3 in _balances(cluster[0])

        # Two connections update the same row: the second commit is refused, nothing of
        # it applied, and its connection goes on.
        mine, theirs = conn.cursor(), other.cursor()
        mine.execute("SELECT balance FROM accounts WHERE id = 4")
        theirs.execute("SELECT balance FROM accounts WHERE id = 4")
        mine.execute("UPDATE accounts SET balance = 1 WHERE id = 4")
        theirs.execute("UPDATE accounts SET balance = 2 WHERE id = 4")
        conn.commit()
        with pytest.raises(dbapi.OperationalError) as info:
            other.commit()
        assert isinstance(info.value.__cause__, TransactionConflictError)
        assert _balances(cluster[0])[4] == 1
        theirs.execute("SELECT balance FROM accounts WHERE id = 4")
        assert theirs.fetchall() == [(1,)]
        other.commit()

        conn.autocommit = True
        cur.execute("UPDATE accounts SET balance = 50 WHERE id = 5")
        assert _balances(cluster[0])[5] == 50


def test_the_shell_runs_a_transaction(cluster: tuple[EmbeddedCluster, Path]) -> None:
    script = (
        "BEGIN;\n"
        "UPDATE accounts SET balance = balance - 5 WHERE id = 6;\n"
        "UPDATE accounts SET balance = balance + 5 WHERE id = 7;\n"
        "SELECT sum(balance) FROM accounts WHERE id IN (6, 7);\n"
        "COMMIT;\n"
        "BEGIN;\n"
        "DELETE FROM accounts;\n"
        "ROLLBACK;\n"
    )
    run = subprocess.run(
        [sys.executable, "-m", "shardwise.cli", "sql"],
        input=script,
        env={**os.environ, "SHARDWISE_CLUSTER_DIR": str(cluster[1]), "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    words = [line.split(" (")[0].strip() for line in run.stdout.splitlines()]
    assert words.count("BEGIN") == 2 and "COMMIT" in words and "ROLLBACK" in words, run.stdout
    assert "200" in run.stdout
    balances = _balances(cluster[0])
    assert (balances[6], balances[7]) == (95, 105)
    assert len(balances) == 20
