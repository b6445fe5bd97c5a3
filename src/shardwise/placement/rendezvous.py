"""Rendezvous hashing (highest random weight), weighted with the logarithmic method.

Every node scores every key; the highest score wins. A node's join takes from each other
node exactly the keys it now outscores, and a leave hands each of its keys to that key's
runner-up, so moves are minimal without any virtual nodes; the price is O(nodes) work per
lookup, which suits tens to hundreds of nodes.

Scores: ``u`` is a uniform number in ``(0, 1)`` drawn from ``mix64(key_hash ^ node_hash)``
and ``score = -weight / ln(u)`` (Schindelhauer & Schomaker's logarithmic method), which
gives each node a share of keys proportional to its weight. When every weight is equal we
compare the 64-bit mixed values themselves, which orders nodes identically to the formula
and is exact. Ties go to the node that sorts first, in both the single and batch paths.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Final

from shardwise.errors import (
    DuplicateNodeError,
    EmptyPlacementError,
    InvalidPlacementArgumentError,
    NotEnoughNodesError,
    UnknownNodeError,
)
from shardwise.placement.hashing import (
    Key,
    as_hash_array,
    mix64,
    mix64_array,
    stable_hash,
)
from shardwise.placement.types import check_node_name, check_weight, normalize_nodes

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

_NODE_SEED: Final = 0x72656E64657A766F
"""Seed for node hashes, so a node's hash is not the hash of the same-named key."""

_TWO_POW_53: Final = float(1 << 53)

BATCH_CHUNK_CELLS: Final = 1 << 22
"""Batch lookups score keys in chunks of at most this many (key, node) cells, bounding the
temporary arrays to a few tens of MiB whatever the batch size."""


def _unit(mixed: int) -> float:
    # 53 high bits, centred in their cell: strictly inside (0, 1), so ln(u) < 0 always.
    return ((mixed >> 11) + 0.5) / _TWO_POW_53


VECTOR_THRESHOLD: Final = 24
"""Above this many nodes a single lookup scores them with numpy: one vector call beats a
Python loop over the nodes from about two dozen on."""


class Rendezvous:
    """Weighted rendezvous hashing over ``nodes`` (a list of names or name -> weight)."""

    def __init__(self, nodes: Iterable[str] | Mapping[str, float] = ()) -> None:
        self._weights = normalize_nodes(nodes)
        self._refresh()

    def _refresh(self) -> None:
        self._names: tuple[str, ...] = tuple(sorted(self._weights))
        self._node_hashes = [stable_hash(n, _NODE_SEED) for n in self._names]
        self._node_weights = [self._weights[n] for n in self._names]
        self._uniform = len(set(self._node_weights)) <= 1

    @property
    def nodes(self) -> tuple[str, ...]:
        """Node names in sorted order; batch lookups return indices into this tuple."""
        return self._names

    @property
    def weights(self) -> dict[str, float]:
        return dict(self._weights)

    def __len__(self) -> int:
        return len(self._names)

    def __contains__(self, node: object) -> bool:
        return node in self._weights

    def add(self, node: str, weight: float = 1.0) -> None:
        name = check_node_name(node)
        if name in self._weights:
            raise DuplicateNodeError(f"node {name!r} is already present")
        self._weights[name] = check_weight(name, weight)
        self._refresh()

    def remove(self, node: str) -> None:
        if node not in self._weights:
            raise UnknownNodeError(node)
        del self._weights[node]
        self._refresh()

    def _scores(self, key_hash: int) -> list[float] | list[int]:
        mixed = [mix64(key_hash ^ nh) for nh in self._node_hashes]
        if self._uniform:
            return mixed
        return [-w / math.log(_unit(m)) for w, m in zip(self._node_weights, mixed, strict=True)]

    def lookup(self, key: Key) -> str:
        """The node with the highest score for ``key``."""
        return self.lookup_hash(stable_hash(key))

    def lookup_hash(self, key_hash: int) -> str:
        import numpy as np  # noqa: PLC0415 - numpy only for batch lookups

        if not self._names:
            raise EmptyPlacementError("rendezvous has no nodes")
        if len(self._names) > VECTOR_THRESHOLD:
            return self._names[int(self.lookup_batch(np.array([key_hash], dtype=np.uint64))[0])]
        scores = self._scores(key_hash)
        best = 0
        for i in range(1, len(scores)):
            if scores[i] > scores[best]:
                best = i
        return self._names[best]

    def top(self, key: Key, n: int) -> list[str]:
        """The ``n`` highest-scoring nodes for ``key``, best first: where its replicas go."""
        if not self._names:
            raise EmptyPlacementError("rendezvous has no nodes")
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise InvalidPlacementArgumentError(f"n must be a positive int, got {n!r}")
        if n > len(self._names):
            raise NotEnoughNodesError(f"asked for {n} distinct nodes, there are {len(self)}")
        scores = self._scores(stable_hash(key))
        order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
        return [self._names[i] for i in order[:n]]

    def lookup_batch(self, hashes: npt.ArrayLike) -> npt.NDArray[np.intp]:
        """Owners of pre-computed key hashes, as indices into :attr:`nodes`."""
        import numpy as np  # noqa: PLC0415 - numpy only for batch lookups

        if not self._names:
            raise EmptyPlacementError("rendezvous has no nodes")
        keys = as_hash_array(hashes).ravel()
        node_hashes = np.array(self._node_hashes, dtype=np.uint64)
        node_weights = np.array(self._node_weights, dtype=np.float64)
        out = np.empty(len(keys), dtype=np.intp)
        chunk = max(1, BATCH_CHUNK_CELLS // len(self._names))
        for lo in range(0, len(keys), chunk):
            block = keys[lo : lo + chunk]
            mixed = mix64_array(block[:, None] ^ node_hashes[None, :])
            if self._uniform:
                out[lo : lo + chunk] = np.argmax(mixed, axis=1)
                continue
            unit = ((mixed >> np.uint64(11)).astype(np.float64) + 0.5) / _TWO_POW_53
            out[lo : lo + chunk] = np.argmax(-node_weights / np.log(unit), axis=1)
        return out
