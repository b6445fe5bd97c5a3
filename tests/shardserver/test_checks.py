"""The consistency check's pieces: a replica's digests at a check's index (the same on a
replica that applied the log as on one restored from a later snapshot, different after
a change only one replica made), and the comparison of the replicas' digests."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Final

from shardwise.cli.admin import leader_of
from shardwise.model.config import Configuration, ShardId, initial_configuration
from shardwise.model.kv import Put
from shardwise.shardserver.checker import ABSENT, compare
from shardwise.shardserver.checks import ReplicaCheck, ShardChecks, image_digest
from shardwise.shardserver.commands import (
    CheckShards,
    ClientOp,
    Command,
    Reconfigure,
    decode_result,
    encode,
)
from shardwise.shardserver.protocol import ReplicaDigests, ShardDigest, StatusReply
from shardwise.shardserver.statemachine import ShardGroupStateMachine

S0, S1 = ShardId("default", 0), ShardId("default", 1)
HASH_TIMEOUT_S: Final = 30.0


def first_config() -> Configuration:
    base = initial_configuration()
    return Configuration(
        num=1,
        groups={1: ("127.0.0.1:1",)},
        keyspaces=base.keyspaces,
        owners={"default": tuple([1] * len(base.owners["default"]))},
    )


class Replica:
    def __init__(self, directory: Path) -> None:
        self.sm = ShardGroupStateMachine(1, directory)
        self.index = 0

    def do(self, command: Command) -> int:
        self.index += 1
        self.sm.apply(self.index, encode(command))
        self.sm.end_batch()
        return self.index


def digests(checks: ShardChecks, index: int) -> ReplicaCheck:
    deadline = time.monotonic() + HASH_TIMEOUT_S
    while True:
        found = checks.result(index)
        assert found is not None
        if not found.pending:
            return found
        assert time.monotonic() < deadline, "the digests did not come"
        time.sleep(0.01)


def test_replicas_agree_at_a_check_whatever_their_history_and_differ_after_a_stray_write(
    tmp_path: Path,
) -> None:
    a = Replica(tmp_path / "a")
    a.do(Reconfigure(first_config()))
    for i in range(30):
        a.do(ClientOp(S0 if i % 2 else S1, "c", i + 1, Put(f"k{i}", f"v{i}")))
    a.do(ClientOp(ShardId("default", 5), "d", 1, Put("other", "x")))  # the last write
    # b restores from a's snapshot taken now: its shards' applied_index is the
    # snapshot's, not the index of each shard's last write (the digest leaves it out).
    b = Replica(tmp_path / "b")
    b.sm.restore(a.sm.snapshot(), a.index)
    b.index = a.index
    check = CheckShards()
    index = a.do(check)
    assert b.do(check) == index
    assert decode_result(a.sm.apply(index + 1, encode(check))).index == index + 1
    mine, theirs = digests(a.sm.checks, index), digests(b.sm.checks, index)
    assert mine.digests and mine.digests == theirs.digests and not mine.skipped

    # A write only b applies (what a bug would do) changes b's digest of that shard.
    store = b.sm.serving_store(S0)
    assert store is not None
    store.apply(b.index + 1, "", 0, Put("stray", "only in b"))
    b.index += 1
    a.index = b.index
    index = a.do(check)
    assert b.do(check) == index
    mine, theirs = digests(a.sm.checks, index), digests(b.sm.checks, index)
    differ = {s for s in mine.digests if mine.digests[s] != theirs.digests[s]}
    assert differ == {S0}
    a.sm.close()
    b.sm.close()


def test_replicas_agree_at_a_check_whatever_local_reads_wrote_their_held_puts(
    tmp_path: Path,
) -> None:
    # A replica holds a known client's plain puts and writes them, with the client's
    # session row, when something needs the file: here b's status (or metrics scrape)
    # counts the keys after every put, so b writes the row twice where a writes it once,
    # as the check copies the shard. Each write is an INSERT OR REPLACE, so the row's
    # rowid differs (3 on b, 2 on a), though the replicated state is the same.
    a, b = Replica(tmp_path / "a"), Replica(tmp_path / "b")
    commands: list[Command] = [Reconfigure(first_config())]
    commands += [ClientOp(S0, "c", seq, Put(f"k{seq}", "v")) for seq in (1, 2, 3)]
    for command in commands:  # (the first put is not held: c has no session yet)
        a.do(command)
        b.do(command)
        store = b.sm.serving_store(S0)
        assert store is not None
        store.count()
    mine, theirs = a.sm.serving_store(S0), b.sm.serving_store(S0)
    assert mine is not None and theirs is not None
    # (What ShardChecks.take hashes, without its thread.)
    assert image_digest(mine.file_image(reserve=0)) == image_digest(theirs.file_image(reserve=0))
    assert mine.content_digest() == theirs.content_digest()
    a.sm.close()
    b.sm.close()


def replica(node: str, **shards: str) -> ReplicaDigests:
    found = [ShardDigest(ShardId("default", int(s[1:])), d) for s, d in sorted(shards.items())]
    return ReplicaDigests(node, "ok", found)


def test_compare_names_the_replicas_outside_the_majority() -> None:
    outcome = compare(
        1,
        10,
        [
            replica("a", s0="x", s1="y"),
            replica("b", s0="x", s1="y"),
            replica("c", s0="z", s1="y"),
            ReplicaDigests("d", "unreachable"),
        ],
    )
    assert outcome.shards == 2
    assert [(m.shard, m.differ) for m in outcome.mismatches] == [(S0, ["c"])]
    tie = compare(1, 10, [replica("a", s0="x"), replica("b", s0="z")])
    assert tie.mismatches[0].differ == ["a", "b"]
    absent = compare(1, 10, [replica("a", s0="x", s1="y"), replica("b", s0="x")])
    assert absent.mismatches[0].digests == {"a": "y", "b": ABSENT}
    skipped = ReplicaDigests("b", "ok", [ShardDigest(S0, "x")], skipped=[S1])
    assert not compare(1, 10, [replica("a", s0="x", s1="y"), skipped]).mismatches


def status(node: str, role: str, term: int, halted: bool = False) -> StatusReply:
    return StatusReply(node, role, term, None, 0, 0, halted, gid=1, config_num=1)


def test_a_halted_replica_is_never_the_leader() -> None:
    found = leader_of([status("a", "leader", 3, halted=True), status("b", "follower", 3)])
    assert found is None
    found = leader_of([status("a", "leader", 4, halted=True), status("b", "leader", 3)])
    assert found is not None and found.node_id == "b"
