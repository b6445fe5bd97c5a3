"""SQL a shard could run differently on different replicas, found by a hostile review
(each test failed before its fix): a column declaration with a computed default, and
'now' hidden behind a NUL byte."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from shardwise.controller.access import change_denied
from shardwise.model.access import AccessCatalog, Role, User, parse_grant
from shardwise.model.catalog_changes import changed_tables
from shardwise.model.config import (
    AddColumn,
    Column,
    CreateTable,
    Table,
    initial_configuration,
)
from shardwise.model.scram import make_verifier
from shardwise.shardserver.commands import (
    SqlWriteResult,
)
from shardwise.testing.hostile_sql import TABLE
from shardwise.testing.shard_replica import ShardReplica


class Replica(ShardReplica):
    def write_checked(self, sql: str) -> tuple[str, SqlWriteResult]:
        """What the leader says of ``sql``, and what applying it gives."""
        return self.refused(sql), self.write(sql)


def _two_replicas(tmp_path: Path, tables: dict[str, Table]) -> tuple[Replica, Replica]:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    return Replica(tmp_path / "a", tables), Replica(tmp_path / "b", tables)


# --- H1: a column "type" carried raw in CreateTable / AddColumn is spliced into DDL ------

EVIL = Table(
    "evil",
    "default",
    "id",
    (
        Column("id", "INTEGER"),
        Column("r", "INTEGER DEFAULT (random())"),  # not a literal: per-replica value
        Column("ts", "TEXT DEFAULT CURRENT_TIMESTAMP"),  # the replica's clock
    ),
)


def test_raw_create_table_with_nonliteral_default_is_refused_by_controller() -> None:
    """The client's DDL parser refuses non-literal defaults (sql/ddl.py ``_default``), but
    the controller accepts any Column.type in a raw ctl.change, and a keyspace admin
    user (not a cluster admin) may send it."""
    catalog = AccessCatalog(
        1,
        {"ka": User("ka", make_verifier("pw", salt=b"s" * 16), ("ks",))},
        {"ks": Role("ks", (parse_grant("admin:default"),))},
    )
    config = initial_configuration()
    assert change_denied(catalog, "ka", CreateTable(EVIL), config) == ""  # allowed
    assert change_denied(catalog, "ka", AddColumn("x", Column("c", "INT")), config) != ""
    with pytest.raises(Exception):  # noqa: B017 - any refusal will do
        changed_tables(config.tables, config.keyspaces, CreateTable(EVIL), 1)


def test_nonliteral_default_makes_replicas_diverge(tmp_path: Path) -> None:
    """Such a table reaches every shard's DDL; an INSERT that omits the column is allowed
    (defaults bypass the write authorizer) and each replica stores its own value."""
    a, b = _two_replicas(tmp_path, {EVIL.name: EVIL})
    answers = []
    for replica in (a, b):
        answers.append(replica.write_checked('INSERT INTO "sql_evil" (id) VALUES (1)'))
        time.sleep(0.01)  # the replicas' clocks differ, as on two machines
    assert answers[0] == answers[1], answers
    assert a.digest() == b.digest(), "replicas diverged through a column DEFAULT"


# --- H2: 'now' hidden behind a NUL byte passes TimeFunctions' check ----------------------


@pytest.mark.parametrize(
    "call",
    ["date('now' || char(0))", "strftime('%H:%M:%f', 'now' || char(0))",
     "julianday(x'6e6f7700')", "time('now' || char(0, 120))"],
)  # fmt: skip
def test_now_with_a_nul_suffix_is_refused(tmp_path: Path, call: str) -> None:
    """Python sees 'now\\x00' (not 'now'); SQLite's C string compare sees 'now' and reads
    the clock: each replica stores its own time."""
    a, b = _two_replicas(tmp_path, {TABLE.name: TABLE})
    results = []
    for replica in (a, b):
        results.append(replica.write(f'INSERT INTO "sql_h" (id, t) VALUES (1, {call})'))
        time.sleep(0.02)  # the replicas' clocks differ, as on two machines
    assert all(r.code == "nondeterministic" for r in results), results
    assert a.digest() == b.digest()
