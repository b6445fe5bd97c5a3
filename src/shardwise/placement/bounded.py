"""Consistent hashing with bounded loads (Mirrokni, Thorup & Zadimoghaddam, SODA 2018).

A plain ring lets one node own a long arc and with it far more than the mean number of
keys. Here each node holds at most ``ceil(c * keys / nodes)`` keys: a key goes to the first
node clockwise from its hash that still has room. With ``c = 1.25`` no node carries more
than 125% of the mean (rounded up), and keys still mostly stay put when things change.

The structure is stateful, since where a key goes depends on the keys placed before it:
:meth:`BoundedLoadRing.assign` places a key, :meth:`BoundedLoadRing.release` removes one.
After a release the bound shrinks; keys on nodes now above it are moved on clockwise, and
the moves are returned so the caller can carry them out.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final

from shardwise.errors import (
    EmptyPlacementError,
    InvalidPlacementArgumentError,
    UnknownNodeError,
)
from shardwise.placement.hashing import Key, key_bytes, stable_hash
from shardwise.placement.ring import DEFAULT_VNODES, HashRing

DEFAULT_BALANCE: Final = 1.25
"""The paper's recommended ``c``: loads within 25% of the mean, few extra moves."""


@dataclass(frozen=True, slots=True)
class KeyMove:
    key: bytes
    source: str
    target: str


class BoundedLoadRing:
    """A ring of ``nodes`` whose loads never exceed ``ceil(balance * mean)``."""

    def __init__(
        self,
        nodes: Iterable[str] | Mapping[str, float],
        balance: float = DEFAULT_BALANCE,
        vnodes: int = DEFAULT_VNODES,
    ) -> None:
        if (
            isinstance(balance, bool)
            or not isinstance(balance, int | float)
            or not (math.isfinite(balance) and balance >= 1.0)
        ):
            raise InvalidPlacementArgumentError(f"balance must be a number >= 1, got {balance!r}")
        self._ring = HashRing(nodes, vnodes)
        if len(self._ring) == 0:
            raise EmptyPlacementError("a bounded-load ring needs at least one node")
        self._balance = float(balance)
        self._points = self._ring.point_positions
        self._owners = self._ring.point_owners
        self._loads: dict[str, int] = dict.fromkeys(self._ring.nodes, 0)
        self._owner_of: dict[bytes, str] = {}
        self._keys_of: dict[str, dict[bytes, int]] = {n: {} for n in self._ring.nodes}

    @property
    def balance(self) -> float:
        return self._balance

    @property
    def nodes(self) -> tuple[str, ...]:
        return self._ring.nodes

    def capacity(self, keys: int | None = None) -> int:
        """The most keys any node may hold when ``keys`` keys are placed (default: now)."""
        count = len(self._owner_of) if keys is None else keys
        return math.ceil(self._balance * count / len(self._loads))

    def loads(self) -> dict[str, int]:
        return dict(self._loads)

    def owner(self, key: Key) -> str:
        """Where an assigned key lives."""
        try:
            return self._owner_of[key_bytes(key)]
        except KeyError:
            raise UnknownNodeError(key) from None

    def __len__(self) -> int:
        return len(self._owner_of)

    def _place(self, key_hash: int, capacity: int) -> str:
        count = len(self._points)
        start = bisect_right(self._points, key_hash)
        for step in range(count):
            node = self._owners[(start + step) % count]
            if self._loads[node] < capacity:
                return node
        # Unreachable: capacity * nodes >= balance * keys > keys, so some node has room.
        raise AssertionError("bounded-load ring found no node with room")

    def _put(self, key: bytes, key_hash: int, node: str) -> None:
        self._owner_of[key] = node
        self._keys_of[node][key] = key_hash
        self._loads[node] += 1

    def _take(self, key: bytes, node: str) -> int:
        del self._owner_of[key]
        self._loads[node] -= 1
        return self._keys_of[node].pop(key)

    def assign(self, key: Key) -> str:
        """Place ``key`` (idempotent: an assigned key stays where it is)."""
        data = key_bytes(key)
        current = self._owner_of.get(data)
        if current is not None:
            return current
        key_hash = stable_hash(data)
        node = self._place(key_hash, self.capacity(len(self._owner_of) + 1))
        self._put(data, key_hash, node)
        return node

    def assign_many(self, keys: Iterable[Key]) -> list[str]:
        return [self.assign(k) for k in keys]

    def release(self, key: Key) -> list[KeyMove]:
        """Remove ``key``; return the keys moved to keep every node within the bound."""
        data = key_bytes(key)
        node = self._owner_of.get(data)
        if node is None:
            raise UnknownNodeError(key)
        self._take(data, node)
        return self._enforce_bound()

    def _enforce_bound(self) -> list[KeyMove]:
        capacity = self.capacity()
        moves: list[KeyMove] = []
        for node in self._ring.nodes:
            while self._loads[node] > capacity:
                # Move the key that sits last in hash order: a deterministic choice.
                victim = max(self._keys_of[node], key=lambda k: (self._keys_of[node][k], k))
                key_hash = self._take(victim, node)
                target = self._place(key_hash, capacity)
                self._put(victim, key_hash, target)
                moves.append(KeyMove(victim, node, target))
        return moves
