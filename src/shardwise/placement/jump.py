"""Jump consistent hash (Lamping & Veach, 2014): no memory, perfect balance, minimal moves.

A key's bucket in ``[0, n)`` is computed from its hash alone, in O(log n) steps. Growing
from ``n`` to ``n + 1`` buckets moves exactly the keys that land in the new bucket. The
catch is that buckets are numbered: only the *last* bucket can be removed, so jump hash
fits shard numbering (data replicated elsewhere) rather than arbitrary node failure.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Final

from shardwise.errors import (
    DuplicateNodeError,
    EmptyPlacementError,
    InvalidPlacementArgumentError,
    UnknownNodeError,
    UnsupportedPlacementOperationError,
)
from shardwise.placement.hashing import Key, as_hash_array, stable_hash
from shardwise.placement.types import check_node_name

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

_LCG_MULTIPLIER: Final = 2862933555777941757
_MASK64: Final = (1 << 64) - 1
_TWO_POW_31: Final = float(1 << 31)

MAX_BUCKETS: Final = 1 << 31
"""The algorithm's float arithmetic is exact for bucket counts below ``2**31``."""


def jump_hash(key_hash: int, buckets: int) -> int:
    """The bucket in ``[0, buckets)`` of a 64-bit key hash."""
    _check_buckets(buckets)
    key = key_hash & _MASK64
    bucket, candidate = -1, 0
    while candidate < buckets:
        bucket = candidate
        key = (key * _LCG_MULTIPLIER + 1) & _MASK64
        candidate = int((bucket + 1) * (_TWO_POW_31 / float((key >> 33) + 1)))
    return bucket


BATCH_CHUNK: Final = 8192
"""Keys per pass of the batch path: small enough that a chunk's arrays stay in cache."""


def _check_buckets(buckets: int) -> None:
    if (
        isinstance(buckets, bool)
        or not isinstance(buckets, int)
        or not (1 <= buckets <= MAX_BUCKETS)
    ):
        raise InvalidPlacementArgumentError(f"buckets must be in [1, {MAX_BUCKETS}]")


def _jump_chunk(hashes: npt.NDArray[np.uint64], buckets: int) -> npt.NDArray[np.int64]:
    import numpy as np  # noqa: PLC0415 - numpy only for batch lookups

    multiplier, one, shift = np.uint64(_LCG_MULTIPLIER), np.uint64(1), np.uint64(33)
    # The first step starts every key from bucket 0, so it runs dense, without indexing.
    keys = hashes * multiplier + one
    first = (_TWO_POW_31 / ((keys >> shift).astype(np.float64) + 1.0)).astype(np.int64)
    inside = first < buckets
    bucket = np.where(inside, first, 0)
    active = np.flatnonzero(inside)
    # Then only the keys still inside [0, buckets) advance; the set shrinks every pass.
    while active.size:
        k = keys[active] * multiplier + one
        keys[active] = k
        step = _TWO_POW_31 / ((k >> shift) + one).astype(np.float64)
        nxt = ((bucket[active] + 1) * step).astype(np.int64)
        inside = nxt < buckets
        bucket[active[inside]] = nxt[inside]
        active = active[inside]
    return bucket


def jump_hash_batch(hashes: npt.ArrayLike, buckets: int) -> npt.NDArray[np.int64]:
    """:func:`jump_hash` over an array of 64-bit key hashes, in cache-sized chunks."""
    import numpy as np  # noqa: PLC0415 - numpy only for batch lookups

    _check_buckets(buckets)
    keys = as_hash_array(hashes).ravel()
    out = np.empty(len(keys), dtype=np.int64)
    for lo in range(0, len(keys), BATCH_CHUNK):
        out[lo : lo + BATCH_CHUNK] = _jump_chunk(keys[lo : lo + BATCH_CHUNK], buckets)
    return out


class JumpHash:
    """Jump hash over an ordered list of nodes: bucket ``i`` is ``nodes[i]``.

    :meth:`add` appends a node (moving only the keys it takes); :meth:`remove` accepts only
    the last node, and says so for any other (jump hash cannot remove a middle bucket).
    """

    def __init__(self, nodes: Iterable[str] = ()) -> None:
        self._nodes: list[str] = []
        for node in nodes:
            self.add(node)

    @property
    def nodes(self) -> tuple[str, ...]:
        """Nodes in bucket order; batch lookups return indices into this tuple."""
        return tuple(self._nodes)

    def __len__(self) -> int:
        return len(self._nodes)

    def __contains__(self, node: object) -> bool:
        return node in self._nodes

    def add(self, node: str) -> None:
        name = check_node_name(node)
        if name in self._nodes:
            raise DuplicateNodeError(f"node {name!r} is already present")
        self._nodes.append(name)

    def remove(self, node: str) -> None:
        if node not in self._nodes:
            raise UnknownNodeError(node)
        if node != self._nodes[-1]:
            raise UnsupportedPlacementOperationError(
                f"jump hash can only remove its last bucket ({self._nodes[-1]!r}), "
                f"not {node!r}; use a ring or rendezvous for arbitrary removals"
            )
        self._nodes.pop()

    def lookup(self, key: Key) -> str:
        if not self._nodes:
            raise EmptyPlacementError("jump hash has no nodes")
        return self._nodes[jump_hash(stable_hash(key), len(self._nodes))]

    def lookup_batch(self, hashes: npt.ArrayLike) -> npt.NDArray[np.int64]:
        """Buckets (indices into :attr:`nodes`) of pre-computed key hashes."""
        if not self._nodes:
            raise EmptyPlacementError("jump hash has no nodes")
        return jump_hash_batch(hashes, len(self._nodes))
