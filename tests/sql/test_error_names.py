"""Errors from SQLite on a shard name the user's tables and columns (``users.id``), never
the shard's physical ``sql_users``, and keep the shard as a detail (issue 18, point 11):
through ``Client.sql``, the DB-API and the real ``shardwise sql`` command, against a real
(embedded) cluster."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Final

import pytest

from shardwise import dbapi
from shardwise.client import SyncClient
from shardwise.embedded import EmbeddedCluster
from shardwise.errors import SqlConstraintError, SqlExecutionError
from shardwise.model.config import ShardId
from shardwise.model.schemes import shard_map
from shardwise.sql.catalog import PHYSICAL_PREFIX, logical_names

pytestmark = pytest.mark.timeout(180)

CLI_TIMEOUT_S: Final = 60.0
USERS: Final = (
    "CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT NOT NULL, sql_note TEXT) "
    "WITH (distribution = 'id')"
)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[EmbeddedCluster, Path]]:
    root = tmp_path_factory.mktemp("errnames")
    with EmbeddedCluster(groups=2, replicas=1, controllers=1, data_dir=root / "data") as cluster:
        described = root / "cluster"
        cluster.describe(described)
        with cluster.client() as client:
            client.sql(USERS)
            client.sql("INSERT INTO users VALUES (1, 'a@x', NULL), (2, 'b@x', NULL)")
        yield cluster, described


@pytest.fixture
def client(cluster: tuple[EmbeddedCluster, Path]) -> Iterator[SyncClient]:
    with cluster[0].client() as client:
        yield client


def shard_of(client: SyncClient, key: int) -> str:
    config = client.configuration
    assert config is not None
    return str(ShardId("default", shard_map(config.keyspaces["default"]).index(key)))


def test_a_duplicate_key_names_the_table_and_column(client: SyncClient) -> None:
    with pytest.raises(SqlConstraintError) as info:
        client.sql("INSERT INTO users VALUES (1, 'c@x', NULL)")
    assert str(info.value) == "UNIQUE constraint failed: users.id"
    assert info.value.shard == shard_of(client, 1)  # the shard is a detail, kept aside


def test_not_null_names_the_users_column(client: SyncClient) -> None:
    with pytest.raises(SqlConstraintError) as info:
        client.sql("INSERT INTO users (id, email) VALUES (3, NULL)")
    assert str(info.value) == "NOT NULL constraint failed: users.email"
    # A column whose own name starts like a physical table name is left as it is.
    with pytest.raises(SqlConstraintError) as other:
        client.sql("UPDATE users SET email = NULL, sql_note = 'n' WHERE id = 2")
    assert str(other.value) == "NOT NULL constraint failed: users.email"


def test_a_multi_shard_write_keeps_the_shard_as_a_detail(client: SyncClient) -> None:
    keys = list(range(100, 140))
    values = ", ".join(f"({k}, {'NULL' if k == 107 else repr(str(k))}, NULL)" for k in keys)
    with pytest.raises(SqlExecutionError) as info:
        client.sql(f"INSERT INTO users VALUES {values}")
    # One transaction: nothing applied anywhere, and the error is the shard's own.
    assert str(info.value) == "NOT NULL constraint failed: users.email"
    assert PHYSICAL_PREFIX not in str(info.value)
    assert info.value.shard == shard_of(client, 107)
    assert client.sql("SELECT count(*) FROM users WHERE id >= 100").rows == [(0,)]


def test_dbapi_errors_name_the_table_and_carry_the_shard(
    cluster: tuple[EmbeddedCluster, Path],
) -> None:
    with dbapi.connect(cluster[1]) as conn:
        cur = conn.cursor()
        with pytest.raises(dbapi.IntegrityError) as info:
            cur.execute("INSERT INTO users VALUES (?, ?, NULL)", [2, "z@x"])
        assert str(info.value) == "UNIQUE constraint failed: users.id"
        assert info.value.shard.startswith("default/")
        assert isinstance(info.value.__cause__, SqlConstraintError)


def test_the_shell_names_the_table_and_shows_the_shard_on_a_line_of_its_own(
    cluster: tuple[EmbeddedCluster, Path],
) -> None:
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "shardwise.cli",
            "sql",
            "-c",
            "INSERT INTO users VALUES (1, 'q', 'r')",
        ],
        env={**os.environ, "SHARDWISE_CLUSTER_DIR": str(cluster[1]), "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
        check=False,
    )
    assert run.returncode == 12, run.stderr  # a SQL error
    lines = [line.strip() for line in run.stderr.strip().splitlines()]
    assert lines[0] == "ERROR (constraint): UNIQUE constraint failed: users.id", run.stderr
    assert lines[1].startswith("DETAIL: on shard default/"), run.stderr
    assert PHYSICAL_PREFIX + "users" not in run.stderr + run.stdout


@pytest.mark.parametrize(
    ("message", "tables", "expected"),
    [
        ("UNIQUE constraint failed: sql_users.id", ["users"], "UNIQUE constraint failed: users.id"),
        # A column named like a physical table is a column (after a dot): left alone.
        ("NOT NULL constraint failed: sql_t.sql_t", ["t"], "NOT NULL constraint failed: t.sql_t"),
        # Of two tables whose names share a prefix, the whole name is the one meant.
        ("no such table: sql_tt", ["t", "tt"], "no such table: tt"),
        ("no such table: sql_tt", ["t"], "no such table: sql_tt"),
        # Names compare as SQLite compares them; spaces and non-ASCII names are names.
        ("UNIQUE constraint failed: sql_Übung.id", ["übung"], "UNIQUE constraint failed: Übung.id"),
        ("failed: sql_my table.id", ["my table"], "failed: my table.id"),
        ("integer overflow", [], "integer overflow"),
    ],
)
def test_logical_names(message: str, tables: list[str], expected: str) -> None:
    assert logical_names(message, tables) == expected
