"""Time as an injected dependency: the one place servers learn what time it is.

Hosts (the Raft host, later the network layer) never call ``asyncio.sleep`` or read a
clock directly; they are handed a :class:`Clock`. In production that is
:class:`AsyncioClock` (the event loop's monotonic time). In tests and simulations it is
:class:`ManualClock`, whose time moves only when the test calls :meth:`ManualClock.advance`,
so a test that waits for an election timeout or an operation timeout takes no real time
and runs the same way every time.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from typing import Protocol


class Clock(Protocol):
    """A monotonic clock that can also wait. Times are seconds; only differences matter."""

    def now(self) -> float:
        """The current time in seconds."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Return once at least ``seconds`` have passed on this clock."""
        ...


class AsyncioClock:
    """The real clock: the running event loop's monotonic time and ``asyncio.sleep``."""

    def now(self) -> float:
        return asyncio.get_running_loop().time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class ManualClock:
    """A clock whose time moves only when :meth:`advance` is called.

    Sleepers wake in deadline order (ties in the order they went to sleep), each at the
    event loop's next turn after the ``advance`` that reached their deadline. Cancelling
    a sleeper is safe: its entry is skipped when its deadline comes.
    """

    def __init__(self, start: float = 0.0) -> None:
        self._now = start
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()  # FIFO among equal deadlines, never compares futures

    def now(self) -> float:
        return self._now

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)  # still a turn of the loop, as asyncio.sleep(0) would be
            return
        waker: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self._now + seconds, next(self._order), waker))
        await waker

    def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds`` and wake every sleeper whose deadline passed."""
        if seconds < 0:
            raise ValueError("a monotonic clock cannot go back")
        self._now += seconds
        while self._sleepers and self._sleepers[0][0] <= self._now:
            _, _, waker = heapq.heappop(self._sleepers)
            if not waker.done():
                waker.set_result(None)

    def sleepers(self) -> int:
        """How many sleepers are waiting (cancelled ones not yet reached included)."""
        return len(self._sleepers)
