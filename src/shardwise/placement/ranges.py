"""Range partitioning: the hash space cut into contiguous ranges, or keys by split points.

:class:`HashRangePartition` is shardwise's default sharding (as in Citus and Vitess): the
hash space ``[0, 2**64)`` cut into ranges, evenly at first. An even split is perfectly
balanced without virtual nodes, and splitting one range later moves only that range's
keys (half of them, to the new range); merging two neighbours moves one of them.

:class:`KeyRangePartition` orders the keys themselves (as Bigtable, HBase and
CockroachDB do) by split points, so a scan over a key range touches few partitions; the
price is that a skewed key distribution makes skewed partitions, fixed by splitting.

Both are immutable: ``split`` and ``merge`` return a new partition and the transfer they
cause, so a controller can keep every past version.
"""

from __future__ import annotations

import itertools
from bisect import bisect_left, bisect_right
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from shardwise.errors import (
    InvalidPlacementArgumentError,
    UnsupportedKeyTypeError,
)
from shardwise.placement.hashing import HASH_SPACE, Key, as_hash_array, key_bytes, stable_hash
from shardwise.placement.types import HashRange

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

MAX_RANGES: Final = 1 << 20
"""A bound on partitions per keyspace: a million ranges is far beyond any real cluster."""


def even_starts(count: int) -> list[int]:
    """Range starts of an even split: range ``i`` is ``[ceil(i*2**64/count), ...)``.

    With these starts a hash's range is also ``(h * count) >> 64``, which the even case
    uses as its fast path.
    """
    if isinstance(count, bool) or not isinstance(count, int) or not (1 <= count <= MAX_RANGES):
        raise InvalidPlacementArgumentError(f"range count must be in [1, {MAX_RANGES}]")
    return [-((-i * HASH_SPACE) // count) for i in range(count)]


@dataclass(frozen=True, slots=True)
class RangeSplit:
    """Result of a split or merge: the new partition and the hash range that changed hands.

    For a split, the upper part of range ``index`` becomes range ``index + 1`` (later ranges
    shift up by one). For a merge, range ``index + 1`` joins range ``index``.
    """

    partition: HashRangePartition
    index: int
    moved: HashRange


class HashRangePartition:
    """Contiguous ranges of the 64-bit hash space, given by their start points."""

    __slots__ = ("_even", "_np_starts", "_starts")

    def __init__(self, starts: Sequence[int]) -> None:
        import numpy as np  # noqa: PLC0415 - numpy only for batch lookups

        values = list(starts)
        if not values or values[0] != 0:
            raise InvalidPlacementArgumentError("the first range must start at 0")
        if len(values) > MAX_RANGES:
            raise InvalidPlacementArgumentError(f"more than MAX_RANGES={MAX_RANGES} ranges")
        for a, b in itertools.pairwise(values):
            if not (isinstance(b, int) and a < b < HASH_SPACE):
                raise InvalidPlacementArgumentError(
                    "range starts must be strictly increasing ints below 2**64"
                )
        self._starts = values
        self._even = values == even_starts(len(values))
        self._np_starts = np.array(values, dtype=np.uint64)

    @classmethod
    def even(cls, count: int) -> HashRangePartition:
        """``count`` ranges of (almost exactly) equal size."""
        return cls(even_starts(count))

    @property
    def starts(self) -> list[int]:
        return list(self._starts)

    @property
    def is_even(self) -> bool:
        return self._even

    def __len__(self) -> int:
        return len(self._starts)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, HashRangePartition) and self._starts == other._starts

    def __hash__(self) -> int:
        # For sets and dict keys only, never placement; int hashes are not salted anyway.
        return hash(tuple(self._starts))

    def __repr__(self) -> str:
        kind = "even" if self._even else "uneven"
        return f"HashRangePartition({len(self)} ranges, {kind})"

    def range(self, index: int) -> HashRange:
        """The hash range of partition ``index``."""
        if not 0 <= index < len(self._starts):
            raise InvalidPlacementArgumentError(f"no range {index}; there are {len(self)}")
        end = self._starts[index + 1] if index + 1 < len(self._starts) else HASH_SPACE
        return HashRange(self._starts[index], end)

    def ranges(self) -> list[HashRange]:
        return [self.range(i) for i in range(len(self._starts))]

    def index_of_hash(self, h: int) -> int:
        if not 0 <= h < HASH_SPACE:
            raise InvalidPlacementArgumentError(f"hash {h} is outside [0, 2**64)")
        if self._even:
            return (h * len(self._starts)) >> 64
        return bisect_right(self._starts, h) - 1

    def lookup(self, key: Key) -> int:
        """The index of the range that holds ``key``."""
        return self.index_of_hash(stable_hash(key))

    def lookup_batch(self, hashes: npt.ArrayLike) -> npt.NDArray[np.intp]:
        import numpy as np  # noqa: PLC0415 - numpy only for batch lookups

        positions = np.searchsorted(self._np_starts, as_hash_array(hashes), side="right")
        return positions - 1

    def split(self, index: int, at: int | None = None) -> RangeSplit:
        """Split range ``index`` at hash ``at`` (default: its midpoint)."""
        r = self.range(index)
        point = r.start + r.size // 2 if at is None else at
        if not r.start < point < r.end:
            raise InvalidPlacementArgumentError(
                f"split point must lie strictly inside range {index} [{r.start}, {r.end})"
            )
        starts = [*self._starts[: index + 1], point, *self._starts[index + 1 :]]
        return RangeSplit(HashRangePartition(starts), index, HashRange(point, r.end))

    def merge(self, index: int) -> RangeSplit:
        """Merge range ``index + 1`` into range ``index``."""
        if not 0 <= index < len(self._starts) - 1:
            raise InvalidPlacementArgumentError(f"range {index} has no right neighbour to merge")
        moved = self.range(index + 1)
        starts = self._starts[: index + 1] + self._starts[index + 2 :]
        return RangeSplit(HashRangePartition(starts), index, moved)


def _split_kind(value: object) -> type:
    if isinstance(value, bool):
        raise UnsupportedKeyTypeError("bool is not a key")
    if isinstance(value, int):
        return int
    if isinstance(value, str | bytes | bytearray | memoryview):
        return bytes
    raise UnsupportedKeyTypeError(f"split points must be str, bytes or int, not {value!r}")


class KeyRangePartition:
    """Keys in order, cut at split points: partition ``i`` holds ``split[i-1] <= key < split[i]``.

    ``str`` and ``bytes`` keys compare by their UTF-8 bytes (the order a byte-oriented store
    uses); ``int`` keys by value. The split points fix which of the two a partition takes;
    a key of the other kind is refused rather than ordered arbitrarily.
    """

    __slots__ = ("_kind", "_splits")

    def __init__(self, split_points: Sequence[Key]) -> None:
        if len(split_points) + 1 > MAX_RANGES:
            raise InvalidPlacementArgumentError(f"more than MAX_RANGES={MAX_RANGES} ranges")
        kinds = {_split_kind(p) for p in split_points}
        if len(kinds) > 1:
            raise UnsupportedKeyTypeError("split points mix int and string keys")
        self._kind: type | None = kinds.pop() if kinds else None
        splits: list[Any] = [self._canonical(p) for p in split_points]
        if any(a >= b for a, b in itertools.pairwise(splits)):
            raise InvalidPlacementArgumentError("split points must be strictly increasing")
        # All ints or all bytes (checked above); ``Any`` because mypy cannot express that.
        self._splits: list[Any] = splits

    def _canonical(self, key: Key) -> Any:
        kind = _split_kind(key)
        if self._kind is not None and kind is not self._kind:
            expected = "int" if self._kind is int else "str/bytes"
            raise UnsupportedKeyTypeError(f"this partition orders {expected} keys, got {key!r}")
        return key if kind is int else key_bytes(key)

    def __len__(self) -> int:
        return len(self._splits) + 1

    @property
    def split_points(self) -> list[int] | list[bytes]:
        return list(self._splits)

    def lookup(self, key: Key) -> int:
        """The index of the partition that holds ``key``."""
        return bisect_right(self._splits, self._canonical(key))

    def partitions_for_range(self, low: Key | None, high: Key | None) -> range:
        """Partitions that may hold keys in ``[low, high)``: what a range scan must visit."""
        first = 0 if low is None else self.lookup(low)
        if high is None:
            return range(first, len(self))
        # Partition i covers [split[i-1], split[i]); it holds a key below the exclusive
        # ``high`` exactly when its lower bound is below ``high``.
        upper = self._canonical(high)
        lower: Any = None if low is None else self._canonical(low)
        if lower is not None and upper <= lower:
            return range(first, first)
        last = bisect_left(self._splits, upper)
        return range(first, last + 1)
