"""Which messages a replica's host lets reach its core (``raft/hosting/senders.py``)."""

from __future__ import annotations

from shardwise.raft.hosting.senders import (
    BAD_SNAPSHOT,
    MAX_ACCEPTED_TERM,
    NON_MEMBER,
    TERM_TOO_LARGE,
    SenderFilter,
)
from shardwise.raft.messages import (
    ConfChange,
    ConfChangeKind,
    Heartbeat,
    InstallSnapshot,
    Membership,
    RequestVote,
    conf_change_payload,
    encode_membership,
)
from shardwise.raft.node import RaftNode
from shardwise.storage.types import LogEntry, SnapshotMeta

FOUNDERS = Membership(frozenset({"a", "b", "c"}))


def heartbeat(sender: str, term: int = 2) -> Heartbeat:
    return Heartbeat(term=term, sender=sender, to="a")


def test_members_pass_and_strangers_are_dropped_and_counted() -> None:
    node, senders = RaftNode("a", FOUNDERS), SenderFilter("a")
    assert senders.admit(node, heartbeat("b"))
    assert not senders.admit(node, heartbeat("intruder"))
    assert not senders.admit(
        node, RequestVote(term=9, sender="x", to="a", last_index=0, last_term=0)
    )
    assert senders.dropped[NON_MEMBER] == 2


def test_a_node_being_added_is_known_once_its_change_is_in_the_log() -> None:
    node, senders = RaftNode("a", FOUNDERS), SenderFilter("a")
    assert not senders.admit(node, heartbeat("d"))
    change = conf_change_payload(ConfChange(ConfChangeKind.ADD_LEARNER, "d"))
    node.log.append([LogEntry(2, 1, change)])  # in the log, neither committed nor applied
    assert senders.admit(node, heartbeat("d"))


def test_a_removed_node_is_dropped_once_its_removal_is_applied() -> None:
    node, senders = RaftNode("a", FOUNDERS), SenderFilter("a")
    assert senders.admit(node, heartbeat("c"))
    node.tracker.apply_change(ConfChange(ConfChangeKind.REMOVE, "c"))
    node.log.applied = node.log.last_index()
    assert not senders.admit(node, heartbeat("c"))
    assert senders.admit(node, heartbeat("b"))


def test_a_replica_that_knows_no_membership_listens_to_anyone() -> None:
    node, senders = RaftNode("d"), SenderFilter("d")
    assert senders.admit(node, Heartbeat(term=2, sender="a", to="d"))


def test_what_no_member_could_send_is_dropped_from_members_too() -> None:
    node, senders = RaftNode("a", FOUNDERS), SenderFilter("a")
    assert not senders.admit(node, heartbeat("b", term=2**63 - 1))
    assert senders.admit(node, heartbeat("b", term=MAX_ACCEPTED_TERM))

    def chunk(config: bytes) -> InstallSnapshot:
        meta = SnapshotMeta(index=50, term=2, config=config)
        return InstallSnapshot(
            term=2, sender="b", to="a", meta=meta, offset=0, total=1, data=b"x", done=True
        )

    assert not senders.admit(node, chunk(b"\xc1junk"))
    assert senders.admit(node, chunk(encode_membership(FOUNDERS)))
    assert senders.dropped == {TERM_TOO_LARGE: 1, BAD_SNAPSHOT: 1}
