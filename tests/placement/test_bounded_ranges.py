"""Bounded-load consistent hashing and range partitioning."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from shardwise.errors import (
    EmptyPlacementError,
    InvalidPlacementArgumentError,
    UnknownNodeError,
    UnsupportedKeyTypeError,
)
from shardwise.placement import (
    BoundedLoadRing,
    HashRangePartition,
    KeyRangePartition,
    key_bytes,
    stable_hash,
)

# --- bounded loads ---------------------------------------------------------------------

operations = st.lists(
    st.tuples(st.sampled_from(["assign", "release"]), st.integers(0, 60)), max_size=150
)


@given(st.integers(1, 6), st.sampled_from([1.0, 1.1, 1.25, 2.0]), operations)
def test_bounded_loads_are_never_exceeded(nodes: int, balance: float, ops: list) -> None:  # type: ignore[type-arg]
    ring = BoundedLoadRing([f"n{i}" for i in range(nodes)], balance, vnodes=8)
    model: dict[bytes, str] = {}
    for op, k in ops:
        key = f"key{k}"
        if op == "assign":
            model[key_bytes(key)] = ring.assign(key)
        elif key_bytes(key) in model:
            for move in ring.release(key):
                assert model[move.key] == move.source
                model[move.key] = move.target
            del model[key_bytes(key)]
        loads = ring.loads()
        assert max(loads.values()) <= ring.capacity()
        assert sum(loads.values()) == len(model) == len(ring)
        for stored, owner in model.items():
            assert ring.owner(stored) == owner


def test_bounded_loads_flatten_a_skewed_ring() -> None:
    ring = BoundedLoadRing([f"n{i}" for i in range(10)], 1.25, vnodes=4)
    ring.assign_many(f"k{i}" for i in range(20_000))
    assert max(ring.loads().values()) <= 2500  # ceil(1.25 * 20000 / 10)


def test_bounded_assign_is_idempotent_and_keys_prefer_their_ring_owner() -> None:
    ring = BoundedLoadRing(["a", "b", "c"], 2.0)
    first = ring.assign("k")
    assert ring.assign("k") == first
    assert len(ring) == 1


def test_bounded_bad_input() -> None:
    with pytest.raises(InvalidPlacementArgumentError):
        BoundedLoadRing(["a"], 0.5)
    with pytest.raises(EmptyPlacementError):
        BoundedLoadRing([])
    ring = BoundedLoadRing(["a"])
    with pytest.raises(UnknownNodeError):
        ring.release("never-assigned")
    with pytest.raises(UnknownNodeError):
        ring.owner("never-assigned")


# --- hash ranges -----------------------------------------------------------------------


def naive_range(starts: list[int], h: int) -> int:
    return max(i for i, s in enumerate(starts) if s <= h)


@given(st.integers(1, 300), st.lists(st.integers(0, 2**64 - 1), max_size=30))
def test_even_split_fast_path_matches_scan(count: int, hashes: list[int]) -> None:
    part = HashRangePartition.even(count)
    assert part.is_even
    starts = part.starts
    edges = [s for s in starts] + [s - 1 for s in starts[1:]] + [2**64 - 1]
    for h in hashes + edges:
        assert part.index_of_hash(h) == naive_range(starts, h)
    got = part.lookup_batch(np.array(hashes + edges, dtype=np.uint64))
    assert got.tolist() == [naive_range(starts, h) for h in hashes + edges]


@given(st.integers(1, 64))
def test_even_split_is_even(count: int) -> None:
    sizes = [r.size for r in HashRangePartition.even(count).ranges()]
    assert sum(sizes) == 2**64
    assert max(sizes) - min(sizes) <= 1


@given(st.integers(1, 16), st.data())
def test_split_and_merge_move_exactly_the_reported_range(count: int, data: st.DataObject) -> None:
    part = HashRangePartition.even(count)
    index = data.draw(st.integers(0, count - 1))
    result = part.split(index)
    assert len(result.partition) == count + 1
    for h in data.draw(st.lists(st.integers(0, 2**64 - 1), max_size=40)):
        old, new = part.index_of_hash(h), result.partition.index_of_hash(h)
        if h in result.moved:
            assert (old, new) == (index, index + 1)
        else:
            assert new == (old if old <= index else old + 1)
    merged = result.partition.merge(index)
    assert merged.partition == part
    assert merged.moved == result.moved


def test_hash_range_bad_input() -> None:
    with pytest.raises(InvalidPlacementArgumentError):
        HashRangePartition.even(0)
    with pytest.raises(InvalidPlacementArgumentError):
        HashRangePartition([5])
    with pytest.raises(InvalidPlacementArgumentError):
        HashRangePartition([0, 10, 10])
    part = HashRangePartition.even(4)
    with pytest.raises(InvalidPlacementArgumentError):
        part.split(4)
    with pytest.raises(InvalidPlacementArgumentError):
        part.split(0, at=0)
    with pytest.raises(InvalidPlacementArgumentError):
        part.merge(3)
    with pytest.raises(InvalidPlacementArgumentError):
        part.index_of_hash(-1)
    assert part.lookup("k") == stable_hash("k") * 4 >> 64


# --- key ranges ------------------------------------------------------------------------

splits_text = st.lists(st.text(max_size=4), min_size=0, max_size=8, unique=True).map(
    lambda xs: sorted(xs, key=lambda s: s.encode())
)


@given(splits_text, st.lists(st.text(max_size=5), max_size=30))
def test_key_ranges_match_a_scan(splits: list[str], keys: list[str]) -> None:
    part = KeyRangePartition(splits)
    for key in keys + splits:
        expected = sum(1 for s in splits if s.encode() <= key.encode())
        assert part.lookup(key) == expected


@given(splits_text, st.text(max_size=5), st.text(max_size=5), st.lists(st.text(max_size=5)))
def test_partitions_for_range_cover_every_key_in_range(
    splits: list[str], low: str, high: str, keys: list[str]
) -> None:
    part = KeyRangePartition(splits)
    visited = part.partitions_for_range(low, high)
    lo, hi = low.encode(), high.encode()
    bounds = [s.encode() for s in splits]
    # Partition i holds [bounds[i-1], bounds[i]); it matters iff that meets [lo, hi).
    naive = [
        i
        for i in range(len(splits) + 1)
        if lo < hi and (i == 0 or bounds[i - 1] < hi) and (i == len(splits) or bounds[i] > lo)
    ]
    assert list(visited) == naive
    for key in keys:
        if lo <= key.encode() < hi:
            assert part.lookup(key) in visited


def test_int_key_ranges() -> None:
    part = KeyRangePartition([10, 20])
    assert [part.lookup(k) for k in (-5, 10, 19, 20, 10**30)] == [0, 1, 1, 2, 2]
    assert list(part.partitions_for_range(None, 10)) == [0]
    assert list(part.partitions_for_range(15, None)) == [1, 2]
    with pytest.raises(UnsupportedKeyTypeError):
        part.lookup("15")


def test_key_range_bad_input() -> None:
    with pytest.raises(UnsupportedKeyTypeError):
        KeyRangePartition([1, "a"])
    with pytest.raises(InvalidPlacementArgumentError):
        KeyRangePartition(["b", "a"])
    with pytest.raises(UnsupportedKeyTypeError):
        KeyRangePartition([1.5])  # type: ignore[list-item]
    with pytest.raises(UnsupportedKeyTypeError):
        KeyRangePartition(["a"]).lookup(True)
