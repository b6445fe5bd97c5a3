"""Issue 21, finding 1: a follower that lost entries it had acknowledged, as the core sees
it. The leader must believe its rejection (``Progress.reject``), and a read sent to it
must not wait for a log that cannot serve it (``ReadIndex``)."""

from __future__ import annotations

from shardwise.raft import Membership, RaftNode, Role
from shardwise.raft.messages import (
    AppendEntries,
    AppendResponse,
    Heartbeat,
    HeartbeatResponse,
    ReadIndexRequest,
    ReadIndexResponse,
    VoteResponse,
    command_payload,
)
from shardwise.raft.progress import ProgressState
from shardwise.raft.reads import FORWARDED_READ_WAIT_ELECTIONS
from shardwise.raft.ready import Ready
from shardwise.storage.types import HardState, LogEntry

THREE = Membership(frozenset({"a", "b", "c"}))


def entry(index: int, term: int) -> LogEntry:
    return LogEntry(index, term, command_payload(b"x"))


def take(node: RaftNode) -> tuple[list[object], list[Ready]]:
    """Handle every Ready as a host would; the messages and the Readies."""
    messages: list[object] = []
    readies: list[Ready] = []
    while node.has_ready():
        ready = node.ready()
        messages += [*ready.early_messages, *ready.messages]
        readies.append(ready)
        node.advance(ready)
    return messages, readies


def follower_with(last: int, commit: int) -> RaftNode:
    """``c``, a follower of ``a`` in term 2, holding entries 1..``last``."""
    log = [entry(1, 1), *(entry(i, 2) for i in range(2, last + 1))]
    node = RaftNode("c", THREE, hard_state=HardState(2, "a", commit), entries=log)
    node.step(Heartbeat(term=2, sender="a", to="c", commit=commit))
    take(node)
    assert node.leader == "a"
    return node


def test_a_heartbeat_past_the_log_is_answered_with_a_rejection() -> None:
    node = follower_with(last=8, commit=8)
    node.step(Heartbeat(term=2, sender="a", to="c", commit=10))
    messages, _ = take(node)
    assert isinstance(messages[0], HeartbeatResponse)
    [reject] = [m for m in messages if isinstance(m, AppendResponse)]
    assert reject.reject and (reject.index, reject.hint_index, reject.hint_term) == (10, 8, 2)
    assert node.log.committed == 8
    node.step(Heartbeat(term=2, sender="a", to="c", commit=8))  # what it holds: no news
    assert not [m for m in take(node)[0] if isinstance(m, AppendResponse)]


def test_the_leader_sends_a_follower_the_entries_it_lost() -> None:
    node = RaftNode("a", THREE, hard_state=HardState(2, None, 1), entries=[entry(1, 1)])
    for _ in range(node.config.election_ticks * 2):
        node.tick()
    take(node)
    node.step(VoteResponse(term=3, sender="b", to="a", granted=True, pre_vote=True))
    node.step(VoteResponse(term=3, sender="b", to="a", granted=True))
    assert node.role is Role.LEADER
    for i in range(3):
        node.propose(f"w{i}".encode())
    take(node)
    last = node.log.last_index()
    for follower in ("b", "c"):
        node.step(AppendResponse(term=3, sender=follower, to="a", index=last))
    take(node)
    assert node.log.committed == last and node.progress["c"].match == last
    # c lost its last two entries; it says so when a heartbeat commits them.
    node.step(
        AppendResponse(
            term=3, sender="c", to="a", index=last, reject=True, hint_index=last - 2, hint_term=3
        )
    )
    probe = node.progress["c"]
    assert (probe.state, probe.match) == (ProgressState.PROBE, last - 2)
    [append] = [m for m in take(node)[0] if isinstance(m, AppendEntries)]
    assert append.to == "c" and append.prev_index == last - 2
    assert [e.index for e in append.entries] == [last - 1, last]
    node.step(AppendResponse(term=3, sender="c", to="a", index=last))
    assert node.progress["c"].state is ProgressState.REPLICATE
    assert node.progress["c"].match == last


def wait_ticks(node: RaftNode) -> int:
    return FORWARDED_READ_WAIT_ELECTIONS * node.config.election_ticks


def forward_read(node: RaftNode, context: bytes) -> None:
    node.read_index(context)
    [request] = [m for m in take(node)[0] if isinstance(m, ReadIndexRequest)]
    assert request.to == "a" and request.context == context


def test_a_read_waits_for_the_log_to_commit_its_index() -> None:
    node = follower_with(last=10, commit=8)
    forward_read(node, b"r")
    node.step(ReadIndexResponse(term=2, sender="a", to="c", context=b"r", index=10))
    assert not [s for r in take(node)[1] for s in r.read_states]
    node.step(Heartbeat(term=2, sender="a", to="c", commit=10))
    assert [(s.index, s.context) for r in take(node)[1] for s in r.read_states] == [(10, b"r")]


def test_a_follower_whose_log_is_behind_drops_the_read_in_time() -> None:
    """Dropped, the host fails the read with NotLeaderError and the client asks the
    leader; held, it waited out the client's deadline (DEADLINE_EXCEEDED)."""
    node = follower_with(last=8, commit=8)
    forward_read(node, b"r")
    node.step(ReadIndexResponse(term=2, sender="a", to="c", context=b"r", index=10))
    for _ in range(wait_ticks(node) - 1):
        node.step(Heartbeat(term=2, sender="a", to="c", commit=8))  # the leader is alive
        node.tick()
        _, readies = take(node)
        assert not [s for r in readies for s in r.read_states]
        assert not [c for r in readies for c in r.dropped_reads]
    node.tick()
    _, readies = take(node)
    assert [c for r in readies for c in r.dropped_reads] == [b"r"]
    # A late answer, or the commit arriving after all, does not bring it back.
    node.step(ReadIndexResponse(term=2, sender="a", to="c", context=b"r", index=10))
    node.step(AppendEntries(term=2, sender="a", to="c", prev_index=8, prev_term=2, commit=8))
    assert not [s for r in take(node)[1] for s in r.read_states]


def test_a_read_the_leader_never_answers_is_dropped_in_time() -> None:
    node = follower_with(last=8, commit=8)
    forward_read(node, b"r")
    for _ in range(wait_ticks(node) - 1):
        node.step(Heartbeat(term=2, sender="a", to="c", commit=8))
        node.tick()
    assert not [c for r in take(node)[1] for c in r.dropped_reads]
    node.tick()
    assert [c for r in take(node)[1] for c in r.dropped_reads] == [b"r"]


def test_a_new_term_drops_the_reads_the_old_leader_did_not_answer() -> None:
    node = follower_with(last=10, commit=8)
    forward_read(node, b"answered")
    node.step(ReadIndexResponse(term=2, sender="a", to="c", context=b"answered", index=10))
    forward_read(node, b"unanswered")
    node.step(Heartbeat(term=3, sender="b", to="c", commit=8))  # b leads now
    _, readies = take(node)
    assert [c for r in readies for c in r.dropped_reads] == [b"unanswered"]
    # The answered read's index stays valid: served once the log commits it.
    node.step(Heartbeat(term=3, sender="b", to="c", commit=10))
    assert [s.context for r in take(node)[1] for s in r.read_states] == [b"answered"]
