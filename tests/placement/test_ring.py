"""The consistent-hash ring, checked against a naive linear scan and against uhashring."""

from __future__ import annotations

import itertools
import random

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from uhashring import HashRing as PeerRing

from shardwise.errors import (
    DuplicateNodeError,
    EmptyPlacementError,
    InvalidNodeError,
    InvalidPlacementArgumentError,
    InvalidWeightError,
    NotEnoughNodesError,
    PlacementError,
    UnknownNodeError,
    UnsupportedKeyTypeError,
)
from shardwise.placement import HashRing, Transfer

names = st.text(alphabet="abcdefgh0123456789-", min_size=1, max_size=6)
node_sets = st.lists(names, min_size=1, max_size=8, unique=True)
keys = st.one_of(st.text(max_size=12), st.binary(max_size=12), st.integers())


def naive_owner(ring: HashRing, h: int) -> str:
    """Linear scan: the first point strictly greater than h, else the first point."""
    for point, owner in ring.points:
        if point > h:
            return owner
    return ring.points[0][1]


def naive_preference(ring: HashRing, h: int, n: int) -> list[str]:
    points = ring.points
    start = next((i for i, (p, _) in enumerate(points) if p > h), 0)
    found: list[str] = []
    for step in range(len(points)):
        owner = points[(start + step) % len(points)][1]
        if owner not in found:
            found.append(owner)
    return found[:n]


def covering(transfers: list[Transfer[str]], h: int) -> Transfer[str] | None:
    hits = [t for t in transfers if h in t.range]
    assert len(hits) <= 1, "transfers overlap"
    return hits[0] if hits else None


@given(node_sets, st.integers(1, 20), st.lists(keys, max_size=30))
def test_lookup_equals_linear_scan(nodes: list[str], vnodes: int, sample: list[object]) -> None:
    ring = HashRing(nodes, vnodes)
    for key in sample:
        assert ring.lookup(key) == naive_owner(ring, ring.hash_key(key))  # type: ignore[arg-type]


@given(node_sets, st.integers(1, 10), st.lists(st.integers(0, 2**64 - 1), max_size=40))
def test_batch_equals_single(nodes: list[str], vnodes: int, hashes: list[int]) -> None:
    ring = HashRing(nodes, vnodes)
    extremes = [0, 2**64 - 1, *(p for p, _ in ring.points[:3])]
    values = hashes + extremes
    got = ring.lookup_batch(np.array(values, dtype=np.uint64))
    assert [ring.nodes[i] for i in got] == [ring.lookup_hash(h) for h in values]


@given(node_sets, names, st.integers(1, 12), st.lists(st.integers(0, 2**64 - 1), max_size=60))
def test_add_moves_exactly_the_transfers(
    nodes: list[str], new: str, vnodes: int, hashes: list[int]
) -> None:
    if new in nodes:
        return
    ring = HashRing(nodes, vnodes)
    before = ring.copy()
    transfers = ring.add(new)
    assert all(t.target == new and t.source != new for t in transfers)
    probes = hashes + [t.range.start for t in transfers] + [t.range.end - 1 for t in transfers]
    for h in probes:
        old, now, t = before.lookup_hash(h), ring.lookup_hash(h), covering(transfers, h)
        if t is None:
            assert old == now
        else:
            assert (t.source, t.target) == (old, now)


@given(st.lists(names, min_size=2, max_size=8, unique=True), st.data())
def test_remove_moves_exactly_the_transfers(nodes: list[str], data: st.DataObject) -> None:
    ring = HashRing(nodes, 8)
    gone = data.draw(st.sampled_from(nodes))
    before = ring.copy()
    transfers = ring.remove(gone)
    assert all(t.source == gone and t.target != gone for t in transfers)
    removed_share = sum(t.range.size for t in transfers) / 2**64
    assert removed_share == pytest.approx(before.shares()[gone])
    for h in data.draw(st.lists(st.integers(0, 2**64 - 1), max_size=60)):
        old, now, t = before.lookup_hash(h), ring.lookup_hash(h), covering(transfers, h)
        assert (old == now) if t is None else ((t.source, t.target) == (old, now))


def test_add_then_remove_restores_the_ring() -> None:
    ring = HashRing(["a", "b", "c"])
    points = ring.points
    moved_in = ring.add("d")
    moved_out = ring.remove("d")
    assert ring.points == points
    assert [(t.range, t.source) for t in moved_in] == [(t.range, t.target) for t in moved_out]


@given(node_sets, st.integers(1, 10), st.lists(st.integers(0, 2**64 - 1), max_size=20))
def test_preference_list_is_the_distinct_clockwise_walk(
    nodes: list[str], vnodes: int, hashes: list[int]
) -> None:
    ring = HashRing(nodes, vnodes)
    for h in hashes:
        key = h  # ints are keys too; the walk starts at the key's own hash
        for n in range(1, len(nodes) + 1):
            pref = ring.preference_list(key, n)
            assert len(set(pref)) == n
            assert pref == naive_preference(ring, ring.hash_key(key), n)
            assert pref[0] == ring.lookup(key)


@given(node_sets, names, st.lists(st.text(max_size=8), max_size=20))
def test_preference_list_is_stable_when_a_node_joins(
    nodes: list[str], new: str, sample: list[str]
) -> None:
    if new in nodes:
        return
    ring = HashRing(nodes, 6)
    before = {k: ring.preference_list(k, len(nodes)) for k in sample}
    ring.add(new)
    for k in sample:
        after = ring.preference_list(k, len(nodes) + 1)
        # The old nodes keep their relative order; the new one is only inserted.
        assert [n for n in after if n != new] == before[k]


def test_weights_are_respected(seed: int) -> None:
    weights = {"small": 1.0, "medium": 2.0, "large": 4.0}
    ring = HashRing(weights, vnodes=400)
    shares = ring.shares()
    assert sum(shares.values()) == pytest.approx(1.0)
    total = sum(weights.values())
    for node, weight in weights.items():
        # 400 * weight points: relative spread ~ 1/sqrt(400 * weight) = 5% or less.
        assert shares[node] == pytest.approx(weight / total, rel=0.2), (node, seed)
    rng = np.random.default_rng(seed)
    counts = np.bincount(ring.lookup_batch(rng.integers(0, 2**64, 200_000, dtype=np.uint64)))
    for i, node in enumerate(ring.nodes):
        assert counts[i] / 200_000 == pytest.approx(shares[node], abs=0.01), (node, seed)


def test_load_spread_follows_one_over_sqrt_vnodes() -> None:
    # The share of a node with V points has a relative standard deviation of ~1/sqrt(V).
    for vnodes in (16, 64, 256):
        ring = HashRing([f"n{i}" for i in range(200)], vnodes)
        shares = np.array(list(ring.shares().values()))
        cv = shares.std() / shares.mean()
        assert cv == pytest.approx(1 / np.sqrt(vnodes), rel=0.2), vnodes


def test_set_weight_moves_only_that_nodes_arcs() -> None:
    ring = HashRing(["a", "b", "c"], 20)
    transfers = ring.set_weight("b", 3)
    assert transfers
    assert all(t.target == "b" and t.source != "b" for t in transfers)
    assert ring.weights["b"] == 3.0


def test_owned_ranges_cover_the_space() -> None:
    ring = HashRing(["a", "b", "c"], 5)
    ranges = sorted(r for n in ring.nodes for r in ring.owned_ranges(n))
    assert ranges[0].start == 0 and ranges[-1].end == 2**64
    assert all(a.end == b.start for a, b in itertools.pairwise(ranges))


def test_order_of_nodes_does_not_matter() -> None:
    a = HashRing(["x", "y", "z"])
    b = HashRing({"z": 1, "x": 1, "y": 1})
    assert a.points == b.points


# --- ketama compatibility ----------------------------------------------------------------


@pytest.mark.parametrize(
    "nodes",
    [
        ["cache1", "cache2", "cache3"],
        [f"10.0.0.{i}:11211" for i in range(1, 11)],
        {"a": 1, "b": 2, "c": 3, "d": 1},
    ],
)
def test_ketama_layout_matches_uhashring(nodes: list[str] | dict[str, int], seed: int) -> None:
    ours = HashRing(nodes, layout="ketama")
    peer = PeerRing(nodes, hash_fn="ketama")
    assert ours.point_positions == sorted(peer.get_points()[i][0] for i in range(peer.size))
    rng = random.Random(seed)
    sample = [f"user:{rng.getrandbits(48)}" for _ in range(20_000)] + list(range(1000))
    mismatches = [k for k in sample if ours.lookup(k) != peer.get_node(k)]
    assert mismatches == [], f"seed={seed}"


def test_ketama_layout_after_adding_a_node_matches_uhashring() -> None:
    ours = HashRing(["a", "b", "c"], layout="ketama")
    peer = PeerRing(["a", "b", "c"], hash_fn="ketama")
    ours.add("d")
    peer.add_node("d")
    sample = [f"k{i}" for i in range(10_000)]
    assert [ours.lookup(k) for k in sample] == [peer.get_node(k) for k in sample]


# --- bad input -------------------------------------------------------------------------


def test_empty_ring() -> None:
    ring = HashRing()
    for call in (
        lambda: ring.lookup("k"),
        lambda: ring.lookup_hash(1),
        lambda: ring.preference_list("k", 1),
        lambda: ring.lookup_batch([1, 2]),
    ):
        with pytest.raises(EmptyPlacementError):
            call()
    assert ring.add("a") == []  # the first node takes everything from nobody
    assert ring.lookup("k") == "a"


@pytest.mark.parametrize(
    ("build", "error"),
    [
        (lambda: HashRing(["a", "a"]), DuplicateNodeError),
        (lambda: HashRing([""]), InvalidNodeError),
        (lambda: HashRing([3]), InvalidNodeError),  # type: ignore[list-item]
        (lambda: HashRing("abc"), InvalidNodeError),
        (lambda: HashRing({"a": 0}), InvalidWeightError),
        (lambda: HashRing({"a": -1}), InvalidWeightError),
        (lambda: HashRing({"a": float("nan")}), InvalidWeightError),
        (lambda: HashRing({"a": float("inf")}), InvalidWeightError),
        (lambda: HashRing({"a": True}), InvalidWeightError),
        (lambda: HashRing({"a": "1"}), InvalidWeightError),
        (lambda: HashRing(["a"], vnodes=0), InvalidPlacementArgumentError),
        (lambda: HashRing(["a"], vnodes=10**9), InvalidPlacementArgumentError),
        (lambda: HashRing(["a"], layout="md5"), InvalidPlacementArgumentError),  # type: ignore[arg-type]
    ],
)
def test_bad_construction(build: object, error: type[PlacementError]) -> None:
    with pytest.raises(error):
        build()  # type: ignore[operator]


def test_bad_calls_leave_the_ring_unchanged() -> None:
    ring = HashRing(["a", "b"])
    points = ring.points
    with pytest.raises(DuplicateNodeError):
        ring.add("a")
    with pytest.raises(UnknownNodeError):
        ring.remove("zz")
    with pytest.raises(InvalidWeightError):
        ring.add("c", weight=0)
    with pytest.raises(UnknownNodeError):
        ring.set_weight("zz", 2)
    with pytest.raises(NotEnoughNodesError):
        ring.preference_list("k", 3)
    with pytest.raises(InvalidPlacementArgumentError):
        ring.preference_list("k", 0)
    with pytest.raises(UnsupportedKeyTypeError):
        ring.lookup(1.5)  # type: ignore[arg-type]
    with pytest.raises(UnsupportedKeyTypeError):
        ring.lookup_batch(np.array([1.5]))
    with pytest.raises(InvalidPlacementArgumentError):
        ring.lookup_hash(2**64)
    assert ring.points == points
    assert "c" not in ring


@pytest.mark.parametrize("force_fallback", [False, True])
@pytest.mark.parametrize("layout", ["xxh3", "ketama"])
def test_batch_index_paths_agree_with_bisect(
    force_fallback: bool, layout: str, seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    from shardwise.placement import batch_index  # noqa: PLC0415

    if force_fallback:
        monkeypatch.setattr(batch_index, "MAX_STEPS", 0)
    ring = HashRing([f"n{i}" for i in range(37)], layout=layout)  # type: ignore[arg-type]
    rng = np.random.default_rng(seed)
    hashes = rng.integers(0, ring.space, 50_000, dtype=np.uint64)
    points = np.array(ring.point_positions, dtype=np.uint64)
    ends = np.array([0, ring.space - 1], dtype=np.uint64)
    edges = np.concatenate([points, points - np.uint64(1), ends])
    values = np.concatenate([hashes, edges])
    got = ring.lookup_batch(values)
    assert [ring.nodes[i] for i in got] == [ring.lookup_hash(int(h)) for h in values]
