"""A consistent-hash ring with virtual nodes and weights.

Each node owns ``round(vnodes * weight)`` points on a circle of ``2**64`` hash values.
A key belongs to the first point *strictly after* its hash, clockwise, so point ``p_i``
owns the half-open arc ``[p_(i-1), p_i)``. That convention (``bisect_right``) is the one
ketama clients such as uhashring use, which keeps the optional ketama layout exact.

A node's points depend only on its own name and weight, never on the other nodes, so
adding a node moves keys only *to* it and removing one moves only *its* keys: the
transfers that :meth:`HashRing.add` and :meth:`HashRing.remove` return are exactly the
arcs that change owner. (The ketama layout is the exception when weights differ: ketama
scales every node's point count by the total weight, so a join re-spreads points; the
reported transfers are still exact.)

Equal points (a 64-bit collision, or a 32-bit one in the ketama layout) are ordered by
node name, so the owner never depends on insertion order.
"""

from __future__ import annotations

from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Final, Literal

import xxhash

from shardwise.errors import (
    DuplicateNodeError,
    EmptyPlacementError,
    InvalidPlacementArgumentError,
    NotEnoughNodesError,
    UnknownNodeError,
)
from shardwise.placement.hashing import (
    HASH_SPACE,
    KETAMA_SPACE,
    Key,
    as_hash_array,
    ketama_hash,
    stable_hash,
)
from shardwise.placement.types import (
    HashRange,
    Transfer,
    check_node_name,
    check_weight,
    coalesce,
    normalize_nodes,
)

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    from shardwise.placement.batch_index import SortedPointIndex

Layout = Literal["xxh3", "ketama"]

DEFAULT_VNODES: Final = 160
"""Points per unit of weight. The load's spread shrinks as ``1/sqrt(vnodes)``: 160 gives a
standard deviation of about 8% of the mean share, at ~40 bytes per point."""

KETAMA_VNODES: Final = 40
"""libketama's default: 40 digests of four points each per node, i.e. 160 points."""

MAX_VNODES: Final = 1 << 16
"""Upper bound on points per unit of weight, so a typo cannot allocate gigabytes."""

MAX_POINTS_PER_NODE: Final = 1 << 20
"""Bound on one node's points (weight times vnodes); the index is encoded in 4 bytes."""

MAX_INDEX_BITS: Final = 18
"""Bound on the lookup accelerator: at most ``2**18`` slices (about 10 MiB), reached at
65,536 points; bigger rings get fewer slices per point and bisect a little more."""

_VNODE_SEED: Final = 0x7368617264776973
"""Seed of point hashes, so a node's points are not the hashes of plausible keys."""


def _xxh3_points(node: str, count: int) -> list[int]:
    # Point i hashes the name followed by i as four fixed-width bytes, so (name, i) pairs
    # never share an input. Varying the *seed* instead looks natural but is wrong: for
    # short inputs xxh3 folds the seed in linearly, and consecutive seeds over similar
    # names collide by the thousand (a ring of 200 nodes came out with a load spread of
    # 0.8 instead of 1/sqrt(vnodes); see test_load_spread_follows_one_over_sqrt_vnodes).
    name = node.encode()
    return [
        xxhash.xxh3_64_intdigest(name + i.to_bytes(4, "big"), _VNODE_SEED) for i in range(count)
    ]


def _ketama_points(node: str, digests: int) -> list[int]:
    points: list[int] = []
    for i in range(digests):
        label = f"{node}-{i}"
        points.extend(ketama_hash(label, replica) for replica in range(4))
    return points


def bucket_index(
    points: list[int], owners: list[str], space_bits: int
) -> tuple[array[int], list[str | None], int]:
    """A lookup accelerator over ``2**k`` equal slices of the hash space (about four per
    point): for each slice, the index of its first point, and its owner when no point
    falls inside it. Returns ``(first_point, owner, shift)``; ``owners`` has the
    wrap-around owner appended.

    Most slices hold no point, so most lookups are one list read after the hash; the rest
    bisect only the few points of their slice. In CPython, where each comparison of
    64-bit ints costs more than the arithmetic around it, that makes single-key lookups
    1.25x (100 nodes) to 1.6x (1,000 nodes) faster than bisecting the whole ring, as
    measured while building it.
    """
    bits = max(1, min(len(points).bit_length() + 2, MAX_INDEX_BITS, space_bits))
    shift = space_bits - bits
    # The first-point table is read only on the slow path, so it lives in a compact array
    # (8 bytes an entry) rather than a list of int objects (about 36).
    first = array("q", (bisect_left(points, b << shift) for b in range(1 << bits)))
    first.append(len(points))
    owner = [owners[first[b]] if first[b] == first[b + 1] else None for b in range(1 << bits)]
    return first, owner, shift


def _make_lookup(points: list[int], owners: list[str], layout: Layout) -> Callable[[Key], str]:
    if not points:

        def lookup_empty(key: Key) -> str:
            raise EmptyPlacementError("the ring has no nodes")

        return lookup_empty
    # One extra owner at the end stands for the wrap-around, so no branch is needed.
    owners_wrapped = [*owners, owners[0]]
    if layout == "ketama":
        k_first, k_owner, k_shift = bucket_index(points, owners_wrapped, 32)

        def lookup_ketama(key: Key) -> str:
            h = ketama_hash(key)
            b = h >> k_shift
            return k_owner[b] or owners_wrapped[bisect_right(points, h, k_first[b], k_first[b + 1])]

        return lookup_ketama

    first, owner, shift = bucket_index(points, owners_wrapped, 64)

    def lookup(
        key: Key,
        _points: list[int] = points,
        _owners: list[str] = owners_wrapped,
        _first: array[int] = first,
        _owner: list[str | None] = owner,
        _shift: int = shift,
        _hash: Callable[[bytes], int] = xxhash.xxh3_64_intdigest,
        _bisect: Callable[[list[int], int, int, int], int] = bisect_right,
    ) -> str:
        # Defaults bind everything as fast locals: this is the hot path of every client.
        h = _hash(key.encode()) if type(key) is str else stable_hash(key)
        b = h >> _shift
        return _owner[b] or _owners[_bisect(_points, h, _first[b], _first[b + 1])]

    return lookup


class HashRing:
    """Consistent hashing with virtual nodes and weights.

    ``nodes`` is a list of names (weight 1 each) or a mapping of name to weight.
    ``layout="ketama"`` places points and hashes keys as libketama does (MD5, 32 bits,
    ``vnodes`` digests of four points scaled by weight), so shardwise can replace an
    existing ketama client without remapping keys; it matches for ``str`` and ``int`` keys.
    """

    __slots__ = (
        "_batch",
        "_layout",
        "_owners",
        "_points",
        "_vnodes",
        "_weights",
        "lookup",
        "space",
    )

    lookup: Callable[[Key], str]
    """``lookup(key)``: the node that owns ``key``.

    A closure over the current points rather than a method: a single-key lookup is the hot
    path of every client, and fast locals instead of attribute lookups make it about 15%
    faster; :func:`bucket_index` narrows the bisection (see ``docs/benchmarks.md``).
    """

    def __init__(
        self,
        nodes: Iterable[str] | Mapping[str, float] = (),
        vnodes: int | None = None,
        *,
        layout: Layout = "xxh3",
    ) -> None:
        if layout not in ("xxh3", "ketama"):
            raise InvalidPlacementArgumentError(f"unknown ring layout {layout!r}")
        if vnodes is None:
            vnodes = KETAMA_VNODES if layout == "ketama" else DEFAULT_VNODES
        if (
            isinstance(vnodes, bool)
            or not isinstance(vnodes, int)
            or not (1 <= vnodes <= MAX_VNODES)
        ):
            raise InvalidPlacementArgumentError(
                f"vnodes must be an int in [1, {MAX_VNODES}], got {vnodes!r}"
            )
        self._layout: Layout = layout
        self._vnodes = vnodes
        self.space: int = KETAMA_SPACE if layout == "ketama" else HASH_SPACE
        """Size of this ring's hash space: ``2**64``, or ``2**32`` for the ketama layout."""
        self._weights = normalize_nodes(nodes)
        self._points: list[int] = []
        self._owners: list[str] = []
        self._batch: SortedPointIndex | None = None
        self._rebuild()

    # --- construction ------------------------------------------------------------------

    def _point_count(self, weight: float) -> int:
        if self._layout == "ketama":
            total = sum(self._weights.values())
            digests = int(self._vnodes * len(self._weights) * weight // total)
            return max(1, digests)
        count = max(1, round(self._vnodes * weight))
        if count > MAX_POINTS_PER_NODE:
            raise InvalidPlacementArgumentError(
                f"{count} points for one node exceeds MAX_POINTS_PER_NODE={MAX_POINTS_PER_NODE}"
            )
        return count

    def _node_points(self, node: str) -> list[int]:
        count = self._point_count(self._weights[node])
        if self._layout == "ketama":
            return _ketama_points(node, count)
        return _xxh3_points(node, count)

    def _rebuild(self) -> None:
        pairs = [(p, node) for node in self._weights for p in self._node_points(node)]
        pairs.sort()
        self._points = [p for p, _ in pairs]
        self._owners = [node for _, node in pairs]
        self._batch = None
        self.lookup = _make_lookup(self._points, self._owners, self._layout)

    def copy(self) -> HashRing:
        """An independent ring with the same nodes, weights and layout."""
        return HashRing(dict(self._weights), self._vnodes, layout=self._layout)

    # --- membership --------------------------------------------------------------------

    @property
    def nodes(self) -> tuple[str, ...]:
        """The node names in sorted order; batch lookups return indices into this tuple."""
        return tuple(sorted(self._weights))

    @property
    def weights(self) -> dict[str, float]:
        return dict(self._weights)

    @property
    def vnodes(self) -> int:
        return self._vnodes

    @property
    def layout(self) -> Layout:
        return self._layout

    def __len__(self) -> int:
        return len(self._weights)

    def __contains__(self, node: object) -> bool:
        return node in self._weights

    def __iter__(self) -> Iterator[str]:
        return iter(self.nodes)

    def __repr__(self) -> str:
        return (
            f"HashRing({len(self._weights)} nodes, {len(self._points)} points, "
            f"vnodes={self._vnodes}, layout={self._layout!r})"
        )

    def add(self, node: str, weight: float = 1.0) -> list[Transfer[str]]:
        """Add ``node``; return the arcs that move to it (every source is an old node)."""
        name = check_node_name(node)
        if name in self._weights:
            raise DuplicateNodeError(f"node {name!r} is already in the ring")
        value = check_weight(name, weight)
        before = self.copy()
        self._weights[name] = value
        self._rebuild()
        return ring_transfers(before, self)

    def remove(self, node: str) -> list[Transfer[str]]:
        """Remove ``node``; return the arcs it owned and their new owners."""
        if node not in self._weights:
            raise UnknownNodeError(node)
        before = self.copy()
        del self._weights[node]
        self._rebuild()
        return ring_transfers(before, self)

    def set_weight(self, node: str, weight: float) -> list[Transfer[str]]:
        """Change ``node``'s weight; with the default layout only its own arcs change."""
        if node not in self._weights:
            raise UnknownNodeError(node)
        value = check_weight(node, weight)
        before = self.copy()
        self._weights[node] = value
        self._rebuild()
        return ring_transfers(before, self)

    # --- lookups -----------------------------------------------------------------------

    def hash_key(self, key: Key) -> int:
        """The position of ``key`` on this ring (xxh3-64, or ketama's 32-bit MD5)."""
        if self._layout == "ketama":
            return ketama_hash(key)
        return stable_hash(key)

    def _require_points(self) -> None:
        if not self._points:
            raise EmptyPlacementError("the ring has no nodes")

    def lookup_hash(self, h: int) -> str:
        """The node that owns hash value ``h`` (a position in ``[0, space)``)."""
        self._require_points()
        if not 0 <= h < self.space:
            raise InvalidPlacementArgumentError(f"hash {h} is outside [0, {self.space})")
        i = bisect_right(self._points, h)
        return self._owners[i if i < len(self._points) else 0]

    def _batch_index(self) -> SortedPointIndex:
        import numpy as np  # noqa: PLC0415 - numpy only for batch lookups

        from shardwise.placement.batch_index import SortedPointIndex  # noqa: PLC0415

        if self._batch is None:
            index = {node: i for i, node in enumerate(self.nodes)}
            points = np.array(self._points, dtype=np.uint64)
            owners = np.array([index[o] for o in self._owners], dtype=np.intp)
            self._batch = SortedPointIndex(points, owners, self.space.bit_length() - 1)
        return self._batch

    def lookup_batch(self, hashes: npt.ArrayLike) -> npt.NDArray[np.intp]:
        """Owners of many pre-computed hashes, as indices into :attr:`nodes`.

        Vectorized over the whole array (see :mod:`~shardwise.placement.batch_index`):
        tens of millions of lookups per second, where a Python loop manages a few million.
        """
        self._require_points()
        values = as_hash_array(hashes)
        if values.size and int(values.max()) >= self.space:
            raise InvalidPlacementArgumentError(f"a hash is outside [0, {self.space})")
        return self._batch_index().owners_of(values)

    def _distinct_from(self, start: int, n: int) -> list[str]:
        found: list[str] = []
        seen: set[str] = set()
        count = len(self._points)
        for step in range(count):
            owner = self._owners[(start + step) % count]
            if owner not in seen:
                seen.add(owner)
                found.append(owner)
                if len(found) == n:
                    break
        return found

    def preference_list(self, key: Key, n: int) -> list[str]:
        """The first ``n`` distinct nodes clockwise from ``key``: where its replicas live.

        The first is :meth:`lookup`'s answer. Adding a node inserts it into some lists
        without reordering the others; removing one closes its gap.
        """
        self._require_points()
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise InvalidPlacementArgumentError(f"n must be a positive int, got {n!r}")
        if n > len(self._weights):
            raise NotEnoughNodesError(f"asked for {n} distinct nodes, the ring has {len(self)}")
        i = bisect_right(self._points, self.hash_key(key))
        return self._distinct_from(i % len(self._points), n)

    # --- the shape of the ring ---------------------------------------------------------

    def arcs(self) -> Iterator[tuple[HashRange, int]]:
        """Every arc as ``(range, point index)``, in hash order, covering ``[0, space)``.

        The wrapping arc appears twice: ``[0, p_0)`` and ``[p_last, space)``, both owned by
        point 0. Empty arcs (equal points) are skipped.
        """
        self._require_points()
        previous = 0
        for i, point in enumerate(self._points):
            if point > previous:
                yield HashRange(previous, point), i
            previous = point
        if previous < self.space:
            yield HashRange(previous, self.space), 0

    def segments(self) -> Iterator[tuple[HashRange, str]]:
        """The ring as maximal ranges of one owner each, in hash order."""
        current: HashRange | None = None
        owner = ""
        for arc, i in self.arcs():
            node = self._owners[i]
            if current is not None and node == owner:
                current = HashRange(current.start, arc.end)
                continue
            if current is not None:
                yield current, owner
            current, owner = arc, node
        if current is not None:
            yield current, owner

    def owned_ranges(self, node: str) -> list[HashRange]:
        """The ranges of hash values ``node`` owns."""
        if node not in self._weights:
            raise UnknownNodeError(node)
        return [r for r, owner in self.segments() if owner == node]

    def shares(self) -> dict[str, float]:
        """The fraction of the hash space each node owns (they sum to 1)."""
        owned = dict.fromkeys(self._weights, 0)
        if self._points:
            for r, owner in self.segments():
                owned[owner] += r.size
        return {node: size / self.space for node, size in owned.items()}

    @property
    def points(self) -> list[tuple[int, str]]:
        """Every ring point with its owner, in hash order."""
        return list(zip(self._points, self._owners, strict=True))

    @property
    def point_positions(self) -> list[int]:
        return list(self._points)

    @property
    def point_owners(self) -> list[str]:
        return list(self._owners)


def ring_transfers(before: HashRing, after: HashRing) -> list[Transfer[str]]:
    """Exactly the ranges whose owner differs between two rings, with old and new owner."""
    if before.space != after.space:
        raise InvalidPlacementArgumentError("rings of different hash spaces cannot be compared")
    if len(before) == 0 or len(after) == 0:
        return []
    old = list(before.segments())
    new = list(after.segments())
    moves: list[Transfer[str]] = []
    i = j = 0
    start = 0
    while i < len(old) and j < len(new):
        end = min(old[i][0].end, new[j][0].end)
        if old[i][1] != new[j][1]:
            moves.append(Transfer(HashRange(start, end), old[i][1], new[j][1]))
        start = end
        if old[i][0].end == end:
            i += 1
        if new[j][0].end == end:
            j += 1
    return coalesce(moves)
