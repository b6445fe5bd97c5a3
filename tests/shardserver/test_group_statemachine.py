"""The replica group's state machine, driven by hand through its log commands: what it
serves, how a shard leaves and arrives, and what it ignores."""

from __future__ import annotations

from pathlib import Path

import crc32c
import msgspec
import pytest

from shardwise.errors import CommandDecodeError, CommandVersionError
from shardwise.model.config import Configuration, ShardId, initial_configuration
from shardwise.model.kv import Append, Delete, Get, Put
from shardwise.model.txn import TxnPart
from shardwise.shardserver.commands import (
    GROUP_COMMAND_VERSION,
    AckDelivered,
    ClientBatch,
    ClientOp,
    Command,
    GroupCommand,
    GroupResult,
    HandOffDone,
    InstallBase,
    InstallChunk,
    InstallDelta,
    InstallShard,
    Reconfigure,
    TxnCommit,
    decode,
    decode_result,
    encode,
)
from shardwise.shardserver.lifecycle import ShardState
from shardwise.shardserver.migration.image import export_delta, export_image
from shardwise.shardserver.statemachine import ShardGroupStateMachine

S0, S1 = ShardId("default", 0), ShardId("default", 1)
SERVERS = {1: ("127.0.0.1:1",), 2: ("127.0.0.1:2",)}


def config(num: int, owners: dict[int, int], groups: tuple[int, ...] = (1, 2)) -> Configuration:
    """Configuration ``num``: shards 0 and 1 by ``owners``, every other shard with group 1."""
    base = initial_configuration()
    row = [1] * len(base.owners["default"])
    for index, gid in owners.items():
        row[index] = gid
    return Configuration(
        num=num,
        groups={g: SERVERS[g] for g in groups},
        keyspaces=base.keyspaces,
        owners={"default": tuple(row)},
    )


class Group:
    def __init__(self, gid: int, directory: Path) -> None:
        self.sm = ShardGroupStateMachine(gid, directory)
        self.index = 0

    def do(self, command: Command) -> GroupResult:
        self.index += 1
        return decode_result(self.sm.apply(self.index, encode(command)))

    def op(self, shard: ShardId, op: object, client: str = "", seq: int = 0) -> GroupResult:
        return self.do(ClientOp(shard, client, seq, op))  # type: ignore[arg-type]

    def send(self, shard: ShardId, num: int, image: bytes, piece: int = 3000) -> None:
        for offset in range(0, len(image), piece):
            chunk = InstallChunk(shard, num, offset, image[offset : offset + piece])
            assert self.do(chunk).outcome == "ok"

    def install_from(self, source: Group, shard: ShardId, num: int, piece: int = 3000) -> bool:
        store = source.sm.frozen_store(shard, num)
        assert store is not None
        image = export_image(store)
        self.send(shard, num, image, piece)
        return self.do(InstallShard(shard, num, len(image), crc32c.crc32c(image))).outcome == "ok"

    def base_from(self, source: Group, shard: ShardId, num: int) -> int:
        """Log a base of ``shard`` (for configuration ``num``) taken from ``source``'s
        serving copy; its write version."""
        store = source.sm.serving_store(shard)
        assert store is not None
        image, version = export_image(store), store.write_version
        self.send(shard, num, image)
        base = InstallBase(shard, num, len(image), crc32c.crc32c(image), version)
        assert self.do(base).outcome == "ok"
        return version

    def delta_from(self, source: Group, shard: ShardId, num: int, since: int) -> GroupResult:
        store = source.sm.frozen_store(shard, num)
        assert store is not None
        delta = export_delta(store, since)
        assert delta is not None
        self.send(shard, num, delta)
        return self.do(InstallDelta(shard, num, len(delta), crc32c.crc32c(delta), since))


@pytest.fixture
def groups(tmp_path: Path) -> tuple[Group, Group]:
    g1, g2 = Group(1, tmp_path / "g1"), Group(2, tmp_path / "g2")
    c1 = config(1, {0: 1, 1: 1}, groups=(1,))
    for g in (g1, g2):
        assert g.do(Reconfigure(c1)).outcome == "ok"
    return g1, g2


def test_a_group_serves_exactly_the_shards_it_owns(groups: tuple[Group, Group]) -> None:
    g1, g2 = groups
    assert g1.op(S0, Put("k", "v"), seq=1).outcome == "ok"
    assert g1.op(S0, Get("k")).result.value == "v"  # type: ignore[union-attr]
    refused = g2.op(S0, Put("k", "w"), seq=2)
    assert refused.outcome == "wrong_group" and refused.config_num == 1
    assert g2.sm.read(S0, "k").serving is False
    assert not g1.sm.serves(ShardId("other", 0))


def test_a_moved_shard_arrives_with_its_data_and_deduplication(groups: tuple[Group, Group]) -> None:
    g1, g2 = groups
    assert g1.op(S0, Append("k", "a"), client="x", seq=1).outcome == "ok"
    c2 = config(2, {0: 2, 1: 1})
    assert g1.do(Reconfigure(c2)).outcome == g2.do(Reconfigure(c2)).outcome == "ok"
    # The source froze it; the target pulls it and serves nothing of it yet.
    assert g1.op(S0, Append("k", "b"), client="x", seq=2).outcome == "wrong_group"
    assert g2.op(S0, Append("k", "b"), client="x", seq=2).outcome == "wrong_group"
    assert g1.sm.shards[S0].state is ShardState.FROZEN
    assert [p.shard for p in g2.sm.pulls()] == [S0] and not g2.sm.finished()
    # Not finished: the next configuration waits.
    assert g2.do(Reconfigure(config(3, {0: 2, 1: 2}))).outcome == "ignored"
    # Shards that did not move keep serving at the source throughout.
    assert g1.op(S1, Put("other", "1"), seq=5).outcome == "ok"

    assert g2.install_from(g1, S0, 2)
    assert g2.sm.serves(S0) and g2.sm.finished()
    assert g2.op(S0, Get("k")).result.value == "a"  # type: ignore[union-attr]
    # The retried append (same client, same sequence number) is not applied twice.
    again = g2.op(S0, Append("k", "a"), client="x", seq=1)
    assert again.outcome == "ok"
    assert g2.op(S0, Get("k")).result.value == "a"  # type: ignore[union-attr]
    assert [(o.shard, o.config_num) for o in g2.sm.owed_acks()] == [(S0, 2)]

    path = Path(g1.sm.shards[S0].store.path)  # type: ignore[union-attr]
    assert path.exists()
    assert g1.do(HandOffDone(S0, 1)).outcome == "ignored"  # a hand-off of another loss
    assert g1.do(HandOffDone(S0, 2)).outcome == "ok"
    assert S0 not in g1.sm.shards and not path.exists()
    assert g1.do(HandOffDone(S0, 2)).outcome == "ignored"  # repeated: nothing left to do
    assert g2.do(AckDelivered(S0, 2)).outcome == "ok" and not g2.sm.owed_acks()


def test_a_bad_image_is_refused_and_the_pull_starts_again(groups: tuple[Group, Group]) -> None:
    g1, g2 = groups
    c2 = config(2, {0: 2, 1: 1})
    g1.do(Reconfigure(c2))
    g2.do(Reconfigure(c2))
    store = g1.sm.frozen_store(S0, 2)
    assert store is not None
    image = export_image(store)
    assert g2.do(InstallChunk(S0, 2, 0, image)).outcome == "ok"
    assert g2.do(InstallChunk(S0, 2, 5, b"xx")).outcome == "ignored"  # not the next piece
    assert g2.do(InstallShard(S0, 2, len(image), crc32c.crc32c(image) ^ 1)).outcome == "ignored"
    assert g2.sm.pulls()[0].received == 0 and not g2.sm.serves(S0)
    assert g2.do(InstallChunk(S0, 1, 0, image)).outcome == "ignored"  # another configuration
    assert g2.install_from(g1, S0, 2, piece=len(image))


def test_a_shard_given_back_is_pulled_from_the_group_in_between(
    groups: tuple[Group, Group],
) -> None:
    """g1 loses shard 0 to g2 in 2 and gets it back in 3, before g2 has even installed
    it: g1 must keep its frozen copy pullable for 2 and pull g2's copy for 3."""
    g1, g2 = groups
    g1.op(S0, Put("k", "1"), seq=1)
    c2, c3 = config(2, {0: 2, 1: 1}), config(3, {0: 1, 1: 1})
    g1.do(Reconfigure(c2))
    g1.do(Reconfigure(c3))  # g1 has nothing to pull in 2, so it moves on
    assert g1.sm.shards[S0].state is ShardState.PULLING
    assert g1.sm.frozen_store(S0, 2) is not None
    g2.do(Reconfigure(c2))
    assert g2.install_from(g1, S0, 2)
    assert g2.op(S0, Put("k", "2"), seq=2).outcome == "ok"  # g2 serves it in 2
    g2.do(Reconfigure(c3))
    assert g1.do(HandOffDone(S0, 2)).outcome == "ok"  # still pulling: just the copy goes
    assert g1.sm.shards[S0].state is ShardState.PULLING
    assert g1.install_from(g2, S0, 3)
    assert g1.op(S0, Get("k")).result.value == "2"  # type: ignore[union-attr]


def test_new_keyspaces_and_shards_from_nobody_start_empty(tmp_path: Path) -> None:
    g = Group(1, tmp_path)
    assert g.do(Reconfigure(config(2, {}))).outcome == "ignored"  # not the next number
    assert g.do(Reconfigure(config(1, {0: 1, 1: 1}, groups=(1,)))).outcome == "ok"
    assert g.sm.serves(S0) and g.op(S0, Get("k")).result.value is None  # type: ignore[union-attr]


def test_snapshot_and_restore_rebuild_the_same_state(
    groups: tuple[Group, Group], tmp_path: Path
) -> None:
    g1, g2 = groups
    g1.op(S0, Put("k", "v"), seq=1)
    c2 = config(2, {0: 2, 1: 1})
    g1.do(Reconfigure(c2))
    g2.do(Reconfigure(c2))
    g2.do(InstallChunk(S0, 2, 0, b"partial"))
    for g in (g1, g2):
        copy = ShardGroupStateMachine(g.sm.gid, tmp_path / f"copy{g.sm.gid}")
        copy.restore(g.sm.snapshot(), g.index)
        assert copy.config == g.sm.config and copy.applied_index() == g.index
        assert {s: r.state for s, r in copy.held()} == {s: r.state for s, r in g.sm.held()}
    restored = ShardGroupStateMachine(1, tmp_path / "again")
    restored.restore(g1.sm.snapshot(), g1.index)
    assert restored.frozen_store(S0, 2) is not None
    assert restored.frozen_store(S0, 2).get("k") == "v"  # type: ignore[union-attr]
    again = ShardGroupStateMachine(2, tmp_path / "again2")
    again.restore(g2.sm.snapshot(), g2.index)
    assert again.pulls()[0].received == len(b"partial")


def test_an_undecodable_entry_fails_alike_but_a_newer_version_halts(tmp_path: Path) -> None:
    """Bytes that are no command of a known version are the same on every replica: a
    ``failed`` result, applied. A version newer than this code halts (a newer replica
    would apply it: skipping it would diverge)."""
    sm = ShardGroupStateMachine(1, tmp_path)
    result = decode_result(sm.apply(1, b"\x93garbage"))
    assert result.outcome == "failed" and "undecodable" in result.error
    assert sm.applied_index() == 1
    newer = msgspec.msgpack.encode([GROUP_COMMAND_VERSION + 1, ["op", "x"]])
    with pytest.raises(CommandVersionError):
        sm.apply(2, newer)
    assert sm.applied_index() == 1


def test_files_of_an_earlier_incarnation_are_dropped(tmp_path: Path) -> None:
    """The log and snapshot are the record; the files are rebuilt from them."""
    g = Group(1, tmp_path)
    g.do(Reconfigure(config(1, {0: 1, 1: 1}, groups=(1,))))
    assert any(tmp_path.iterdir())
    g.sm.close()
    ShardGroupStateMachine(1, tmp_path)
    assert not any(tmp_path.iterdir())


def test_a_shard_gained_twice_owes_both_hand_offs(groups: tuple[Group, Group]) -> None:
    """Found by the sweep (seed 90): the second install must not overwrite the first
    confirmation owed, or the first source keeps its frozen copy forever."""
    g1, g2 = groups
    c2, c3, c4 = config(2, {0: 2, 1: 1}), config(3, {0: 1, 1: 1}), config(4, {0: 2, 1: 1})
    for c in (c2, c3, c4):
        g1.do(Reconfigure(c))
        g2.do(Reconfigure(c))
        source, target = (g1, g2) if c.owner(S0) == 2 else (g2, g1)
        assert target.install_from(source, S0, c.num)
    owed = [(o.shard, o.config_num) for o in g2.sm.owed_acks()]
    assert owed == [(S0, 2), (S0, 4)]
    restored = ShardGroupStateMachine(2, g2.sm.directory.parent / "restored")
    restored.restore(g2.sm.snapshot(), g2.index)
    assert [(o.shard, o.config_num) for o in restored.owed_acks()] == owed


def test_a_base_taken_while_the_source_serves_then_its_delta(
    groups: tuple[Group, Group], tmp_path: Path
) -> None:
    g1, g2 = groups
    g1.op(S0, Put("k", "1"), client="x", seq=1)
    g1.op(S0, Put("gone", "soon"), client="x", seq=2)
    c2 = config(2, {0: 2, 1: 1})
    # A base for the next configuration, before either group moves to it.
    version = g2.base_from(g1, S0, 2)
    assert not g2.sm.serves(S0) and g2.sm.base_version(S0, 2) == version
    # The source keeps serving: these writes reach the target in the delta.
    g1.op(S0, Put("k", "2"), client="x", seq=3)
    g1.op(S0, Append("new", "n"), client="y", seq=1)
    g1.op(S0, Delete("gone"), client="y", seq=2)
    assert g1.do(Reconfigure(c2)).outcome == g2.do(Reconfigure(c2)).outcome == "ok"
    assert [(p.shard, p.base_version) for p in g2.sm.pulls()] == [(S0, version)]
    # A restart between base and delta keeps the base (it is in the snapshot).
    restored = Group(2, tmp_path / "restored")
    restored.sm.restore(g2.sm.snapshot(), g2.index)
    restored.index = g2.index
    for group in (g2, restored):
        assert group.delta_from(g1, S0, 2, since=version).outcome == "ok"
        assert group.sm.serves(S0) and group.sm.finished()
        values = [group.op(S0, Get(k)).result.value for k in ("k", "new", "gone")]  # type: ignore[union-attr]
        assert values == ["2", "n", None]
        # De-duplication came with the delta: a retry of y's append is not applied again.
        assert group.op(S0, Append("new", "n"), client="y", seq=1).outcome == "ok"
        assert group.op(S0, Get("new")).result.value == "n"  # type: ignore[union-attr]
        assert [(o.shard, o.config_num) for o in group.sm.owed_acks()] == [(S0, 2)]
        assert not list(group.sm.directory.glob("*.base.db"))  # the base became the shard


def test_a_base_the_next_configuration_does_not_need_is_dropped(
    groups: tuple[Group, Group],
) -> None:
    g1, g2 = groups
    g2.base_from(g1, S1, 2)  # configuration 2 will not give shard 1 to g2
    assert list(g2.sm.directory.glob("*.base.db"))
    assert g2.do(Reconfigure(config(2, {0: 2, 1: 1}))).outcome == "ok"
    assert g2.sm.base_version(S1, 2) is None and S1 not in g2.sm.incoming
    assert not list(g2.sm.directory.glob("*.base.db"))
    # Pieces for a configuration neither next nor pulled are not taken at all.
    assert g2.do(InstallChunk(S1, 5, 0, b"x")).outcome == "ignored"


def test_a_delta_that_does_not_fit_its_base_drops_the_base(groups: tuple[Group, Group]) -> None:
    g1, g2 = groups
    g1.op(S0, Put("k", "1"), seq=1)
    version = g2.base_from(g1, S0, 2)
    g1.op(S0, Put("k", "2"), seq=2)
    c2 = config(2, {0: 2, 1: 1})
    g1.do(Reconfigure(c2))
    g2.do(Reconfigure(c2))
    # A delta counted from another version (a bug or a lie) is refused by every replica.
    assert g2.delta_from(g1, S0, 2, since=version - 1).outcome == "ignored"
    assert g2.sm.pulls()[0].base_version is None and not g2.sm.serves(S0)
    # The pull starts again: a base of the frozen copy and an empty delta.
    frozen = g1.sm.frozen_store(S0, 2)
    assert frozen is not None
    image = export_image(frozen)
    g2.send(S0, 2, image)
    base = InstallBase(S0, 2, len(image), crc32c.crc32c(image), frozen.write_version)
    assert g2.do(base).outcome == "ok"
    assert g2.delta_from(g1, S0, 2, since=frozen.write_version).outcome == "ok"
    assert g2.op(S0, Get("k")).result.value == "2"  # type: ignore[union-attr]


def test_a_batch_applies_each_operation_as_its_own_client_op(groups: tuple[Group, Group]) -> None:
    g1, _ = groups
    other = ShardId("other", 0)  # a keyspace this group does not serve
    batch = ClientBatch(
        (
            ClientOp(S0, "c", 1, Append("k", "a")),
            ClientOp(other, "c", 2, Put("x", "y")),
            ClientOp(S0, "c", 3, Append("k", "b")),  # the same shard, the same log index
            ClientOp(S1, "d", 1, Put("j", "v")),
            ClientOp(S0, "c", 3, Append("k", "b")),  # a retry within the batch
        )
    )
    result = g1.do(batch)
    assert [r.outcome for r in result.batch] == ["ok", "wrong_group", "ok", "ok", "ok"]
    assert g1.op(S0, Get("k")).result.value == "ab"  # type: ignore[union-attr]
    assert g1.op(S1, Get("j")).result.value == "v"  # type: ignore[union-attr]
    # Replayed at the same index (a restart's replay): nothing applies twice.
    replay = decode_result(g1.sm.apply(g1.index - 2, encode(batch)))
    assert [r.result for r in replay.batch if r.outcome == "ok"] == [None] * 4
    assert g1.op(S0, Get("k")).result.value == "ab"  # type: ignore[union-attr]
    # A later batch retrying an applied write gets its first answer, and applies nothing.
    again = g1.do(ClientBatch((ClientOp(S0, "c", 3, Append("k", "b")),)))
    assert again.batch[0].result is not None and again.batch[0].result.ok
    assert g1.op(S0, Get("k")).result.value == "ab"  # type: ignore[union-attr]


def test_a_batch_carries_transactions_commands_on_shards_of_their_own(
    groups: tuple[Group, Group],
) -> None:
    """A transaction's command in a batch entry applies as an entry of its own would, if
    no earlier part of the entry touched its shards (a store applies an entry once);
    else it is ``ignored`` (asked again, it goes in another entry), on every replica."""
    g1, _ = groups
    on_s0 = TxnCommit("t", 1, (TxnPart(S0, writes=(Put("a", "1"),)),))
    on_s1 = TxnCommit("t", 2, (TxnPart(S1, writes=(Put("b", "2"),)),))
    again_s1 = TxnCommit("t", 3, (TxnPart(S1, writes=(Put("c", "3"),)),))
    batch = ClientBatch((ClientOp(S0, "c", 1, Put("k", "v")),), (on_s0, on_s1, again_s1))
    assert decode(encode(batch)) == batch
    result = g1.do(batch)
    outcomes = [r.outcome for r in result.batch]
    assert outcomes == ["ok", "ignored", "ok", "ignored"]
    assert [v.state for v in result.batch[2].votes] == ["committed"]
    assert g1.op(S1, Get("b")).result.value == "2"  # type: ignore[union-attr]
    assert g1.op(S0, Get("a")).result.value is None  # type: ignore[union-attr]
    assert g1.op(S1, Get("c")).result.value is None  # type: ignore[union-attr]
    # A replay of the entry applies nothing again (every touched store is past it).
    replay = decode_result(g1.sm.apply(g1.index - 3, encode(batch)))
    assert [r.outcome for r in replay.batch] == ["ok", "ignored", "ok", "ignored"]
    # Older replicas halt on such an entry rather than misread it.
    envelope = msgspec.msgpack.decode(encode(batch))
    assert envelope[0] == 10
    assert msgspec.msgpack.decode(encode(ClientBatch(batch.ops)))[0] < 10


def test_a_version_3_envelope_cannot_carry_a_batch() -> None:
    data = msgspec.msgpack.encode(
        GroupCommand(3, ClientBatch((ClientOp(S0, "c", 1, Put("k", "v")),)))
    )
    with pytest.raises(CommandDecodeError, match="version 4"):
        decode(data)
