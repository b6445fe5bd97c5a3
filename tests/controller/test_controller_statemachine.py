"""The controller's state machine: configurations, strategies, minimal moves, bad input."""

from __future__ import annotations

import random

import msgspec
import pytest

from shardwise.controller.statemachine import ControllerStateMachine, decode_result, encode_command
from shardwise.model.config import (
    AddColumn,
    ChangeResult,
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
    SetStats,
    ShardId,
    Table,
    initial_configuration,
)
from shardwise.model.schemes import shard_map


class Driver:
    """Feeds commands to one state machine as a log would."""

    def __init__(self) -> None:
        self.sm = ControllerStateMachine()
        self.index = 0
        self.seq = 0

    def do(self, op: Op, client: str = "admin") -> ChangeResult:
        self.index += 1
        self.seq += 1
        return decode_result(
            self.sm.apply(self.index, encode_command(op, client_id=client, seq=self.seq))
        )


def counts(config: Configuration, keyspace: str = "default") -> dict[int, int]:
    out = dict.fromkeys(config.groups, 0)
    for owner in config.owners[keyspace]:
        if owner:
            out[owner] += 1
    return out


def lower_bound(before: Configuration, after_groups: list[int], keyspace: str = "default") -> int:
    """Independent of the code under test: orphans plus the excess over the best quotas."""
    owners = before.owners[keyspace]
    shards, live = len(owners), sorted(after_groups)
    if not live:
        return sum(1 for o in owners if o)
    have = {g: sum(1 for o in owners if o == g) for g in live}
    orphans = sum(1 for o in owners if o not in have)
    base, extra = divmod(shards, len(live))
    biggest_first = sorted(have.values(), reverse=True)
    quotas = [base + 1] * extra + [base] * (len(live) - extra)
    return orphans + sum(max(0, h - q) for h, q in zip(biggest_first, quotas, strict=True))


def test_configuration_zero() -> None:
    config = ControllerStateMachine().query(0)
    assert config.num == 0 and config.groups == {}
    assert config.owners["default"] == (0,) * 64


def test_join_leave_and_history() -> None:
    d = Driver()
    assert d.do(Join({1: ("a", "b", "c")})).num == 1
    assert set(d.sm.latest().owners["default"]) == {1}
    d.do(Join({2: ("d", "e", "f"), 3: ("g",)}))
    assert sorted(counts(d.sm.latest()).values()) == [21, 21, 22]
    d.do(Leave((1,)))
    assert set(d.sm.latest().owners["default"]) == {2, 3}
    d.do(Join({1: ("a2",)}))  # a group id may come back after it left
    assert d.sm.latest().groups[1] == ("a2",)
    assert [d.sm.query(n).num for n in range(5)] == [0, 1, 2, 3, 4]
    assert d.sm.query(1).owners["default"] == (1,) * 64  # history is kept intact
    assert d.sm.query(-1) == d.sm.query(1000) == d.sm.latest()


def test_every_join_and_leave_moves_the_minimum(seed: int) -> None:
    rng = random.Random(seed)
    d = Driver()
    joined: list[int] = []
    for _ in range(60):
        before = d.sm.latest()
        if len(joined) > 1 and (rng.random() < 0.4 or len(joined) > 8):
            gone = rng.sample(joined, rng.randint(1, min(2, len(joined) - 1)))
            groups = [g for g in joined if g not in gone]
            result = d.do(Leave(tuple(gone)))
        else:
            new = rng.sample([g for g in range(1, 20) if g not in joined], rng.randint(1, 2))
            groups = joined + new
            result = d.do(Join({g: (f"s{g}",) for g in new}))
        joined = groups
        assert not result.error, result.message
        assert len(result.moves) == lower_bound(before, groups), f"seed={seed}"
        spread = counts(d.sm.latest())
        if spread:
            assert max(spread.values()) - min(spread.values()) <= 1


def test_the_last_groups_cannot_leave() -> None:
    """Their shards would go to nobody, and a shard gained from nobody starts empty."""
    d = Driver()
    d.do(Join({1: ("a",), 2: ("b",)}))
    before = d.sm.latest()
    result = d.do(Leave((1, 2)))
    assert result.error == "orphaned_shards" and "join another group" in result.message
    assert d.sm.latest() == before
    assert not d.do(Leave((1,))).error


def test_a_strategy_that_moves_too_much_is_caught() -> None:
    """The control for the test above: reassigning from scratch is balanced but wasteful."""
    d = Driver()
    d.do(Join({1: ("a",), 2: ("b",)}))
    before = d.sm.latest()
    wasteful = {i: 1 + (i * 7 + 3) % 3 for i in range(64)}  # balanced over 1, 2, 3
    changed = sum(1 for i, g in wasteful.items() if before.owners["default"][i] != g)
    assert changed > lower_bound(before, [1, 2, 3])


def test_move_is_honoured_exactly() -> None:
    d = Driver()
    d.do(Join({1: ("a",), 2: ("b",)}))
    shard = ShardId("default", 5)
    target = 2 if d.sm.latest().owner(shard) == 1 else 1
    result = d.do(Move(shard, target))
    assert d.sm.latest().owner(shard) == target
    assert [(m.shard, m.target) for m in result.moves] == [(shard, target)]


@pytest.mark.parametrize("strategy", ["ring", "rendezvous"])
def test_a_leave_with_a_hashing_strategy_moves_only_the_leavers_shards(strategy: str) -> None:
    d = Driver()
    d.do(Rebalance(strategy))  # type: ignore[arg-type]
    d.do(Join({g: (f"s{g}",) for g in range(1, 6)}))
    before = d.sm.latest()
    result = d.do(Leave((3,)))
    leavers = {ShardId("default", i) for i, g in enumerate(before.owners["default"]) if g == 3}
    assert {m.shard for m in result.moves} == leavers


def test_identical_configurations_whatever_the_dict_order(seed: int) -> None:
    rng = random.Random(seed)
    ops: list[tuple[str, dict[int, tuple[str, ...]] | tuple[int, ...]]] = [
        ("join", {1: ("a",), 2: ("b",), 3: ("c",)}),
        ("join", {7: ("x", "y"), 5: ("z",)}),
        ("leave", (2, 7)),
        ("join", {2: ("b2",), 9: ("n",)}),
    ]
    machines = []
    for _ in range(2):
        d = Driver()
        for kind, arg in ops:
            if kind == "join":
                assert isinstance(arg, dict)
                items = list(arg.items())
                rng.shuffle(items)
                d.do(Join(dict(items)))
            else:
                assert isinstance(arg, tuple)
                d.do(Leave(tuple(rng.sample(arg, len(arg)))))
        machines.append(d.sm)
    assert machines[0].latest() == machines[1].latest()
    assert machines[0].snapshot() == machines[1].snapshot()


@pytest.mark.parametrize(
    ("op", "code"),
    [
        (Leave((42,)), "unknown_group"),
        (Leave(()), "unknown_group"),
        (Join({}), "invalid_servers"),
        (Join({1: ("again",)}), "group_exists"),
        (Join({4: ()}), "invalid_servers"),
        (Join({4: ("s", "s")}), "invalid_servers"),
        (Join({0: ("s",)}), "unknown_group"),
        (Move(ShardId("default", 64), 1), "unknown_shard"),
        (Move(ShardId("nope", 0), 1), "unknown_shard"),
        (Move(ShardId("default", 0), 99), "unknown_group"),
        (CreateKeyspace(Keyspace("default", Scheme())), "keyspace_exists"),
        (CreateKeyspace(Keyspace("bad", Scheme(shards=0))), "invalid_scheme"),
        (
            CreateKeyspace(Keyspace("bad", Scheme("range", 3, split_points=("b", "a")))),
            "invalid_scheme",
        ),
        (Rebalance("balanced", "nope"), "unknown_keyspace"),
        (DropTable("nope"), "catalog"),
    ],
)
def test_bad_requests_change_nothing(op: Op, code: str) -> None:
    d = Driver()
    d.do(Join({1: ("a",)}))
    before = d.sm.snapshot()
    latest = d.sm.latest()
    result = d.do(op)
    assert result.error == code, result
    assert result.num == latest.num and d.sm.latest() == latest
    assert msgspec.msgpack.decode(d.sm.snapshot())[1] == msgspec.msgpack.decode(before)[1]


def test_query_rejects_negative_numbers() -> None:
    from shardwise.errors import InvalidQueryError  # noqa: PLC0415

    with pytest.raises(InvalidQueryError):
        ControllerStateMachine().query(-2)


def test_retries_are_applied_once() -> None:
    sm = ControllerStateMachine()
    command = encode_command(Join({1: ("a",)}), client_id="c", seq=1)
    first = sm.apply(1, command)
    assert sm.apply(2, command) == first
    assert sm.latest().num == 1
    # Whatever a retry carries, the same sequence number gets the remembered answer.
    retried = decode_result(sm.apply(3, encode_command(Leave((1,)), client_id="c", seq=1)))
    assert retried == decode_result(first) and sm.latest().num == 1
    newer = encode_command(Join({2: ("b",)}), client_id="c", seq=2)
    assert decode_result(sm.apply(4, newer)).num == 2
    # An older sequence number than the client's latest is refused, changing nothing.
    old = decode_result(sm.apply(5, encode_command(Join({7: ("x",)}), client_id="c", seq=1)))
    assert old.error == "stale" and sm.latest().num == 2


def test_snapshot_and_restore() -> None:
    d = Driver()
    d.do(Join({1: ("a",), 2: ("b",)}))
    d.do(CreateKeyspace(Keyspace("users", Scheme("ring", 16, vnodes=8), "rendezvous")))
    copy = ControllerStateMachine()
    copy.restore(d.sm.snapshot(), d.index)
    assert copy.latest() == d.sm.latest() and copy.applied_index() == d.index
    assert copy.query(1) == d.sm.query(1)


def test_keyspaces_and_their_shard_maps() -> None:
    d = Driver()
    d.do(Join({1: ("a",), 2: ("b",)}))
    d.do(CreateKeyspace(Keyspace("ring", Scheme("ring", 10, vnodes=16))))
    d.do(CreateKeyspace(Keyspace("ranges", Scheme("range", 3, split_points=("g", "p")))))
    config = d.sm.latest()
    assert sorted(counts(config, "ring").values()) == [5, 5]
    ranges = shard_map(config.keyspaces["ranges"])
    assert [ranges.index(k) for k in ("apple", "grape", "zebra")] == [0, 1, 2]
    ring = shard_map(config.keyspaces["ring"])
    assert all(0 <= ring.index(f"k{i}") < 10 for i in range(100))
    assert len({ring.index(f"k{i}") for i in range(1000)}) == 10
    hashed = shard_map(config.keyspaces["default"])
    assert hashed.shard("user:1") == ShardId("default", hashed.index("user:1"))


def test_catalog() -> None:
    d = Driver()
    columns = (Column("id", "INTEGER"), Column("name", "TEXT"))
    assert not d.do(CreateTable(Table("users", "default", "id", columns))).error
    assert d.do(CreateTable(Table("users", "default", "id", columns))).error == "catalog"
    bad = Table("t2", "default", "missing", columns)
    assert d.do(CreateTable(bad)).error == "catalog"
    reference = Table("tiers", "default", "", columns)  # a copy on every shard
    assert not d.do(CreateTable(reference)).error
    assert d.sm.latest().tables["tiers"].is_reference
    # Each CREATE TABLE is told apart from any other of the same name (shard_schema).
    assert d.sm.latest().tables["tiers"].created_at == d.sm.latest().num
    assert d.sm.latest().tables["users"].created_at == 1
    assert not d.do(AddColumn("users", Column("email", "TEXT"))).error
    assert not d.do(CreateIndex("users", IndexDef("by_email", ("email",), unique=True))).error
    assert d.do(CreateIndex("users", IndexDef("by_x", ("x",)))).error == "catalog"
    table = d.sm.latest().tables["users"]
    assert [c.name for c in table.columns] == ["id", "name", "email"]
    assert not d.do(DropTable("users")).error
    assert "users" not in d.sm.latest().tables
    assert "users" in d.sm.query(4).tables  # the past catalog stays queryable


def test_the_controller_checks_and_keeps_counts_beside_the_catalog() -> None:
    d = Driver()
    columns = (Column("id", "INTEGER"),)
    assert not d.do(CreateTable(Table("t", "default", "id", columns))).error
    catalog_num = d.sm.latest().catalog_changed_at
    assert not d.do(SetStats({"t": 42})).error
    latest = d.sm.latest()
    assert d.do(SetStats({"t": 42})).num == latest.num  # the same count: no new configuration
    assert latest.stats["t"].rows == 42 and latest.stats["t"].analyzed_at == latest.num
    # A count changes no table: statements planned before it are not refused for it.
    assert latest.catalog_changed_at == catalog_num
    for bad in ({"nope": 1}, {"t": -1}, {}):
        assert d.do(SetStats(bad)).error == "catalog", bad
    assert not d.do(DropTable("t")).error
    assert "t" not in d.sm.latest().stats
    # Older encodings (no stats field) still decode.
    old = msgspec.msgpack.encode(msgspec.structs.astuple(initial_configuration())[:7])
    assert msgspec.msgpack.decode(old, type=type(initial_configuration())).stats == {}
