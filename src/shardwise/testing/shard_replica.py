"""One replica of a one-group cluster's state machine, fed SQL writes by hand.

For tests of what a shard does with a SQL write batch as it applies it: the group owns
every shard of the default keyspace, the catalog holds ``tables``, and each
:meth:`ShardReplica.write` is one log entry (its own batch) on shard ``default/0``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from shardwise.model.config import Configuration, ShardId, Table, initial_configuration
from shardwise.model.sql import SqlStatement
from shardwise.shardserver.commands import (
    Reconfigure,
    SqlWrite,
    SqlWriteResult,
    decode_result,
    encode,
)
from shardwise.shardserver.protocol import schema_digest
from shardwise.shardserver.sqlshard import MAX_WRITE_STEPS
from shardwise.shardserver.statemachine import ShardGroupStateMachine
from shardwise.shardserver.store import ShardStore

SHARD: Final = ShardId("default", 0)


class ShardReplica:
    def __init__(self, directory: Path, tables: Mapping[str, Table]) -> None:
        base = initial_configuration()
        self.config = Configuration(
            num=1,
            groups={1: ("127.0.0.1:1",)},
            keyspaces=base.keyspaces,
            owners={"default": (1,) * len(base.owners["default"])},
            tables=dict(tables),
        )
        self.sm = ShardGroupStateMachine(1, directory)
        self.sm.apply(1, encode(Reconfigure(self.config)))
        self.index = 1
        self.seq = 0

    @property
    def store(self) -> ShardStore:
        store = self.sm.shards[SHARD].store
        assert store is not None
        return store

    def write(self, sql: str, steps: int = MAX_WRITE_STEPS, **params: Any) -> SqlWriteResult:
        """Apply ``sql`` as the next log entry, with a work limit of ``steps``."""
        self.index += 1
        self.seq += 1
        digest = schema_digest(self.config.tables, SHARD.keyspace)
        statements = (SqlStatement(sql, params),)
        command = SqlWrite(SHARD, "w", self.seq, 1, digest, statements, steps)
        result = decode_result(self.sm.apply(self.index, encode(command))).sql
        self.sm.end_batch()
        assert result is not None
        return result

    def refused(self, sql: str, **params: Any) -> str:
        """What the leader says of ``sql`` before proposing it ("" if it would propose)."""
        return self.sm.refused_sql(SHARD, (SqlStatement(sql, params),))

    def rows(self, sql: str) -> list[tuple[Any, ...]]:
        return self.store.read_sql(sql, {}, 1000)

    def digest(self) -> str:
        return self.store.content_digest()
