"""The classic Raft scenarios, run on the real core in the deterministic simulator.

Every cluster checks Raft's invariants on every event (one leader per term, leader
completeness, the same entry applied at the same index everywhere); these tests add the
liveness and agreement checks of each scenario.
"""

from __future__ import annotations

import random

import pytest

from shardwise.errors import ConfChangeError, NotLeaderError, ProposalDroppedError
from shardwise.raft import ConfChange, ConfChangeKind, RaftConfig, Role
from shardwise.testing.drivers import (
    applied_agree,
    commit_one,
    machine,
    make_cluster,
    try_propose,
)
from shardwise.testing.network import Faults
from shardwise.testing.sim import SimRaftGroup


def live(cluster: SimRaftGroup) -> list[str]:
    return [s.id for s in cluster.servers.values() if s.alive]


def test_initial_election_and_a_quiet_cluster_keeps_its_leader(seed: int) -> None:
    cluster = make_cluster(3, seed)
    leader = cluster.wait_for_leader()
    term = cluster.node(leader).term
    cluster.run(cluster.ticks(100))
    assert cluster.leader() == leader
    assert cluster.node(leader).term == term, "a healthy cluster must not re-elect"
    assert all(cluster.node(n).term == term for n in cluster.ids)


def test_reelection_after_leader_failures(seed: int) -> None:
    cluster = make_cluster(3, seed)
    first = cluster.wait_for_leader()
    cluster.crash(first)
    second = cluster.wait_for_leader()
    assert second != first
    cluster.restart(first)  # the old leader returns and must not disturb the new one
    cluster.run(cluster.ticks(30))
    assert cluster.leader() == second
    others = [n for n in cluster.ids if n != second]
    for n in others:
        cluster.crash(n)
    cluster.run(cluster.ticks(60))
    assert not cluster.node(second).is_leader(), "a leader without a quorum steps down"
    for n in others:
        cluster.restart(n)
    cluster.wait_for_leader()


def test_many_elections_with_seven_servers(seed: int) -> None:
    cluster = make_cluster(7, seed)
    rng = random.Random(seed)
    cluster.wait_for_leader()
    for _ in range(10):
        down = rng.sample(cluster.ids, 3)
        for n in down:
            cluster.crash(n)
        cluster.wait_for_leader()
        for n in down:
            cluster.restart(n)
    cluster.wait_for_leader()


def test_basic_agreement(seed: int) -> None:
    cluster = make_cluster(5, seed)
    cluster.wait_for_leader()
    for i in range(1, 8):
        commit_one(cluster, f"cmd{i}".encode())
    assert applied_agree(cluster) == [f"cmd{i}".encode() for i in range(1, 8)]


def test_agreement_despite_a_failed_follower(seed: int) -> None:
    cluster = make_cluster(3, seed)
    leader = cluster.wait_for_leader()
    commit_one(cluster, b"a")
    follower = next(n for n in cluster.ids if n != leader)
    cluster.crash(follower)
    commit_one(cluster, b"b")
    commit_one(cluster, b"c")
    cluster.restart(follower)
    commit_one(cluster, b"d")
    assert machine(cluster, follower).commands == [b"a", b"b", b"c", b"d"]


def test_no_agreement_without_a_majority(seed: int) -> None:
    cluster = make_cluster(5, seed)
    leader = cluster.wait_for_leader()
    commit_one(cluster, b"before")
    followers = [n for n in cluster.ids if n != leader]
    for n in followers[:3]:
        cluster.crash(n)
    index = cluster.node(leader).propose(b"stranded")
    cluster.run(cluster.ticks(5))  # less than an election timeout: still the leader
    assert cluster.node(leader).log.committed < index
    assert index not in cluster.servers[leader].results
    for n in followers[:3]:
        cluster.restart(n)
    commit_one(cluster, b"after")
    assert b"after" in applied_agree(cluster)


def test_concurrent_proposals_apply_in_one_order(seed: int) -> None:
    cluster = make_cluster(3, seed, faults=Faults(min_delay=1, max_delay=9))
    leader = cluster.wait_for_leader()
    for i in range(50):
        cluster.node(leader).propose(f"c{i}".encode())
    cluster.run(cluster.ticks(20))
    assert applied_agree(cluster) == [f"c{i}".encode() for i in range(50)]


def test_rejoin_of_a_partitioned_leader(seed: int) -> None:
    cluster = make_cluster(3, seed)
    old = cluster.wait_for_leader()
    commit_one(cluster, b"101")
    rest = [n for n in cluster.ids if n != old]
    cluster.network.partition([old], rest)
    for data in (b"102", b"103", b"104"):  # accepted by the cut-off leader, never committed
        cluster.node(old).propose(data)
    cluster.run_until(lambda: cluster.leader() in rest, cluster.ticks(200))
    commit_one(cluster, b"103'", expected=2)
    cluster.network.heal()
    commit_one(cluster, b"104'")
    assert applied_agree(cluster) == [b"101", b"103'", b"104'"]
    assert machine(cluster, old).commands == [b"101", b"103'", b"104'"]


def test_fast_backup_of_long_divergent_logs(seed: int) -> None:
    cluster = make_cluster(5, seed)
    leader = cluster.wait_for_leader()
    commit_one(cluster, b"start")
    others = [n for n in cluster.ids if n != leader]
    # The leader and one follower get 50 entries that never commit.
    cluster.network.partition([leader, others[0]], others[1:])
    for i in range(50):
        cluster.node(leader).propose(f"lost{i}".encode())
    cluster.run(cluster.ticks(5))
    # The other three elect a leader and commit 50 entries of their own.
    cluster.run_until(lambda: cluster.leader() in others[1:], cluster.ticks(300))
    for i in range(50):
        cluster.node(cluster.leader() or others[1]).propose(f"won{i}".encode())
    cluster.run(cluster.ticks(20))
    sent_before = cluster.network.sent
    cluster.network.heal()
    commit_one(cluster, b"end")
    expected = [b"start", *(f"won{i}".encode() for i in range(50)), b"end"]
    assert applied_agree(cluster) == expected
    assert machine(cluster, leader).commands == expected
    # Back-off by term skips the 50 bad entries in a few round trips, not 50.
    assert cluster.network.sent - sent_before < 400


def test_message_count_is_bounded(seed: int) -> None:
    cluster = make_cluster(3, seed)
    cluster.wait_for_leader()
    cluster.run(cluster.ticks(5))
    before = cluster.network.sent
    for i in range(10):
        commit_one(cluster, f"m{i}".encode())
    # Each commit needs an append round trip per follower, plus heartbeats meanwhile.
    assert cluster.network.sent - before < 10 * 40


def test_persistence_across_full_restart(seed: int) -> None:
    cluster = make_cluster(3, seed)
    cluster.wait_for_leader()
    for i in range(5):
        commit_one(cluster, f"p{i}".encode())
    for n in cluster.ids:
        cluster.crash(n)
    for n in cluster.ids:
        cluster.restart(n)
    commit_one(cluster, b"after-restart")
    assert applied_agree(cluster) == [*(f"p{i}".encode() for i in range(5)), b"after-restart"]


def test_torn_writes_lose_only_what_was_never_acknowledged(seed: int) -> None:
    cluster = make_cluster(3, seed)
    leader = cluster.wait_for_leader()
    commit_one(cluster, b"safe")
    # Cut the leader off first, so its appends (sent before its own write completes) go
    # nowhere; then its next synced write is cut short by a crash.
    cluster.network.partition([leader], [n for n in cluster.ids if n != leader])
    cluster.crash(leader, torn=True)
    cluster.node(leader).propose(b"torn")
    cluster.run(cluster.ticks(2))
    assert not cluster.servers[leader].alive
    cluster.network.heal()
    cluster.restart(leader)
    commit_one(cluster, b"later")
    log = applied_agree(cluster)
    assert log == [b"safe", b"later"], "the torn, never acknowledged write is gone"


def test_a_leader_replicates_while_its_own_write_is_in_flight(seed: int) -> None:
    """The leader sends appends before its own fsync (Raft thesis 10.2.1): followers can
    commit an entry the leader then loses in a crash, and nothing breaks."""
    cluster = make_cluster(3, seed)
    leader = cluster.wait_for_leader()
    commit_one(cluster, b"safe")
    cluster.crash(leader, torn=True)
    cluster.node(leader).propose(b"in-flight")
    cluster.run(cluster.ticks(3))
    assert not cluster.servers[leader].alive
    survivors = [n for n in cluster.ids if n != leader]
    cluster.run_until(lambda: cluster.leader() in survivors, cluster.ticks(300))
    cluster.restart(leader)
    commit_one(cluster, b"later")
    log = applied_agree(cluster)
    assert log[0] == b"safe" and log[-1] == b"later" and log.count(b"in-flight") <= 1


@pytest.mark.parametrize("unreliable", [False, True], ids=["reliable", "unreliable"])
def test_figure_8(seed: int, unreliable: bool) -> None:
    """Leaders crash with entries on a few servers; only current-term counting commits."""
    faults = Faults(drop=0.1, duplicate=0.05, max_delay=25) if unreliable else Faults()
    cluster = make_cluster(5, seed, faults=faults)
    rng = random.Random(seed)
    for i in range(40):
        placed = try_propose(cluster, f"f{i}".encode())
        cluster.run(rng.choice([cluster.ticks(1), cluster.ticks(3), rng.randint(1, 9)]))
        if placed is not None and rng.random() < 0.5:
            cluster.crash(placed[0])
        if sum(s.alive for s in cluster.servers.values()) < 3:
            down = [n for n in cluster.ids if not cluster.servers[n].alive]
            cluster.restart(rng.choice(down))
    cluster.network.faults = Faults()
    for n in cluster.ids:
        if not cluster.servers[n].alive:
            cluster.restart(n)
    commit_one(cluster, b"final", max_ticks=600)
    log = applied_agree(cluster)
    assert log[-1] == b"final"


def test_churn_with_unreliable_network(seed: int) -> None:
    cluster = make_cluster(5, seed, faults=Faults(drop=0.05, max_delay=20))
    rng = random.Random(seed)
    for i in range(60):
        try_propose(cluster, f"churn{i}".encode())
        cluster.run(rng.randint(1, cluster.ticks(3)))
        roll = rng.random()
        alive = live(cluster)
        if roll < 0.1 and len(alive) > 3:
            cluster.crash(rng.choice(alive))
        elif roll < 0.2:
            down = [n for n in cluster.ids if n not in alive]
            if down:
                cluster.restart(rng.choice(down))
    cluster.network.faults = Faults()
    for n in cluster.ids:
        if not cluster.servers[n].alive:
            cluster.restart(n)
    commit_one(cluster, b"settled", max_ticks=600)
    applied_agree(cluster)


def test_snapshot_installed_on_a_lagging_follower(seed: int) -> None:
    cluster = make_cluster(3, seed, snapshot_every=10)
    leader = cluster.wait_for_leader()
    lagging = next(n for n in cluster.ids if n != leader)
    cluster.crash(lagging)
    for i in range(35):
        commit_one(cluster, f"s{i}".encode(), expected=2)
    assert cluster.node(cluster.leader() or leader).log.offset >= 30
    cluster.restart(lagging)
    commit_one(cluster, b"caught-up")
    assert machine(cluster, lagging).commands == [
        *(f"s{i}".encode() for i in range(35)),
        b"caught-up",
    ]
    assert cluster.servers[lagging].storage.snapshot_meta() is not None


def test_snapshot_chunks_survive_loss(seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    from shardwise.raft import replication as node_module  # noqa: PLC0415

    monkeypatch.setattr(node_module, "SNAPSHOT_CHUNK_BYTES", 16)  # many chunks
    cluster = make_cluster(3, seed, snapshot_every=5, faults=Faults(drop=0.2, max_delay=8))
    leader = cluster.wait_for_leader(max_ticks=400)
    lagging = next(n for n in cluster.ids if n != leader)
    cluster.crash(lagging)
    for i in range(20):
        commit_one(cluster, f"x{i}".encode(), expected=2, max_ticks=600)
    cluster.restart(lagging)
    cluster.network.faults = Faults(drop=0.2, max_delay=8)
    commit_one(cluster, b"done", max_ticks=1500)
    assert machine(cluster, lagging).commands[-1] == b"done"


def test_restart_from_snapshot_plus_log(seed: int) -> None:
    cluster = make_cluster(3, seed, snapshot_every=7)
    cluster.wait_for_leader()
    for i in range(20):
        commit_one(cluster, f"r{i}".encode())
    for n in cluster.ids:
        cluster.restart(n)
    commit_one(cluster, b"again")
    assert applied_agree(cluster) == [*(f"r{i}".encode() for i in range(20)), b"again"]


def test_membership_changes(seed: int) -> None:
    cluster = make_cluster(4, seed)
    # n4 starts outside the group: shrink the bootstrap to three voters first.
    leader = cluster.wait_for_leader()
    if leader == "n4":
        cluster.node(leader).transfer_leadership("n1")
        cluster.run_until(lambda: cluster.leader() not in (None, "n4"), cluster.ticks(50))
        leader = cluster.wait_for_leader()
    commit_one(cluster, b"x")
    cluster.node(leader).propose_conf_change(ConfChange(ConfChangeKind.REMOVE, "n4"))
    cluster.run(cluster.ticks(5))
    assert "n4" not in cluster.node(leader).voters
    with pytest.raises(ConfChangeError):
        cluster.node(leader).propose_conf_change(ConfChange(ConfChangeKind.PROMOTE, "n4"))
    cluster.node(leader).propose_conf_change(ConfChange(ConfChangeKind.ADD_LEARNER, "n4"))
    cluster.run(cluster.ticks(10))
    assert "n4" in cluster.node(leader).membership.learners
    cluster.node(leader).propose_conf_change(ConfChange(ConfChangeKind.PROMOTE, "n4"))
    cluster.run(cluster.ticks(10))
    assert cluster.node(leader).voters == {"n1", "n2", "n3", "n4"}
    commit_one(cluster, b"four voters")
    # Remove the leader itself: it steps down once the change applies.
    cluster.node(leader).propose_conf_change(ConfChange(ConfChangeKind.REMOVE, leader))
    cluster.run_until(lambda: cluster.leader() not in (None, leader), cluster.ticks(100))
    assert cluster.node(leader).role is not Role.LEADER
    commit_one(cluster, b"without the old leader", expected=3)


def test_one_membership_change_at_a_time(seed: int) -> None:
    cluster = make_cluster(3, seed)
    leader = cluster.wait_for_leader()
    cluster.run(cluster.ticks(3))
    node = cluster.node(leader)
    node.propose_conf_change(ConfChange(ConfChangeKind.ADD_LEARNER, "n9"))
    with pytest.raises(ConfChangeError, match="pending"):
        node.propose_conf_change(ConfChange(ConfChangeKind.ADD_LEARNER, "n8"))
    with pytest.raises(ConfChangeError):
        node.propose_conf_change(ConfChange(ConfChangeKind.REMOVE, "nobody"))
    follower = next(n for n in cluster.ids if n != leader)
    with pytest.raises(NotLeaderError) as info:
        cluster.node(follower).propose(b"x")
    assert info.value.leader == leader


def test_leadership_transfer(seed: int) -> None:
    cluster = make_cluster(3, seed)
    leader = cluster.wait_for_leader()
    commit_one(cluster, b"before")
    target = next(n for n in cluster.ids if n != leader)
    cluster.node(leader).transfer_leadership(target)
    with pytest.raises(ProposalDroppedError):
        cluster.node(leader).propose(b"during")
    assert cluster.run_until(lambda: cluster.leader() == target, cluster.ticks(20))
    commit_one(cluster, b"after")
    assert applied_agree(cluster) == [b"before", b"after"]


def test_a_leader_whose_disk_fills_hands_leadership_to_a_follower_with_room(seed: int) -> None:
    """Issue 21: one full disk must not stop a group's writes while two have room. The
    leader passes over a follower whose disk is nearly full too; with every disk full it
    keeps leading (writes are refused, reads served) rather than bouncing leadership."""
    cluster = make_cluster(3, seed)
    leader = cluster.wait_for_leader()
    commit_one(cluster, b"before")
    full, roomy = [n for n in cluster.ids if n != leader]
    cluster.node(full).set_space_low(True)
    cluster.run(cluster.ticks(5))  # its heartbeat answers say so
    cluster.node(leader).set_space_low(True)
    assert cluster.run_until(lambda: cluster.leader() == roomy, cluster.ticks(30))
    commit_one(cluster, b"after")
    assert applied_agree(cluster) == [b"before", b"after"]
    # Every disk full: nobody has room to take over, the leader stays.
    cluster.node(roomy).set_space_low(True)
    term = cluster.node(roomy).term
    cluster.run(cluster.ticks(60))
    assert cluster.leader() == roomy and cluster.node(roomy).term == term


def test_prevote_keeps_a_returning_node_from_deposing_the_leader(seed: int) -> None:
    cluster = make_cluster(3, seed)
    leader = cluster.wait_for_leader()
    term = cluster.node(leader).term
    loner = next(n for n in cluster.ids if n != leader)
    others = [n for n in cluster.ids if n != loner]
    cluster.network.partition([loner], others)
    cluster.run(cluster.ticks(100))  # the loner times out again and again
    assert cluster.node(loner).term == term, "pre-vote: a lone node must not inflate its term"
    cluster.network.heal()
    cluster.run(cluster.ticks(30))
    assert cluster.leader() == leader and cluster.node(leader).term == term


def test_without_prevote_a_returning_node_disrupts(seed: int) -> None:
    # The control for the test above: it must be the pre-vote that protects the leader.
    config = RaftConfig(pre_vote=False, check_quorum=False)
    cluster = make_cluster(3, seed, config=config)
    leader = cluster.wait_for_leader()
    term = cluster.node(leader).term
    loner = next(n for n in cluster.ids if n != leader)
    cluster.network.partition([loner], [n for n in cluster.ids if n != loner])
    cluster.run(cluster.ticks(100))
    assert cluster.node(loner).term > term


def test_check_quorum_deposes_a_cut_off_leader(seed: int) -> None:
    cluster = make_cluster(3, seed)
    leader = cluster.wait_for_leader()
    cluster.network.partition([leader], [n for n in cluster.ids if n != leader])
    cluster.run(cluster.ticks(30))
    assert not cluster.node(leader).is_leader()


def test_read_index(seed: int) -> None:
    cluster = make_cluster(3, seed)
    leader = cluster.wait_for_leader()
    index = commit_one(cluster, b"w1")
    cluster.node(leader).read_index(b"read-1")
    assert cluster.run_until(lambda: bool(cluster.servers[leader].reads), cluster.ticks(10))
    state = cluster.servers[leader].reads[0]
    assert state.context == b"read-1" and state.index >= index
    follower = next(n for n in cluster.ids if n != leader)
    cluster.node(follower).read_index(b"read-2")  # forwarded to the leader
    assert cluster.run_until(lambda: bool(cluster.servers[follower].reads), cluster.ticks(10))
    # A leader cut off from the quorum must not confirm reads.
    cluster.network.partition([leader], [n for n in cluster.ids if n != leader])
    cluster.node(leader).read_index(b"read-3")
    cluster.run(cluster.ticks(30))
    assert [r.context for r in cluster.servers[leader].reads] == [b"read-1"]
    assert b"read-3" in cluster.servers[leader].dropped_reads
