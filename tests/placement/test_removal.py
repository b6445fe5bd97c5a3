"""Graceful and crash removal plans, executed against a model of replicated data."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shardwise.errors import InvalidPlacementArgumentError, NotEnoughNodesError, UnknownNodeError
from shardwise.placement import HashRing, RemovalPlan, plan_crash, plan_graceful_removal


def replicas_of(ring: HashRing, h: int, r: int) -> list[str]:
    """Naive replica set: the first r distinct owners strictly clockwise of h."""
    points = ring.points
    start = next((i for i, (p, _) in enumerate(points) if p > h), 0)
    found: list[str] = []
    for step in range(len(points)):
        owner = points[(start + step) % len(points)][1]
        if owner not in found:
            found.append(owner)
    return found[:r]


def execute(ring: HashRing, plan: RemovalPlan, hashes: list[int], r: int) -> dict[str, set[int]]:
    """Store each key on its replicas, lose the node, apply the plan's copies."""
    stored: dict[str, set[int]] = {n: set() for n in ring.nodes}
    for h in hashes:
        for node in replicas_of(ring, h, r):
            stored[node].add(h)
    gone = stored.pop(plan.node)
    for copy in plan.copies:
        source = gone if copy.source == plan.node else stored[copy.source]
        stored[copy.target] |= {h for h in source if h in copy.range}
    return stored


node_lists = st.lists(st.sampled_from("abcdefghij"), min_size=2, max_size=7, unique=True)
hash_lists = st.lists(st.integers(0, 2**64 - 1), min_size=1, max_size=80)


@given(node_lists, st.integers(1, 8), hash_lists, st.data())
def test_crash_with_replicas_loses_nothing(
    nodes: list[str], vnodes: int, hashes: list[int], data: st.DataObject
) -> None:
    ring = HashRing(nodes, vnodes)
    r = data.draw(st.integers(2, len(nodes)), label="replicas")
    gone = data.draw(st.sampled_from(nodes), label="crashed")
    plan = plan_crash(ring, gone, replicas=r)
    assert plan.lost == ()
    assert plan.replicas_after == min(r, len(nodes) - 1)
    for copy in plan.copies:
        assert copy.source != gone
        assert copy.source in replicas_of(ring, copy.range.start, r)
    stored = execute(ring, plan, hashes, r)
    for h in hashes:
        for node in replicas_of(plan.after, h, plan.replicas_after):
            assert h in stored[node], (h, node)


@given(node_lists, st.integers(1, 8), hash_lists, st.data())
def test_graceful_removal_hands_off_from_the_leaving_node(
    nodes: list[str], vnodes: int, hashes: list[int], data: st.DataObject
) -> None:
    ring = HashRing(nodes, vnodes)
    r = data.draw(st.integers(1, len(nodes) - 1), label="replicas")
    gone = data.draw(st.sampled_from(nodes), label="leaving")
    plan = plan_graceful_removal(ring, gone, replicas=r)
    assert all(c.source == gone for c in plan.copies)
    stored = execute(ring, plan, hashes, r)
    for h in hashes:
        new_set = replicas_of(plan.after, h, r)
        old_set = replicas_of(ring, h, r)
        for node in new_set:
            assert h in stored[node]
        copy_targets = {c.target for c in plan.copies if h in c.range}
        # Exactly the new members of the replica set receive the key, nobody else.
        assert copy_targets == set(new_set) - set(old_set)


def test_crash_without_replicas_names_what_is_lost() -> None:
    ring = HashRing(["a", "b", "c"], 10)
    plan = plan_crash(ring, "b", replicas=1)
    assert plan.loses_data
    assert plan.copies == ()
    assert sorted(plan.lost) == sorted(ring.owned_ranges("b"))


def test_crash_of_the_last_node_loses_everything() -> None:
    plan = plan_crash(HashRing(["a"]), "a", replicas=1)
    assert sum(r.size for r in plan.lost) == 2**64
    assert plan.replicas_after == 0


def test_crash_below_replication_factor_reports_reduced_replication() -> None:
    ring = HashRing(["a", "b", "c"], 10)
    plan = plan_crash(ring, "c", replicas=3)
    assert plan.replicas_after == 2
    assert plan.lost == ()


def test_bad_removals() -> None:
    ring = HashRing(["a", "b", "c"])
    with pytest.raises(UnknownNodeError):
        plan_crash(ring, "zz")
    with pytest.raises(NotEnoughNodesError):
        plan_graceful_removal(ring, "a", replicas=3)  # would leave 2 nodes for 3 replicas
    with pytest.raises(NotEnoughNodesError):
        plan_crash(ring, "a", replicas=4)
    with pytest.raises(InvalidPlacementArgumentError):
        plan_crash(ring, "a", replicas=0)
    assert len(ring) == 3  # planning never changes the ring it is given
