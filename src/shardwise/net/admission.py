"""Who may hold a handshake slot: the bookkeeping of inbound connections not yet
authenticated, and the choice of which one makes room for a newcomer.

Refusing new connections when the slots are full hands them to whoever opens sockets
fastest: an attacker without the secret who keeps 64 silent connections open (and
reopens each as soon as it is cut) would lock every honest dialer out. So a newcomer is
always taken, and an older unauthenticated connection is evicted instead. An honest
dialer writes its hello the moment it connects and finishes in one round trip; silent
connections are evicted first, so the honest one survives a flood of them. Sans-IO: the
caller closes the connections named as victims.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

K = TypeVar("K")


@dataclass(slots=True)
class _Slot:
    source: str
    known: bool
    """The source address is a known peer's host: evicted only when no other is left."""
    heard: bool = False
    """Its first frame (the hello) arrived: it is talking, so it goes after silent ones."""


class HandshakeSlots(Generic[K]):
    """At most ``capacity`` connections in their handshake, at most ``per_source`` from
    one source address. Entries are kept in arrival order (oldest first)."""

    def __init__(self, capacity: int, per_source: int) -> None:
        if capacity < 1 or per_source < 1:
            raise ValueError("capacity and per_source must be positive")
        self.capacity = capacity
        self.per_source = per_source
        self._slots: dict[K, _Slot] = {}
        self._per_source: Counter[str] = Counter()

    def __len__(self) -> int:
        return len(self._slots)

    def __contains__(self, key: object) -> bool:
        return key in self._slots

    def from_source(self, source: str) -> int:
        return self._per_source[source]

    def admit(
        self,
        key: K,
        source: str,
        *,
        known: bool = False,
        spoke: Callable[[K], bool] | None = None,
        shared: bool = False,
    ) -> list[K]:
        """Take ``key``'s slot; return the connections evicted to make room (already
        released here: the caller closes them). ``spoke(k)`` tells whether bytes from
        ``k`` arrived that were not read yet: its hello may be waiting to be read, so it
        counts as talking. A ``shared`` source (loopback: every local process) has no
        share of its own, only the global slots."""
        if key in self._slots:
            raise ValueError("already holds a slot")
        victims: list[K] = []
        while not shared and self._per_source[source] >= self.per_source:
            victims.append(self._evict(self._pick(lambda slot: slot.source == source, spoke)))
        while len(self._slots) >= self.capacity:
            victims.append(self._evict(self._pick(lambda slot: True, spoke)))
        self._slots[key] = _Slot(source, known)
        self._per_source[source] += 1
        return victims

    def heard(self, key: K) -> None:
        """``key``'s first frame arrived."""
        slot = self._slots.get(key)
        if slot is not None:
            slot.heard = True

    def release(self, key: K) -> bool:
        """``key`` finished its handshake or ended; whether it held a slot."""
        slot = self._slots.pop(key, None)
        if slot is None:
            return False
        self._per_source[slot.source] -= 1
        if not self._per_source[slot.source]:
            del self._per_source[slot.source]
        return True

    def _pick(self, eligible: Callable[[_Slot], bool], spoke: Callable[[K], bool] | None) -> K:
        """The victim among ``eligible`` slots: not a known peer's address if possible,
        then from the most crowded address, then silent before talking, then oldest
        (arrival order breaks the ties: ``min`` keeps the first of equals)."""
        best: K | None = None
        best_rank: tuple[bool, int, bool] | None = None
        for key, slot in self._slots.items():
            if not eligible(slot):
                continue
            heard = slot.heard or (spoke is not None and spoke(key))
            rank = (slot.known, -self._per_source[slot.source], heard)
            if best_rank is None or rank < best_rank:
                best, best_rank = key, rank
        assert best is not None, "an eligible slot exists whenever one must be evicted"
        return best

    def _evict(self, key: K) -> K:
        self.release(key)
        return key
