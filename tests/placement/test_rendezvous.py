"""Rendezvous (HRW) hashing against a naive argmax, and its minimal disruption."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from shardwise.errors import (
    DuplicateNodeError,
    EmptyPlacementError,
    InvalidWeightError,
    NotEnoughNodesError,
    UnknownNodeError,
)
from shardwise.placement import Rendezvous, stable_hash
from shardwise.placement.hashing import mix64
from shardwise.placement.rendezvous import _NODE_SEED

names = st.lists(st.text("abcdefgh", min_size=1, max_size=4), min_size=1, max_size=8, unique=True)


def naive_scores(nodes: dict[str, float], key_hash: int) -> dict[str, float]:
    out = {}
    for node, weight in nodes.items():
        u = ((mix64(key_hash ^ stable_hash(node, _NODE_SEED)) >> 11) + 0.5) / 2**53
        out[node] = -weight / math.log(u)
    return out


@given(st.dictionaries(st.sampled_from("abcdefgh"), st.integers(1, 5), min_size=2), st.data())
def test_weighted_lookup_is_the_naive_argmax(weights: dict[str, int], data: st.DataObject) -> None:
    hrw = Rendezvous(weights)
    for h in data.draw(st.lists(st.integers(0, 2**64 - 1), max_size=30)):
        scores = naive_scores({n: float(w) for n, w in weights.items()}, h)
        assert hrw.lookup_hash(h) == max(sorted(scores), key=lambda n: scores[n])


@given(names, st.lists(st.text(max_size=8), max_size=30))
def test_top_is_distinct_and_starts_with_lookup(nodes: list[str], keys: list[str]) -> None:
    hrw = Rendezvous(nodes)
    for key in keys:
        top = hrw.top(key, len(nodes))
        assert sorted(top) == sorted(nodes)
        assert top[0] == hrw.lookup(key)
        assert hrw.top(key, 1) == top[:1]


@pytest.mark.parametrize("weights", [None, {"a": 1, "b": 2, "c": 3.5}])
def test_batch_equals_single(weights: dict[str, float] | None, seed: int) -> None:
    hrw = Rendezvous(weights if weights else ["a", "b", "c", "d"])
    hashes = np.random.default_rng(seed).integers(0, 2**64, 5000, dtype=np.uint64)
    got = hrw.lookup_batch(hashes)
    assert [hrw.nodes[i] for i in got] == [hrw.lookup_hash(int(h)) for h in hashes]


def test_weights_give_proportional_shares(seed: int) -> None:
    hrw = Rendezvous({"a": 1, "b": 2, "c": 5})
    hashes = np.random.default_rng(seed).integers(0, 2**64, 200_000, dtype=np.uint64)
    counts = np.bincount(hrw.lookup_batch(hashes), minlength=3) / 200_000
    assert counts.tolist() == pytest.approx([1 / 8, 2 / 8, 5 / 8], abs=0.01)


@given(names, st.text("xyz", min_size=1, max_size=3), st.lists(st.text(max_size=8), max_size=40))
def test_join_and_leave_move_only_what_they_must(
    nodes: list[str], new: str, keys: list[str]
) -> None:
    hrw = Rendezvous(nodes)
    before = {k: hrw.top(k, len(nodes)) for k in keys}
    hrw.add(new)
    for k in keys:
        owner = hrw.lookup(k)
        assert owner in (before[k][0], new)  # a join only takes keys
    hrw.remove(new)
    if len(nodes) > 1:
        hrw.remove(nodes[0])
        for k in keys:
            # A leave hands each of its keys to that key's runner-up; others stay.
            expected = before[k][1] if before[k][0] == nodes[0] else before[k][0]
            assert hrw.lookup(k) == expected


def test_bad_input() -> None:
    with pytest.raises(EmptyPlacementError):
        Rendezvous().lookup("k")
    with pytest.raises(EmptyPlacementError):
        Rendezvous().lookup_batch([1])
    hrw = Rendezvous(["a", "b"])
    with pytest.raises(NotEnoughNodesError):
        hrw.top("k", 3)
    with pytest.raises(DuplicateNodeError):
        hrw.add("a")
    with pytest.raises(UnknownNodeError):
        hrw.remove("c")
    with pytest.raises(InvalidWeightError):
        Rendezvous({"a": 0})
    assert hrw.nodes == ("a", "b")


@pytest.mark.parametrize("weighted", [False, True])
def test_vector_and_loop_paths_agree(
    weighted: bool, seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shardwise.placement.rendezvous as module  # noqa: PLC0415

    nodes = [f"n{i}" for i in range(60)]
    hrw = Rendezvous({n: 1 + i % 4 for i, n in enumerate(nodes)} if weighted else nodes)
    hashes = [int(h) for h in np.random.default_rng(seed).integers(0, 2**64, 3000, np.uint64)]
    vector = [hrw.lookup_hash(h) for h in hashes]
    monkeypatch.setattr(module, "VECTOR_THRESHOLD", 10**9)
    assert [hrw.lookup_hash(h) for h in hashes] == vector
