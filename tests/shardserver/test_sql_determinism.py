"""Randomized: every SQL write a shard accepts leaves every replica's shard identical.

Seeded write batches (``shardwise.testing.hostile_sql``: every storage class and
affinity, 64-bit edges and overflow, hex and blob literals, nested expressions, date
functions with and without ``'now'``, functions that differ between machines, broken
constraints) go through the log of three replicas of a group, each applying it with
different batch boundaries, and a fourth that restarts from a snapshot halfway. The
replicas must give the same result for every entry and hold the same shard, compared
with ``ShardStore.content_digest`` (a canonical typed dump in key order: raw files differ
by header counters when batch boundaries differ). Real processes: see
``test_sql_limits_processes.py``.
"""

from __future__ import annotations

import random
from pathlib import Path

from shardwise.model.config import Configuration, ShardId, initial_configuration
from shardwise.shardserver.commands import GroupResult, Reconfigure, SqlWrite, decode_result, encode
from shardwise.shardserver.digest import vacuumed_digest
from shardwise.shardserver.protocol import schema_digest
from shardwise.shardserver.sqlshard import MAX_WRITE_STEPS
from shardwise.shardserver.statemachine import ShardGroupStateMachine
from shardwise.testing.hostile_sql import TABLE, HostileWrites

S0 = ShardId("default", 0)
BATCHES = 400


def configuration() -> Configuration:
    base = initial_configuration()
    return Configuration(
        num=1,
        groups={1: ("127.0.0.1:1",)},
        keyspaces=base.keyspaces,
        owners={"default": (1,) * len(base.owners["default"])},
        tables={TABLE.name: TABLE},
    )


class Replica:
    def __init__(self, directory: Path, boundaries: random.Random | None, every: int) -> None:
        self.sm = ShardGroupStateMachine(1, directory)
        self._boundaries = boundaries
        self._every = every
        self.results: list[GroupResult] = []

    def apply(self, index: int, entry: bytes) -> None:
        self.results.append(decode_result(self.sm.apply(index, entry)))
        if self._boundaries is not None:
            end = self._boundaries.random() < 0.3
        else:
            end = index % self._every == 0
        if end:
            self.sm.end_batch()

    def digest(self) -> str:
        self.sm.end_batch()
        store = self.sm.shards[S0].store
        assert store is not None
        return store.content_digest()

    def vacuumed(self) -> str:
        """The file's bytes once rewritten without its history (``vacuumed_digest``)."""
        store = self.sm.shards[S0].store
        assert store is not None
        store.flush()
        return vacuumed_digest(store.path)


def test_accepted_writes_leave_every_replica_identical(
    tmp_path: Path, rng: random.Random, seed: int
) -> None:
    config = configuration()
    digest = schema_digest(config.tables, "default")
    writes = HostileWrites(rng)
    batches = [writes.batch() for _ in range(BATCHES)]
    log = [encode(Reconfigure(config))]
    for seq, batch in enumerate(batches, start=1):
        log.append(encode(SqlWrite(S0, "w", seq, 1, digest, batch.statements, MAX_WRITE_STEPS)))
    replicas = [
        Replica(tmp_path / "one-by-one", None, 1),
        Replica(tmp_path / "random", random.Random(seed + 1), 0),
        Replica(tmp_path / "all-at-once", None, len(log)),
    ]
    half = len(log) // 2
    for index, entry in enumerate(log, start=1):
        for replica in replicas:
            replica.apply(index, entry)
        if index == half:
            replicas[0].sm.end_batch()
            restarted = Replica(tmp_path / "restarted", None, 7)
            restarted.sm.restore(replicas[0].sm.snapshot(), index)
    for index, entry in enumerate(log[half:], start=half + 1):
        restarted.apply(index, entry)
    first = replicas[0]
    for other in (*replicas[1:],):
        for n, (mine, theirs) in enumerate(zip(first.results, other.results, strict=True)):
            assert mine == theirs, f"entry {n + 1} (seed {seed}): {mine} != {theirs}"
    assert restarted.results == first.results[half:], f"seed {seed}"
    digests = {r.digest() for r in (*replicas, restarted)}
    assert len(digests) == 1, f"replicas diverged (seed {seed})"
    files = {r.vacuumed() for r in (*replicas, restarted)}
    assert len(files) == 1, f"replicas' shard files differ byte for byte (seed {seed})"

    # The run tested something: writes applied, failed and were refused.
    sql = [r.sql for r in first.results[1:]]
    assert all(s is not None for s in sql)
    applied = sum(1 for s in sql if s is not None and not s.error and s.rowcount)
    failed = sum(1 for s in sql if s is not None and s.error and not s.code)
    refused = sum(1 for s in sql if s is not None and s.code == "nondeterministic")
    assert applied > BATCHES // 10 and failed > 5 and refused > 5, (applied, failed, refused)
    for batch, result in zip(batches, sql, strict=True):
        if batch.refused_by_name:  # never accepted (an earlier statement may fail first)
            assert result is not None and result.error and not result.rowcount, (seed, batch)
    kinds = " UNION ".join(f'SELECT typeof({c}) FROM "sql_h"' for c in ("i", "t", "r", "b", "x"))
    rows = first.sm.shards[S0].store.read_sql(kinds, {}, 9)  # type: ignore[union-attr]
    assert len(rows) >= 2, rows  # values were left (of several storage classes, mostly)
    for replica in (*replicas, restarted):
        replica.sm.close()
