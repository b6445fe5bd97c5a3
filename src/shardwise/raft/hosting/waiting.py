"""Futures the Raft host resolves later: when an entry is applied, when the applied
index reaches a read's index, or when a clock deadline passes.

The heaps are min-heaps of futures keyed by a number. A future resolved by other means
(its operation finished, or its caller gave up) is not searched for and removed: it is
skipped when its key comes up, and the heap is rebuilt without finished futures whenever
it grows past a bound, so its size stays proportional to the operations really in flight.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from shardwise.errors import ProposalDroppedError, RaftTimeoutError

_Item = tuple[float, int, "asyncio.Future[Any]", str]


class FutureHeap:
    """Futures keyed by a number (a deadline, or a log index), smallest first."""

    def __init__(self, prune_at: int) -> None:
        if prune_at < 1:
            raise ValueError("prune_at must be positive")
        self._heap: list[_Item] = []
        self._order = itertools.count()  # ties pop in push order; futures never compared
        self._prune_at = prune_at

    def __len__(self) -> int:
        return len(self._heap)

    def push(self, key: float, future: asyncio.Future[Any], label: str = "") -> None:
        if len(self._heap) >= self._prune_at:
            self._heap = [item for item in self._heap if not item[2].done()]
            heapq.heapify(self._heap)
        heapq.heappush(self._heap, (key, next(self._order), future, label))

    def pop_through(self, key: float) -> list[tuple[asyncio.Future[Any], str]]:
        """Remove every entry keyed at or below ``key``; return those still unresolved."""
        due: list[tuple[asyncio.Future[Any], str]] = []
        while self._heap and self._heap[0][0] <= key:
            _, _, future, label = heapq.heappop(self._heap)
            if not future.done():
                due.append((future, label))
        return due

    def drain(self) -> list[asyncio.Future[Any]]:
        """Remove everything; return the unresolved futures."""
        pending = [item[2] for item in self._heap if not item[2].done()]
        self._heap.clear()
        return pending


class Deadlines:
    """Fails each future with :class:`RaftTimeoutError` when the clock passes its deadline."""

    def __init__(self, prune_at: int) -> None:
        self._heap = FutureHeap(prune_at)

    def __len__(self) -> int:
        return len(self._heap)

    def add(self, deadline: float, future: asyncio.Future[Any], what: str) -> None:
        self._heap.push(deadline, future, what)

    def expire(self, now: float) -> None:
        for future, what in self._heap.pop_through(now):
            future.set_exception(RaftTimeoutError(f"{what} timed out"))

    def clear(self) -> None:
        self._heap.drain()  # the futures themselves are failed by their owners' tables


@dataclass(slots=True)
class _Proposal:
    term: int
    future: asyncio.Future[bytes]


class Proposals:
    """Proposals waiting for their entries, by log index, with the term each was made in.

    The term tells success from loss: when the entry at an index is applied with the
    proposal's term it is ours; with another term, a later leader overwrote ours.
    """

    def __init__(self, limit: int) -> None:
        self._by_index: dict[int, _Proposal] = {}
        self._limit = limit

    def __len__(self) -> int:
        return len(self._by_index)

    def check_room(self) -> None:
        """Refuse a new proposal past the limit (back-pressure, not unbounded memory)."""
        if len(self._by_index) >= self._limit:
            # Callers that timed out leave their entries behind until the log passes them.
            for index in [i for i, p in self._by_index.items() if p.future.done()]:
                del self._by_index[index]
        if len(self._by_index) >= self._limit:
            raise ProposalDroppedError(f"{self._limit} proposals pending: overloaded")

    def add(self, index: int, term: int, future: asyncio.Future[bytes]) -> None:
        previous = self._by_index.get(index)
        if previous is not None:
            # The core appends only at its last index + 1: the old entry here was cut.
            fail(previous.future, ProposalDroppedError(f"entry {index} was overwritten"))
        self._by_index[index] = _Proposal(term, future)

    def settle(self, index: int, term: int, result: bytes) -> None:
        """The entry at ``index``, of ``term``, was applied with ``result``."""
        proposal = self._by_index.pop(index, None)
        if proposal is None or proposal.future.done():
            return
        if proposal.term == term:
            proposal.future.set_result(result)
        else:
            proposal.future.set_exception(
                ProposalDroppedError(
                    f"entry {index} was overwritten by term {term} "
                    f"(proposed in term {proposal.term})"
                )
            )

    def fail_through(self, index: int, error: Callable[[int], BaseException]) -> None:
        """Fail every proposal at or below ``index`` with ``error(its index)``."""
        for covered in sorted(i for i in self._by_index if i <= index):
            fail(self._by_index.pop(covered).future, error(covered))

    def fail_all(self, error: BaseException) -> None:
        for proposal in self._by_index.values():
            fail(proposal.future, error)
        self._by_index.clear()


def fail(future: asyncio.Future[Any], error: BaseException) -> None:
    """Fail ``future`` unless it is already resolved (or its caller gave up on it)."""
    if not future.done():
        future.set_exception(error)
