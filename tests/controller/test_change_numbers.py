"""Each configuration records the latest configuration that changed its shard map and the
latest that changed its catalog (issue 18, point 13): DDL makes numbered configurations
(each group applies it at one point of its log), but no longer looks like a change of the
shard map. The numbers are part of the replicated state, so they are derived in the state
machine, identical on every replica, and an older snapshot gets them back on restore."""

from __future__ import annotations

import random

import msgspec

from shardwise.controller.statemachine import (
    ControllerStateMachine,
    _Snapshot,
    decode_result,
    encode_command,
)
from shardwise.model.config import (
    COMMAND_VERSION,
    UNRECORDED,
    AddColumn,
    Column,
    Configuration,
    CreateIndex,
    CreateKeyspace,
    CreateTable,
    DropTable,
    IndexDef,
    Join,
    Keyspace,
    Leave,
    Move,
    Op,
    Rebalance,
    Scheme,
    ShardId,
    Table,
)


class Driver:
    def __init__(self) -> None:
        self.sm = ControllerStateMachine()
        self.index = 0
        self.log: list[bytes] = []

    def do(self, op: Op) -> int:
        self.index += 1
        self.log.append(encode_command(op, client_id="t", seq=self.index))
        return decode_result(self.sm.apply(self.index, self.log[-1])).num

    def configs(self) -> list[Configuration]:
        return [self.sm.query(n) for n in range(self.sm.latest().num + 1)]


def table(name: str) -> Table:
    return Table(name, "default", "id", (Column("id", "INTEGER"), Column("v", "TEXT")))


class OldConfiguration(msgspec.Struct, frozen=True, array_like=True):
    """Configuration as it was encoded before the change numbers were recorded."""

    num: int
    groups: dict[int, tuple[str, ...]]
    keyspaces: dict[str, Keyspace]
    owners: dict[str, tuple[int, ...]]
    tables: dict[str, Table] = {}


def naive_numbers(configs: list[Configuration]) -> list[tuple[int, int]]:
    """Independent of the code under test: for each configuration, the last one at or
    before it whose shard map (groups, keyspaces, owners) or tables differ from its
    predecessor's."""
    out: list[tuple[int, int]] = []
    for n, config in enumerate(configs):
        map_at = max(
            [0]
            + [
                m
                for m in range(1, n + 1)
                if (configs[m].groups, configs[m].keyspaces, configs[m].owners)
                != (configs[m - 1].groups, configs[m - 1].keyspaces, configs[m - 1].owners)
            ]
        )
        catalog_at = max(
            [0] + [m for m in range(1, n + 1) if configs[m].tables != configs[m - 1].tables]
        )
        out.append((map_at, catalog_at))
        assert config.num == n
    return out


def test_ddl_moves_the_catalog_number_only() -> None:
    d = Driver()
    assert d.do(Join({1: ("a",), 2: ("b",)})) == 1
    assert d.do(CreateTable(table("users"))) == 2
    assert d.do(AddColumn("users", Column("age", "INTEGER"))) == 3
    assert d.do(CreateIndex("users", IndexDef("by_age", ("age",)))) == 4
    latest = d.sm.latest()
    assert (latest.num, latest.shard_map_changed_at, latest.catalog_changed_at) == (4, 1, 4)
    assert d.do(Move(ShardId("default", 0), 2 if latest.owner(ShardId("default", 0)) == 1 else 1))
    moved = d.sm.latest()
    assert (moved.num, moved.shard_map_changed_at, moved.catalog_changed_at) == (5, 5, 4)
    # Configuration 0 records itself; every configuration is kept with its numbers.
    zero = d.sm.query(0)
    assert (zero.shard_map_changed_at, zero.catalog_changed_at) == (0, 0)
    assert [(c.shard_map_changed_at, c.catalog_changed_at) for c in d.configs()] == [
        (0, 0),
        (1, 0),
        (1, 2),
        (1, 3),
        (1, 4),
        (5, 4),
    ]


def random_ops(rng: random.Random, count: int) -> list[Op]:
    ops: list[Op] = [Join({1: ("a",)})]
    names = ["t1", "t2", "t3"]
    for step in range(count):
        kind = rng.choice(
            ["join", "leave", "move", "rebalance", "keyspace", "create", "drop", "column"]
        )
        gid = rng.randint(1, 4)
        name = rng.choice(names)
        if kind == "join":
            ops.append(Join({gid: (f"s{gid}",)}))
        elif kind == "leave":
            ops.append(Leave((gid,)))
        elif kind == "move":
            ops.append(Move(ShardId("default", rng.randrange(64)), gid))
        elif kind == "rebalance":
            ops.append(Rebalance(rng.choice(["balanced", "ring", "rendezvous"])))
        elif kind == "keyspace":
            ops.append(CreateKeyspace(Keyspace(f"k{step}", Scheme(shards=rng.randint(1, 8)))))
        elif kind == "create":
            ops.append(CreateTable(table(name)))
        elif kind == "drop":
            ops.append(DropTable(name))
        else:
            ops.append(AddColumn(name, Column(f"c{step}", "TEXT")))
    return ops  # refused ones (a group twice, a missing table) make no configuration


def test_the_numbers_match_a_naive_scan_of_the_history(rng: random.Random) -> None:
    d = Driver()
    for op in random_ops(rng, 120):
        d.do(op)
    configs = d.configs()
    assert len(configs) > 30
    got = [(c.shard_map_changed_at, c.catalog_changed_at) for c in configs]
    assert got == naive_numbers(configs)
    # Deterministic: a second replica fed the same log builds identical configurations.
    replica = ControllerStateMachine()
    for index, entry in enumerate(d.log, start=1):
        replica.apply(index, entry)
    assert replica.snapshot() == d.sm.snapshot()


def test_a_snapshot_from_before_the_numbers_restores_them(rng: random.Random) -> None:
    d = Driver()
    for op in random_ops(rng, 80):
        d.do(op)
    configs = d.configs()
    # The snapshot an older controller wrote: configurations of five fields.
    old_snapshot = msgspec.msgpack.encode(
        [
            COMMAND_VERSION,
            [OldConfiguration(c.num, c.groups, c.keyspaces, c.owners, c.tables) for c in configs],
            [],
        ]
    )
    decoded = msgspec.msgpack.decode(old_snapshot, type=_Snapshot)
    assert all(c.shard_map_changed_at == UNRECORDED for c in decoded.configs)
    restored = ControllerStateMachine()
    restored.restore(old_snapshot, d.index)
    assert [restored.query(n) for n in range(len(configs))] == configs
    # ...and goes on numbering from there as the original does.
    op = CreateTable(table("after_restore"))
    restored.apply(d.index + 1, encode_command(op, client_id="t", seq=d.index + 1))
    d.do(op)
    assert restored.latest() == d.sm.latest()


def test_old_and_new_encodings_read_each_other() -> None:
    d = Driver()
    d.do(Join({1: ("a",)}))
    d.do(CreateTable(table("t")))
    new = d.sm.latest()
    # An older reader (a replica or a client not yet upgraded) ignores the new fields.
    old = msgspec.msgpack.decode(msgspec.msgpack.encode(new), type=OldConfiguration)
    assert (old.num, old.tables) == (new.num, new.tables)
    # A configuration an older controller sent decodes, with the numbers unrecorded.
    back = msgspec.msgpack.decode(msgspec.msgpack.encode(old), type=Configuration)
    assert (back.shard_map_changed_at, back.catalog_changed_at) == (UNRECORDED, UNRECORDED)
    assert msgspec.structs.replace(back, shard_map_changed_at=1, catalog_changed_at=2) == new
