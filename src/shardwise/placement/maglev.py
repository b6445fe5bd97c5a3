"""Maglev hashing (Eisenbud et al., NSDI 2016): a lookup table filled by permutations.

Each node walks its own permutation of the table's slots (an offset and a skip derived
from its name) and the nodes take turns claiming their next free slot until the table is
full. Every node ends with ``M / N`` slots give or take one, so balance is near perfect,
and a lookup is one modulo and one array read: the fastest lookup here. The trade-off is
disruption: a membership change moves somewhat more than the ideal ``1/(N+1)`` of keys,
because turns shift. The table size must be prime (so every skip generates a full
permutation) and should be much larger than the node count (the paper uses ``M >= 100N``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Final

from shardwise.errors import (
    DuplicateNodeError,
    EmptyPlacementError,
    InvalidPlacementArgumentError,
    UnknownNodeError,
)
from shardwise.placement.hashing import Key, as_hash_array, mix64, stable_hash
from shardwise.placement.types import check_node_name

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

DEFAULT_TABLE_SIZE: Final = 65537
MAX_TABLE_SIZE: Final = 1 << 24
"""A bound on the table (16M slots, 128 MiB of int64): far past any sensible node count."""

_NODE_SEED: Final = 0x6D61676C65763031


def is_prime(n: int) -> bool:
    """Deterministic trial division; table sizes are at most ``MAX_TABLE_SIZE``."""
    if n < 2:
        return False
    if n % 2 == 0:
        return n == 2
    f = 3
    while f * f <= n:
        if n % f == 0:
            return False
        f += 2
    return True


def build_table(nodes: tuple[str, ...], size: int) -> list[int]:
    """The Maglev lookup table: slot -> index into ``nodes``."""
    # Offset and skip come from one hash and its mix64 image, not from two seeds: seeds
    # that differ by little give correlated xxh3 outputs on short names.
    hashes = [stable_hash(n, _NODE_SEED) for n in nodes]
    offsets = [h % size for h in hashes]
    skips = [mix64(h) % (size - 1) + 1 for h in hashes]
    table = [-1] * size
    position = [0] * len(nodes)
    filled = 0
    while True:
        for i in range(len(nodes)):
            offset, skip, j = offsets[i], skips[i], position[i]
            slot = (offset + j * skip) % size
            while table[slot] >= 0:
                j += 1
                slot = (offset + j * skip) % size
            table[slot] = i
            position[i] = j + 1
            filled += 1
            if filled == size:
                return table


class Maglev:
    """Maglev hashing over ``nodes`` with a prime table of ``table_size`` slots."""

    def __init__(self, nodes: Iterable[str] = (), table_size: int = DEFAULT_TABLE_SIZE) -> None:
        if (
            isinstance(table_size, bool)
            or not isinstance(table_size, int)
            or not (3 <= table_size <= MAX_TABLE_SIZE)
            or not is_prime(table_size)
        ):
            raise InvalidPlacementArgumentError(
                f"table_size must be a prime in [3, {MAX_TABLE_SIZE}], got {table_size!r}"
            )
        self._size = table_size
        self._nodes: list[str] = []
        for node in nodes:
            name = check_node_name(node)
            if name in self._nodes:
                raise DuplicateNodeError(f"node {name!r} is listed twice")
            self._nodes.append(name)
        self._rebuild()

    def _rebuild(self) -> None:
        import numpy as np  # noqa: PLC0415 - numpy only for batch lookups

        if len(self._nodes) > self._size:
            raise InvalidPlacementArgumentError(
                f"{len(self._nodes)} nodes need a table larger than {self._size} slots"
            )
        # Nodes take turns in sorted order, so the table never depends on insertion order.
        self._names: tuple[str, ...] = tuple(sorted(self._nodes))
        self._table = build_table(self._names, self._size) if self._names else []
        self._np_table = np.array(self._table, dtype=np.intp)

    @property
    def nodes(self) -> tuple[str, ...]:
        """Node names in sorted order; batch lookups return indices into this tuple."""
        return self._names

    @property
    def table_size(self) -> int:
        return self._size

    def __len__(self) -> int:
        return len(self._names)

    def __contains__(self, node: object) -> bool:
        return node in self._nodes

    def add(self, node: str) -> None:
        name = check_node_name(node)
        if name in self._nodes:
            raise DuplicateNodeError(f"node {name!r} is already present")
        self._nodes.append(name)
        self._rebuild()

    def remove(self, node: str) -> None:
        if node not in self._nodes:
            raise UnknownNodeError(node)
        self._nodes.remove(node)
        self._rebuild()

    def slot_counts(self) -> dict[str, int]:
        """How many table slots each node holds (its share is ``count / table_size``)."""
        import numpy as np  # noqa: PLC0415 - numpy only for batch lookups

        counts = np.bincount(self._np_table, minlength=len(self._names))
        return {name: int(c) for name, c in zip(self._names, counts, strict=True)}

    def lookup(self, key: Key) -> str:
        if not self._names:
            raise EmptyPlacementError("maglev has no nodes")
        return self._names[self._table[stable_hash(key) % self._size]]

    def lookup_batch(self, hashes: npt.ArrayLike) -> npt.NDArray[np.intp]:
        """Owners of pre-computed key hashes, as indices into :attr:`nodes`."""
        import numpy as np  # noqa: PLC0415 - numpy only for batch lookups

        if not self._names:
            raise EmptyPlacementError("maglev has no nodes")
        slots = as_hash_array(hashes) % np.uint64(self._size)
        owners: npt.NDArray[np.intp] = self._np_table[slots]
        return owners
