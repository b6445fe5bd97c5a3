"""Small value types shared by the placement structures."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Generic, TypeVar

from shardwise.errors import (
    DuplicateNodeError,
    InvalidNodeError,
    InvalidWeightError,
)

N = TypeVar("N")


@dataclass(frozen=True, slots=True, order=True)
class HashRange:
    """The half-open interval ``[start, end)`` of hash values; it never wraps around.

    A wrapping arc of a ring is reported as two ranges, one ending at the top of the hash
    space and one starting at 0, so that "is this hash in the range" is one comparison.
    """

    start: int
    end: int

    def __contains__(self, value: object) -> bool:
        return isinstance(value, int) and self.start <= value < self.end

    def __len__(self) -> int:
        return self.end - self.start

    @property
    def size(self) -> int:
        """Number of hash values in the range (``len()`` overflows past ``sys.maxsize``)."""
        return self.end - self.start


@dataclass(frozen=True, slots=True)
class Transfer(Generic[N]):
    """Keys whose hash is in ``range`` move from ``source`` to ``target``."""

    range: HashRange
    source: N
    target: N


def coalesce(transfers: Iterable[Transfer[N]]) -> list[Transfer[N]]:
    """Merge transfers of adjacent ranges that have the same source and target."""
    merged: list[Transfer[N]] = []
    for t in transfers:
        if t.range.size == 0:
            continue
        if merged:
            last = merged[-1]
            if (
                last.range.end == t.range.start
                and last.source == t.source
                and last.target == t.target
            ):
                merged[-1] = Transfer(HashRange(last.range.start, t.range.end), t.source, t.target)
                continue
        merged.append(t)
    return merged


def check_node_name(node: object) -> str:
    """A node is named by a non-empty ``str``; anything else is refused, not coerced."""
    if not isinstance(node, str) or not node:
        raise InvalidNodeError(f"a node name must be a non-empty str, got {node!r}")
    return node


def check_weight(node: str, weight: object) -> float:
    """Weights are positive finite numbers (``bool`` is refused: it is never meant)."""
    if isinstance(weight, bool) or not isinstance(weight, int | float):
        raise InvalidWeightError(f"weight of node {node!r} must be a number, got {weight!r}")
    value = float(weight)
    if not math.isfinite(value) or value <= 0:
        raise InvalidWeightError(f"weight of node {node!r} must be positive, got {weight!r}")
    return value


def normalize_nodes(nodes: Iterable[str] | Mapping[str, float]) -> dict[str, float]:
    """Turn a list of names or a name -> weight mapping into a checked name -> weight dict."""
    if isinstance(nodes, str):
        raise InvalidNodeError("nodes must be a list or mapping of names, not one str")
    weights: dict[str, float] = {}
    if isinstance(nodes, Mapping):
        for node, weight in nodes.items():
            weights[check_node_name(node)] = check_weight(node, weight)
        return weights
    for node in nodes:
        name = check_node_name(node)
        if name in weights:
            raise DuplicateNodeError(f"node {name!r} is listed twice")
        weights[name] = 1.0
    return weights
