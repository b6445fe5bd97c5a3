"""Hostile review of "transactions' commands share log entries" (``ClientBatch.txns``,
``WriteApplier.client_batch``), driven through ``ShardGroupStateMachine.apply``: replays,
two commands on one shard, and replicas that apply the same entries with other batch
boundaries and with the leader's reads (``batches.leader_reads``) in between."""

from __future__ import annotations

from pathlib import Path

from shardwise.model.config import ShardId
from shardwise.model.kv import Get, Put
from shardwise.model.txn import TxnPart, TxnRead, new_txn_id
from shardwise.shardserver.commands import (
    ClientBatch,
    ClientOp,
    Command,
    Reconfigure,
    TxnCommit,
    TxnPrepare,
    TxnResolve,
    decode_result,
    encode,
)
from shardwise.shardserver.statemachine import ShardGroupStateMachine

# pytest (--import-mode=importlib) imports this file as part of the namespace package
# tests.shardserver; mypy, with no __init__.py in tests/, sees a top-level module instead.
from .test_group_statemachine import config  # type: ignore[import-not-found]

S = [ShardId("default", i) for i in range(4)]


def _entries() -> list[Command]:
    t1, t2 = new_txn_id(1_000), new_txn_id(1_000)
    prepare_t1 = TxnPrepare(
        t1,
        (S[1], S[2]),
        (TxnPart(S[1], writes=(Put("a1", "t1"),)), TxnPart(S[2], reads=(TxnRead("b2", -1),))),
        2_000,
    )
    prepare_t2 = TxnPrepare(  # refused at S[1]: t1 holds a1
        t2, (S[1],), (TxnPart(S[1], reads=(TxnRead("a1", -1),), writes=(Put("z", "t2"),)),), 2_000
    )
    commit = TxnCommit("w", 1, (TxnPart(S[3], writes=(Put("c3", "one"),)),))
    return [
        Reconfigure(config(1, {0: 1, 1: 1}, groups=(1,))),
        ClientBatch(
            (ClientOp(S[0], "c", 1, Put("k0", "v")), ClientOp(S[0], "d", 1, Put("k0", "w"))),
            (prepare_t1, commit, prepare_t2),  # prepare_t2 overlaps prepare_t1: ignored
        ),
        # The commit again (a retry: de-duplicated), a resolve of t1 at S[2] only, and a
        # plain write under t1's lock at S[1] (answered locked, not remembered).
        ClientBatch(
            (ClientOp(S[1], "c", 2, Put("a1", "plain")),),
            (commit, TxnResolve(t1, True, (S[2],)), TxnResolve(t1, True, (S[1],))),
        ),
        ClientBatch((ClientOp(S[2], "c", 3, Put("b2", "x")),), (TxnResolve(t1, True, (S[1],)),)),
        prepare_t2,
        ClientBatch((), (TxnResolve(t2, False, (S[1],)),)),
    ]


def _digests(sm: ShardGroupStateMachine) -> dict[ShardId, str]:
    stores = {s: sm.serving_store(s) for s in S}
    return {s: store.content_digest() for s, store in stores.items() if store is not None}


def test_replicas_with_other_batch_boundaries_and_leader_reads_agree(tmp_path: Path) -> None:
    """A leader applies each entry in a batch of its own and serves transactions' reads
    from its stores in between (``leader_reads``: point reads through the connection,
    which write the held puts); a follower applies the same entries three at a time. Every
    result and every shard's content must be the same, and a replay changes nothing."""
    entries = _entries()
    leader = ShardGroupStateMachine(1, tmp_path / "leader")
    follower = ShardGroupStateMachine(1, tmp_path / "follower")
    led, followed = [], []
    for index, entry in enumerate(entries, start=1):
        led.append(decode_result(leader.apply(index, encode(entry))))
        leader.end_batch()
        for shard in S:
            for key in ("k0", "a1", "b2", "c3", "z"):
                leader.versioned_read(shard, key)
        followed.append(decode_result(follower.apply(index, encode(entry))))
        if index % 3 == 0:
            follower.end_batch()
    follower.end_batch()
    assert led == followed
    assert _digests(leader) == _digests(follower)

    first, second, third = led[1], led[2], led[3]
    assert [r.outcome for r in first.batch] == ["ok", "ok", "ok", "ok", "ignored"]
    assert [v.state for v in first.batch[2].votes] == ["prepared", "prepared"]
    assert [v.state for v in first.batch[3].votes] == ["committed"]
    locked = second.batch[0].result
    assert locked is not None and locked.locked, "a plain write under a prepared lock"
    assert [v.state for v in second.batch[1].votes] == ["committed"], "the retry's answer"
    assert [v.state for v in second.batch[2].votes] == ["committed"]
    # The resolve at S[1] shares the entry with a write to S[1]: ignored (asked again).
    assert [r.outcome for r in second.batch] == ["ok", "ok", "ok", "ignored"]
    assert [v.state for v in third.batch[1].votes] == ["committed"]
    assert [v.state for v in led[4].votes] == ["aborted"]  # t2 read a1 absent: it changed
    assert [v.state for v in led[5].batch[0].votes] == ["aborted"]
    values = {
        key: decode_result(leader.apply(len(entries) + 1 + n, encode(ClientOp(s, "", 0, Get(key)))))
        for n, (s, key) in enumerate([(S[0], "k0"), (S[1], "a1"), (S[3], "c3"), (S[2], "b2")])
    }
    assert {k: r.result.value for k, r in values.items()} == {  # type: ignore[union-attr]
        "k0": "w",
        "a1": "t1",
        "c3": "one",
        "b2": "x",
    }

    # A replay of every entry (a log read again over stores already past it) changes no
    # store.
    before = _digests(leader)
    for index, entry in enumerate(entries[1:], start=2):
        leader.apply(index, encode(entry))
    leader.end_batch()
    assert _digests(leader) == before
    leader.close()
    follower.close()
