"""White-box checks of single rules of the Raft core, driven by hand-made messages."""

from __future__ import annotations

import pytest

from shardwise.errors import ProposalDroppedError, RaftError
from shardwise.raft import Membership, RaftConfig, RaftNode, Role, receiving, replication
from shardwise.raft.log import RaftLog
from shardwise.raft.messages import (
    NOOP_PAYLOAD,
    AppendEntries,
    AppendResponse,
    Heartbeat,
    HeartbeatResponse,
    InstallSnapshot,
    ReadIndexRequest,
    ReadIndexResponse,
    RequestVote,
    SnapshotResponse,
    VoteResponse,
    command_payload,
)
from shardwise.raft.progress import MAX_INFLIGHT_MSGS, Progress, ProgressState
from shardwise.raft.ready import ReadState
from shardwise.storage.types import HardState, LogEntry, SnapshotMeta
from shardwise.testing.sim import drain

THREE = Membership(frozenset({"a", "b", "c"}))
FIVE = Membership(frozenset({"a", "b", "c", "d", "e"}))


def entry(index: int, term: int, data: bytes = b"x") -> LogEntry:
    return LogEntry(index, term, command_payload(data))


def role(node: RaftNode) -> Role:
    return node.role  # a call, so the type checker does not narrow across steps


def elect(node: RaftNode, voters: list[str]) -> None:
    """Make ``node`` leader by granting it votes from ``voters`` (pre-vote, then vote)."""
    for _ in range(node.config.election_ticks * 2):
        node.tick()
    drain(node)
    assert role(node) is Role.PRE_CANDIDATE
    for v in voters:
        node.step(
            VoteResponse(term=node.term + 1, sender=v, to=node.id, granted=True, pre_vote=True)
        )
    assert role(node) in {Role.CANDIDATE}
    for v in voters:
        node.step(VoteResponse(term=node.term, sender=v, to=node.id, granted=True))
    assert role(node) in {Role.LEADER}
    drain(node)


def leader_of_three() -> RaftNode:
    """ "a", elected in THREE, with its no-op acknowledged by both followers: committed,
    so reads are served in its term and both followers are streamed to."""
    node = RaftNode("a", THREE)
    elect(node, ["b"])
    for follower in ("b", "c"):
        node.step(AppendResponse(term=node.term, sender=follower, to="a", index=2))
    drain(node)
    return node


def test_only_current_term_entries_are_committed_by_counting() -> None:
    """Figure 8: an old-term entry on a majority is not committed until one of ours is."""
    node = RaftNode("a", FIVE, hard_state=HardState(term=3), entries=[entry(1, 1), entry(2, 2)])
    node.log.commit_to(1)
    elect(node, ["b", "c"])  # term 4; the no-op sits at index 3
    assert node.log.last_index() == 3
    for follower in ("b", "c"):
        node.step(AppendResponse(term=node.term, sender=follower, to="a", index=2))
    drain(node)
    assert node.log.committed == 1, "entry 2 (term 2) must not commit by counting replicas"
    for follower in ("b", "c"):
        node.step(AppendResponse(term=node.term, sender=follower, to="a", index=3))
    drain(node)
    assert node.log.committed == 3  # the no-op of term 4 commits, and entry 2 with it


def test_vote_requires_an_up_to_date_log() -> None:
    node = RaftNode("a", THREE, hard_state=HardState(term=2), entries=[entry(1, 1), entry(2, 2)])
    stale = RequestVote(term=3, sender="b", to="a", last_index=5, last_term=1)
    node.step(stale)
    response = drain(node)[-1]
    assert isinstance(response, VoteResponse) and not response.granted
    fresh = RequestVote(term=3, sender="c", to="a", last_index=2, last_term=2)
    node.step(fresh)
    response = drain(node)[-1]
    assert isinstance(response, VoteResponse) and response.granted
    assert node.vote == "c"


def test_one_vote_per_term_and_it_is_persisted_before_answering() -> None:
    node = RaftNode("a", THREE, hard_state=HardState(term=1), entries=[entry(1, 1)])
    node.step(RequestVote(term=2, sender="b", to="a", last_index=1, last_term=1))
    ready = node.ready()
    assert ready.hard_state == HardState(term=2, vote="b", commit=0)
    assert ready.must_sync, "a vote must be durable before the response is sent"
    node.advance(ready)
    node.step(RequestVote(term=2, sender="c", to="a", last_index=1, last_term=1))
    response = drain(node)[-1]
    assert isinstance(response, VoteResponse) and not response.granted


def test_founders_bootstrap_the_membership_into_the_log() -> None:
    founders = [RaftNode(n, THREE) for n in ("a", "b", "c")]
    firsts = {(n.log.entries[0], n.term, n.log.committed) for n in founders}
    assert len(firsts) == 1, "every founder writes the same entry 1"
    ready = founders[0].ready()
    assert ready.entries and ready.hard_state == HardState(term=1, vote=None, commit=1)
    founders[0].advance(ready)
    assert founders[0].membership == THREE
    joiner = RaftNode("d")  # joins later: knows nothing until the leader tells it
    assert joiner.membership.voters == frozenset() and not joiner.promotable()
    joiner.step(
        AppendEntries(
            term=1,
            sender="a",
            to="d",
            prev_index=0,
            prev_term=0,
            entries=tuple(founders[0].log.entries),
            commit=1,
        )
    )
    drain(joiner)
    assert joiner.membership == THREE


def test_follower_rejects_with_a_term_hint_and_leader_skips_the_term() -> None:
    follower = RaftNode(
        "b",
        THREE,
        hard_state=HardState(term=5),
        entries=[entry(1, 1), *(entry(i, 2) for i in range(2, 12))],
    )
    append = AppendEntries(term=5, sender="a", to="b", prev_index=11, prev_term=4)
    follower.step(append)
    reject = drain(follower)[-1]
    assert isinstance(reject, AppendResponse) and reject.reject
    # The follower points at its last entry whose term is not above the leader's
    # prev_term (4): its entry 11, of term 2.
    assert (reject.hint_index, reject.hint_term) == (11, 2)

    log = RaftLog(None, [entry(1, 1), *(entry(i, 3) for i in range(2, 12))])
    # The leader has no term-2 entries: it jumps back to the last entry of term <= 2.
    assert log.conflict_hint(reject.hint_index, reject.hint_term) == (1, 1)


def test_append_conflict_truncates_and_never_touches_committed() -> None:
    node = RaftNode(
        "b", THREE, hard_state=HardState(term=2), entries=[entry(1, 1), entry(2, 1), entry(3, 1)]
    )
    node.step(
        AppendEntries(
            term=2,
            sender="a",
            to="b",
            prev_index=1,
            prev_term=1,
            entries=(entry(2, 2, b"new"),),
            commit=2,
        )
    )
    drain(node)
    assert node.log.last_index() == 2 and node.log.term(2) == 2 and node.log.committed == 2
    with pytest.raises(RaftError):
        node.log.append([entry(2, 3)])  # below the commit index


def test_replication_is_flow_controlled() -> None:
    pr = Progress(next_index=1)
    pr.match = 0
    pr.become_replicate()
    for i in range(1, MAX_INFLIGHT_MSGS + 1):
        assert not pr.paused()
        pr.sent(i, 10)
    assert pr.paused()
    pr.acknowledge(5)
    assert not pr.paused() and pr.match == 5 and len(pr.inflight) == MAX_INFLIGHT_MSGS - 5
    assert pr.reject(20, 9, 0) and pr.state is ProgressState.PROBE and pr.next == 9


def test_a_rejection_at_match_lowers_it_to_what_the_follower_proves() -> None:
    """A follower that lost entries it acknowledged refuses the entry at ``match`` for
    ever unless the leader believes the rejection (issue 21, finding 1)."""
    pr = Progress(next_index=1)
    pr.acknowledge(10)
    pr.become_replicate()
    assert pr.reject(10, 10, 9)
    assert (pr.state, pr.match, pr.next) == (ProgressState.PROBE, 9, 10)
    pr.acknowledge(10)
    pr.become_replicate()
    # Below match: only reordering makes those, and they are many under it; the lost
    # entries are asked for at match in the end anyway.
    assert not pr.reject(7, 4, 3) and (pr.state, pr.match) == (ProgressState.REPLICATE, 10)
    # A rejection that proves the follower holds match itself says nothing new.
    assert not pr.reject(10, 11, 10) and pr.match == 10


def test_proposals_are_batched_into_one_append_per_follower() -> None:
    node = RaftNode("a", THREE)
    elect(node, ["b"])
    for follower in ("b", "c"):  # both acknowledge the no-op: streaming (replicate) mode
        node.step(AppendResponse(term=node.term, sender=follower, to="a", index=1))
    drain(node)
    for i in range(10):
        node.propose(f"p{i}".encode())
    appends = [m for m in drain(node) if isinstance(m, AppendEntries)]
    assert sorted(m.to for m in appends) == ["b", "c"]
    assert all(len(m.entries) == 10 for m in appends)


def test_a_commit_costs_no_message_of_its_own_followers_learn_it_with_the_next() -> None:
    node = leader_of_three()
    node.propose(b"w1")
    drain(node)
    node.step(AppendResponse(term=node.term, sender="b", to="a", index=3))
    assert not drain(node)  # committed, and no append just to say so
    assert node.log.committed == 3
    node.propose(b"w2")  # the next append carries it ...
    appends = [m for m in drain(node) if isinstance(m, AppendEntries)]
    assert sorted(m.to for m in appends) == ["b", "c"]
    assert all(m.commit == 3 for m in appends)
    for _ in range(node.config.heartbeat_ticks):  # ... and so does the next heartbeat
        node.tick()
    beats = [m for m in drain(node) if isinstance(m, Heartbeat)]
    assert {m.to: m.commit for m in beats} == {"b": 3, "c": 2}  # up to what each holds


def test_a_read_forwarded_by_a_follower_is_answered_with_the_commit_it_waits_for() -> None:
    node = leader_of_three()
    node.propose(b"w1")
    drain(node)
    for follower in ("b", "c"):  # both hold w1, neither has heard that it is committed
        node.step(AppendResponse(term=node.term, sender=follower, to="a", index=3))
    assert not drain(node)
    node.step(ReadIndexRequest(term=node.term, sender="c", to="a", context=b"r"))
    [beat] = [m for m in drain(node) if isinstance(m, Heartbeat)]
    node.step(HeartbeatResponse(term=node.term, sender=beat.to, to="a", context=b"r"))
    sent = drain(node)
    [answer] = [m for m in sent if isinstance(m, ReadIndexResponse)]
    assert answer.to == "c" and answer.index == 3
    # c must apply index 3 to serve the read: it hears the commit index at once.
    assert [(m.to, m.commit) for m in sent if isinstance(m, AppendEntries)] == [("c", 3)]


def test_back_pressure_on_uncommitted_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(replication, "MAX_UNCOMMITTED_BYTES", 1000)
    node = RaftNode("a", THREE)
    elect(node, ["b"])
    node.propose(b"x" * 500)
    with pytest.raises(ProposalDroppedError, match="uncommitted"):
        node.propose(b"y" * 600)


def test_ready_must_be_advanced_before_the_next_one() -> None:
    node = RaftNode("a", THREE)
    node.step(RequestVote(term=1, sender="b", to="a", last_index=0, last_term=0))
    node.ready()
    assert not node.has_ready()
    with pytest.raises(RaftError):
        node.ready()


def test_unknown_entry_kind_stops_the_replica() -> None:
    node = RaftNode("b", THREE, hard_state=HardState(term=1))
    node.step(
        AppendEntries(
            term=1,
            sender="a",
            to="b",
            prev_index=0,
            prev_term=0,
            entries=(LogEntry(1, 1, b"\x7fgarbage"),),
            commit=1,
        )
    )
    ready = node.ready()
    assert ready.committed
    with pytest.raises(RaftError, match="unknown kind"):
        node.advance(ready)


def test_oversized_snapshot_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(receiving, "MAX_SNAPSHOT_BYTES", 10)
    node = RaftNode("b", THREE, hard_state=HardState(term=1))
    chunk = InstallSnapshot(
        term=1,
        sender="a",
        to="b",
        meta=SnapshotMeta(5, 1),
        offset=0,
        total=11,
        data=b"x",
        done=False,
    )
    node.step(chunk)
    response = drain(node)[-1]
    assert isinstance(response, SnapshotResponse) and response.reject


def test_snapshot_chunks_resume_from_the_follower_offset() -> None:
    node = RaftNode("b", THREE, hard_state=HardState(term=1))
    meta = SnapshotMeta(5, 1, b"")

    def chunk(offset: int, data: bytes, done: bool) -> InstallSnapshot:
        return InstallSnapshot(
            term=1, sender="a", to="b", meta=meta, offset=offset, total=6, data=data, done=done
        )

    node.step(chunk(0, b"abc", False))
    node.step(chunk(6, b"", True))  # a chunk from the future: ask to resume at 3
    responses = [m for m in drain(node) if isinstance(m, SnapshotResponse)]
    assert [r.offset for r in responses] == [3, 3]
    node.step(chunk(3, b"def", True))
    ready = node.ready()
    assert ready.snapshot is not None and ready.snapshot.data == b"abcdef"
    node.advance(ready)
    assert node.log.committed == 5 and node.log.last_index() == 5


def test_stale_leader_learns_the_new_term_from_a_follower() -> None:
    node = RaftNode("b", THREE, hard_state=HardState(term=5))
    node.step(Heartbeat(term=3, sender="a", to="b"))
    response = drain(node)[-1]
    assert isinstance(response, AppendResponse) and response.term == 5


def test_single_node_cluster_commits_and_reads_alone() -> None:
    node = RaftNode("solo", Membership(frozenset({"solo"})), config=RaftConfig())
    for _ in range(30):
        node.tick()
        drain(node)
    assert node.is_leader()
    index = node.propose(b"hello")
    drain(node)
    assert node.log.committed == index
    node.read_index(b"ctx")
    ready = node.ready()
    assert [r.index for r in ready.read_states] == [index]
    node.advance(ready)


def test_noop_payload_is_not_a_command() -> None:
    assert command_payload(b"") != NOOP_PAYLOAD


def test_a_lost_window_of_appends_does_not_stall_replication() -> None:
    """Regression (sweep seed 81): every append in a full window was lost; the follower's
    heartbeat answers must get replication going again."""
    node = leader_of_three()
    for i in range(MAX_INFLIGHT_MSGS + 5):
        node.propose(f"p{i}".encode())
        drain(node)  # one append per proposal to each follower: all "lost"
    assert node.progress["b"].paused()
    node.step(HeartbeatResponse(term=node.term, sender="b", to="a"))
    sent = [m for m in drain(node) if isinstance(m, AppendEntries) and m.to == "b"]
    assert sent, "a reachable follower with a full window must get an append"
    node.step(
        AppendResponse(
            term=node.term,
            sender="b",
            to="a",
            index=sent[0].prev_index,
            reject=True,
            hint_index=2,
            hint_term=node.term,
        )
    )
    retry = [m for m in drain(node) if isinstance(m, AppendEntries) and m.to == "b"]
    assert retry and retry[0].prev_index == 2, "after the rejection, resend from the match"


def test_reads_between_two_readys_share_one_heartbeat_round() -> None:
    node = leader_of_three()
    for i in range(10):
        node.read_index(f"r{i}".encode())
    beats = [m for m in drain(node) if isinstance(m, Heartbeat)]
    # One follower's answer makes a quorum with the leader, so one is asked: the one
    # heard from last ("c" acknowledged the no-op after "b").
    assert [m.to for m in beats] == ["c"]
    assert {m.context for m in beats} == {b"r9"}  # the newest read's context
    node.step(HeartbeatResponse(term=node.term, sender="c", to="a", context=b"r9"))
    ready = node.ready()
    assert [r.context for r in ready.read_states] == [f"r{i}".encode() for i in range(10)]
    node.advance(ready)


def test_a_lost_read_heartbeat_is_sent_again_with_the_next_tick() -> None:
    node = leader_of_three()
    node.read_index(b"lost")
    drain(node)  # the heartbeat carrying it is lost
    beats: list[object] = []
    for _ in range(node.config.heartbeat_ticks):
        node.tick()
        beats.extend(m for m in drain(node) if isinstance(m, Heartbeat))
    assert {m.context for m in beats if isinstance(m, Heartbeat)} == {b"lost"}
    node.step(HeartbeatResponse(term=node.term, sender="c", to="a", context=b"lost"))
    assert [r.context for r in node.ready().read_states] == [b"lost"]


def test_reads_ride_on_appends_going_out_anyway_and_their_answers_confirm_them() -> None:
    node = leader_of_three()
    node.propose(b"write")
    node.read_index(b"r1")
    node.read_index(b"r2")
    sent = drain(node)
    assert not [m for m in sent if isinstance(m, Heartbeat)]  # no round of its own
    appends = [m for m in sent if isinstance(m, AppendEntries)]
    assert sorted(m.to for m in appends) == ["b", "c"]
    assert {m.context for m in appends} == {b"r2"}
    # A rejection is an answer of this term too: it confirms the reads as well.
    reply = AppendResponse(
        term=node.term, sender="c", to="a", index=2, reject=True, hint_index=2, context=b"r2"
    )
    node.step(reply)
    ready = node.ready()
    assert [r.context for r in ready.read_states] == [b"r1", b"r2"]
    node.advance(ready)


def test_a_follower_that_gets_no_append_gets_the_reads_heartbeat() -> None:
    node = RaftNode("a", THREE)
    elect(node, ["b"])
    node.step(AppendResponse(term=node.term, sender="b", to="a", index=2))
    drain(node)
    for i in range(MAX_INFLIGHT_MSGS + 1):  # "c" answers nothing: its window fills
        node.propose(f"p{i}".encode())
        drain(node)
    node.step(AppendResponse(term=node.term, sender="b", to="a", index=2 + MAX_INFLIGHT_MSGS))
    drain(node)
    assert node.progress["c"].paused()
    node.propose(b"one more")
    node.read_index(b"r")
    sent = drain(node)
    carrying = [m for m in sent if isinstance(m, AppendEntries | Heartbeat) and m.context == b"r"]
    # The append to "b" carries the read, and "b"'s answer makes a quorum: no heartbeat.
    assert [(type(m).__name__, m.to) for m in carrying] == [("AppendEntries", "b")]


def test_heartbeats_make_up_the_quorum_the_appends_carrying_a_read_do_not() -> None:
    node = RaftNode("a", FIVE)
    elect(node, ["b", "c"])
    for follower in ("b", "c", "d"):  # "e" never answers: its window fills
        node.step(AppendResponse(term=node.term, sender=follower, to="a", index=2))
    drain(node)
    for i in range(MAX_INFLIGHT_MSGS):
        node.propose(f"p{i}".encode())
        drain(node)
    node.step(AppendResponse(term=node.term, sender="d", to="a", index=2 + MAX_INFLIGHT_MSGS))
    drain(node)
    assert node.progress["e"].paused() and not node.progress["d"].paused()
    for follower in ("b", "c"):  # their windows fill too; "c" is heard from last
        node.step(HeartbeatResponse(term=node.term, sender=follower, to="a", context=b""))
    node.progress["b"].inflight.extend([(0, 0)] * MAX_INFLIGHT_MSGS)
    node.progress["c"].inflight.extend([(0, 0)] * MAX_INFLIGHT_MSGS)
    drain(node)
    node.propose(b"one more")
    node.read_index(b"r")
    sent = drain(node)
    carrying = [m for m in sent if isinstance(m, AppendEntries | Heartbeat) and m.context == b"r"]
    # A quorum of five is three: the leader, "d" (append) and one heartbeat, to the
    # voter among the rest heard from most recently.
    assert sorted((type(m).__name__, m.to) for m in carrying) == [
        ("AppendEntries", "d"),
        ("Heartbeat", "c"),
    ]


def test_a_read_heartbeat_goes_to_a_quorum_of_the_most_recently_heard_voters() -> None:
    node = RaftNode("a", FIVE)
    elect(node, ["b", "c"])
    for follower in ("e", "b", "d", "c"):
        node.step(AppendResponse(term=node.term, sender=follower, to="a", index=2))
    drain(node)
    node.read_index(b"r")
    beats = [m for m in drain(node) if isinstance(m, Heartbeat)]
    assert sorted(m.to for m in beats) == ["c", "d"]  # the two heard from last
    node.step(HeartbeatResponse(term=node.term, sender="d", to="a", context=b"r"))
    assert not node.ready().read_states, "the leader and one follower are not a quorum of 5"


def test_learners_are_never_asked_to_confirm_a_read() -> None:
    node = leader_of_three()
    node.membership = Membership(frozenset({"a", "b", "c"}), frozenset({"l"}))
    node.progress["l"] = Progress(node.log.last_index() + 1)
    node.step(AppendResponse(term=node.term, sender="l", to="a", index=2))  # heard last
    drain(node)
    node.read_index(b"r")
    beats = [m for m in drain(node) if isinstance(m, Heartbeat)]
    assert [m.to for m in beats] == ["c"]


def test_a_silent_read_target_is_passed_over_once_another_answers_a_tick() -> None:
    node = leader_of_three()  # "c" was heard from last: it is asked
    node.read_index(b"r1")
    assert [m.to for m in drain(node) if isinstance(m, Heartbeat)] == ["c"]
    # "c" is gone. The next tick's heartbeat asks everyone; "b" answers and confirms.
    beats: list[object] = []
    for _ in range(node.config.heartbeat_ticks):
        node.tick()
        beats.extend(m for m in drain(node) if isinstance(m, Heartbeat))
    assert sorted(m.to for m in beats if isinstance(m, Heartbeat)) == ["b", "c"]
    node.step(HeartbeatResponse(term=node.term, sender="b", to="a", context=b"r1"))
    assert [r.context for r in drain_reads(node)] == [b"r1"]
    node.read_index(b"r2")  # "b" is now the most recent: the next round asks it
    assert [m.to for m in drain(node) if isinstance(m, Heartbeat)] == ["b"]


def drain_reads(node: RaftNode) -> list[ReadState]:
    states: list[ReadState] = []
    while node.has_ready():
        ready = node.ready()
        states.extend(ready.read_states)
        node.advance(ready)
    return states


def test_a_follower_echoes_the_read_context_of_an_append() -> None:
    node = RaftNode("b", THREE)
    node.step(AppendEntries(term=1, sender="a", to="b", prev_index=0, prev_term=0, context=b"r"))
    answers = [m for m in drain(node) if isinstance(m, AppendResponse)]
    assert [(m.to, m.context, m.reject) for m in answers] == [("a", b"r", False)]
    node.step(AppendEntries(term=1, sender="a", to="b", prev_index=9, prev_term=1, context=b"s"))
    answers = [m for m in drain(node) if isinstance(m, AppendResponse)]
    assert [(m.to, m.context, m.reject) for m in answers] == [("a", b"s", True)]
