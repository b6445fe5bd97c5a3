"""Leader leases: the core's numbered heartbeat rounds, the followers' side (a restarted
node's quiet election timeout), a transfer giving the lease up, and the host's clock of
when each round left. The fault sweep (``test_host_sweep.py``) checks whole histories
served from leases, with a control that an overlong lease is caught."""

from __future__ import annotations

import pytest

from shardwise.raft import Membership, RaftConfig, RaftNode, Role
from shardwise.raft.hosting.lease import LEASE_SHARE, LeaseClock, lease_duration_s
from shardwise.raft.lease import MAX_OPEN_ROUNDS, LeaseRounds
from shardwise.raft.messages import (
    AppendResponse,
    Heartbeat,
    HeartbeatResponse,
    RequestVote,
    VoteResponse,
)
from shardwise.testing.sim import drain

THREE = Membership(frozenset({"a", "b", "c"}))
LEASED = RaftConfig(lease_reads=True)


def leader(config: RaftConfig = LEASED) -> RaftNode:
    """ "a", leader of THREE with its no-op committed (so its term's reads may be served)."""
    node = RaftNode("a", THREE, config=config)
    for _ in range(config.election_ticks * 2):
        node.tick()
    drain(node)
    node.step(VoteResponse(term=node.term + 1, sender="b", to="a", granted=True, pre_vote=True))
    node.step(VoteResponse(term=node.term, sender="b", to="a", granted=True))
    assert node.role is Role.LEADER
    drain(node)
    for follower in ("b", "c"):
        node.step(AppendResponse(term=node.term, sender=follower, to="a", index=2))
    drain(node)
    return node


def heartbeat_round(node: RaftNode) -> int:
    """Tick until the leader sends a heartbeat round; its number."""
    node.tick()
    rounds = {m.round for m in drain(node) if isinstance(m, Heartbeat)}
    assert len(rounds) == 1, rounds
    return rounds.pop()


def answer(node: RaftNode, sender: str, number: int) -> None:
    node.step(HeartbeatResponse(term=node.term, sender=sender, to=node.id, round=number))


def test_a_round_answered_by_a_quorum_lets_the_leader_read_at_its_commit_index() -> None:
    node = leader()
    number = heartbeat_round(node)
    assert number > 0
    assert node.lease_read_index() is None, "no round answered yet"
    answer(node, "b", number)
    assert node.lease.confirmed == number
    assert node.lease_read_index() == node.log.committed


def test_answers_to_unknown_rounds_and_from_non_voters_confirm_nothing() -> None:
    node = leader()
    number = heartbeat_round(node)
    answer(node, "b", number + 5)  # never sent
    answer(node, "x", number)  # not a member
    assert node.lease.confirmed == 0
    assert node.lease_read_index() is None


def test_without_lease_reads_heartbeats_carry_no_round_and_nothing_is_leased() -> None:
    node = leader(RaftConfig())
    assert heartbeat_round(node) == 0
    answer(node, "b", 0)
    assert node.lease_read_index() is None


def test_a_transfer_gives_the_lease_up_for_the_rest_of_the_term() -> None:
    node = leader()
    answer(node, "b", heartbeat_round(node))
    assert node.lease_read_index() is not None
    node.transfer_leadership("b")
    assert node.lease_read_index() is None
    # The transfer fails (an election timeout passes) and "a" still leads: a delayed
    # TimeoutNow may yet make "b" campaign past the voters' leases, so still no lease.
    for _ in range(node.config.election_ticks):
        node.tick()
        for m in drain(node):
            if isinstance(m, Heartbeat):
                answer(node, m.to, m.round)
    assert node.role is Role.LEADER and node.transferee is None
    assert node.lease.confirmed > 0
    assert node.lease_read_index() is None


def test_a_new_term_starts_without_a_lease() -> None:
    node = leader()
    answer(node, "b", heartbeat_round(node))
    node.step(Heartbeat(term=node.term + 1, sender="c", to="a"))
    assert node.role is Role.FOLLOWER
    assert node.lease.confirmed == 0 and node.lease.sent == 0
    assert node.lease_read_index() is None


def test_old_unanswered_rounds_are_forgotten() -> None:
    rounds = LeaseRounds()
    first = rounds.next_round("a")
    for _ in range(MAX_OPEN_ROUNDS):
        rounds.next_round("a")
    rounds.acknowledge("b", first, frozenset({"a", "b", "c"}), 2)
    assert rounds.confirmed == 0
    rounds.acknowledge("b", rounds.sent, frozenset({"a", "b", "c"}), 2)
    assert rounds.confirmed == rounds.sent


def vote_request(term: int, *, pre_vote: bool, transfer: bool = False) -> RequestVote:
    return RequestVote(
        term=term,
        sender="c",
        to="b",
        last_index=10,
        last_term=term,
        pre_vote=pre_vote,
        transfer=transfer,
    )


def granted(node: RaftNode, request: RequestVote) -> bool:
    node.step(request)
    return any(isinstance(m, VoteResponse) and m.granted for m in drain(node))


@pytest.mark.parametrize("pre_vote", [True, False])
def test_a_restarted_node_refuses_votes_for_its_first_election_timeout(pre_vote: bool) -> None:
    """It may have answered the leader's heartbeat just before it crashed: for the lease
    to hold it must refuse, as if it had just heard from the leader."""
    node = RaftNode("b", THREE, config=LEASED)
    assert not granted(node, vote_request(5, pre_vote=pre_vote))
    for _ in range(LEASED.election_ticks - 1):
        node.tick()
        drain(node)
    assert not granted(node, vote_request(5, pre_vote=pre_vote))
    node.tick()
    drain(node)
    assert granted(node, vote_request(5, pre_vote=pre_vote))


def test_without_lease_reads_a_restarted_node_votes_at_once() -> None:
    """Control for the test above: the refusal comes from ``lease_reads``."""
    node = RaftNode("b", THREE, config=RaftConfig())
    assert granted(node, vote_request(5, pre_vote=True))


def test_a_restarted_node_still_votes_for_a_transferee() -> None:
    node = RaftNode("b", THREE, config=LEASED)
    assert granted(node, vote_request(5, pre_vote=False, transfer=True))


def test_lease_reads_need_check_quorum() -> None:
    with pytest.raises(ValueError, match="check_quorum"):
        RaftConfig(lease_reads=True, check_quorum=False)


# --- the host's clock of the rounds ---------------------------------------------------------


def test_the_lease_is_a_share_of_the_followers_shortest_refusal() -> None:
    assert lease_duration_s(10, 0.05) == pytest.approx(9 * 0.05 * LEASE_SHARE)
    assert LEASE_SHARE < 1


def test_a_round_is_leased_from_the_note_before_its_ready() -> None:
    clock = LeaseClock(1.0)
    clock.note(term=3, sent_round=0, now=10.0)
    clock.note(term=3, sent_round=2, now=11.0)  # rounds 1 and 2 leave with this Ready
    clock.note(term=3, sent_round=3, now=12.0)
    assert clock.until(3, 2) == 12.0
    assert clock.until(3, 3) == 13.0
    assert clock.until(3, 1) == 13.0, "an older confirmation never shortens a later one"


def test_a_round_of_another_term_or_never_noted_renews_nothing() -> None:
    clock = LeaseClock(1.0)
    clock.note(term=3, sent_round=1, now=10.0)
    assert clock.until(4, 1) == 0.0
    assert clock.until(3, 0) == 0.0
    assert clock.until(3, 7) == 0.0, "round 7 was not noted: its send time is unknown"
    clock.note(term=4, sent_round=1, now=20.0)  # a new term: numbering starts again
    assert clock.until(3, 1) == 0.0
    assert clock.until(4, 1) == 21.0


def test_numbering_that_starts_again_in_a_term_forgets_the_old_rounds() -> None:
    """A leader that stepped down numbers from 0 again if it ever leads in that term's
    successor; a restart of the numbering within a term is treated as a new start."""
    clock = LeaseClock(1.0)
    clock.note(term=3, sent_round=5, now=10.0)
    clock.note(term=3, sent_round=1, now=30.0)
    assert clock.until(3, 1) == 31.0


def test_a_read_heartbeat_numbered_inside_ready_is_covered_by_its_lease_round() -> None:
    """A ReadIndex read's heartbeat round is numbered inside ``ready()`` (its flush): a
    host that noted the time before taking the Ready would date that round by its next
    note, after this Ready's fsync and whatever else held it up: too late, so a lease
    counted from it could outlast the followers' refusal. ``Ready.lease_round`` covers it."""
    node = leader()
    before = node.lease.sent
    node.read_index(b"read")
    ready = node.ready()
    rounds = [m.round for m in [*ready.early_messages, *ready.messages] if isinstance(m, Heartbeat)]
    node.advance(ready)
    assert rounds and max(rounds) > before, "the read's round was numbered inside ready()"
    assert max(rounds) <= ready.lease_round


def test_a_later_higher_term_message_does_not_undo_the_refusal_to_vote() -> None:
    """A follower that answered the leader's heartbeat adopts a higher term from a message
    that is no vote request (here the late rejection of a pre-vote it sent before it heard
    the leader again). That clears its leader and vote, but its promise stands: a vote
    request of that very term is refused until an election timeout has passed."""
    node = RaftNode("b", THREE, config=LEASED)
    for _ in range(LEASED.election_ticks):  # (past the restart's quiet timeout)
        node.tick()
        drain(node)
    node.step(Heartbeat(term=2, sender="a", to="b"))
    drain(node)
    node.step(VoteResponse(term=3, sender="c", to="b", granted=False, pre_vote=True))
    assert node.term == 3 and node.lead is None and node.vote is None
    assert not granted(node, vote_request(3, pre_vote=False))
    assert not granted(node, vote_request(4, pre_vote=True))
    for _ in range(LEASED.election_ticks):
        node.tick()
        drain(node)
    assert granted(node, vote_request(4, pre_vote=True))


def test_without_lease_reads_the_higher_term_message_frees_the_vote() -> None:
    """Control for the test above (and etcd's rule too): the refusal rides on the term."""
    node = RaftNode("b", THREE, config=RaftConfig())
    node.step(Heartbeat(term=2, sender="a", to="b"))
    drain(node)
    node.step(VoteResponse(term=3, sender="c", to="b", granted=False, pre_vote=True))
    assert granted(node, vote_request(3, pre_vote=False))
