"""Waiting with limits: capped, jittered reconnect back-off, and deadlines measured on the
injected clock (so tests move time by hand instead of sleeping)."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Final, Protocol, TypeVar

from shardwise.clock import AsyncioClock, Clock

T = TypeVar("T")

BACKOFF_BASE_S: Final = 0.05
"""First reconnect delay (before jitter)."""

BACKOFF_CAP_S: Final = 5.0
"""Longest reconnect delay: a returning peer is found within this (plus jitter)."""

BACKOFF_MULTIPLIER: Final = 2.0

MIN_SILENT_DROP_S: Final = 0.5
"""A call that timed out after at least this long with nothing received on its connection
meanwhile has the connection dropped (``Transport.call``); shorter timeouts say too little
about the peer to give up a connection other calls may share."""

MAX_DIAL_ATTEMPTS: Final = 32
"""Consecutive failed dials before a link gives up and fails what waits for it (about a
minute and a half with the default delays). The next message or call for the peer
starts a new round."""


class RandomSource(Protocol):
    """Where jitter comes from; ``random.Random`` is one, a test passes a seeded or fixed one."""

    def random(self) -> float: ...


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential back-off with "equal jitter": half the delay is fixed, half random.

    The fixed half keeps a flapping peer from being hammered; the random half keeps nodes
    that lost the same peer from redialling in lockstep.
    """

    base_s: float = BACKOFF_BASE_S
    cap_s: float = BACKOFF_CAP_S
    multiplier: float = BACKOFF_MULTIPLIER
    max_attempts: int = MAX_DIAL_ATTEMPTS

    def __post_init__(self) -> None:
        if not 0 < self.base_s <= self.cap_s:
            raise ValueError("need 0 < base_s <= cap_s")
        if self.multiplier < 1 or self.max_attempts < 1:
            raise ValueError("need multiplier >= 1 and max_attempts >= 1")

    def ceiling_s(self, attempt: int) -> float:
        """The delay before jitter after ``attempt`` failures (0-based), capped."""
        # Capping the exponent first keeps a huge attempt count from overflowing a float.
        exponent = min(attempt, 64)
        return min(self.cap_s, self.base_s * self.multiplier**exponent)

    def delay_s(self, attempt: int, rng: RandomSource) -> float:
        ceiling = self.ceiling_s(attempt)
        return ceiling / 2 + rng.random() * ceiling / 2


def default_rng() -> random.Random:
    return random.Random()


async def within(clock: Clock, seconds: float, awaitable: Awaitable[T]) -> T:
    """Await ``awaitable``; if ``seconds`` pass on ``clock`` first, cancel it and raise
    :class:`TimeoutError`. Cancelling the caller cancels both."""
    if isinstance(clock, AsyncioClock):
        # The loop's own time: one timer in this task (every call and every request
        # handler waits this way, so two extra tasks and a wait() each add up).
        timeout = asyncio.timeout(seconds)
        try:
            async with timeout:
                return await awaitable
        except TimeoutError:
            if timeout.expired():
                raise TimeoutError(f"not done within {seconds} s") from None
            raise
    work = asyncio.ensure_future(awaitable)
    timer = asyncio.ensure_future(clock.sleep(seconds))
    try:
        await asyncio.wait((work, timer), return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        work.cancel()
        raise
    finally:
        timer.cancel()
    if work.done():
        return work.result()
    work.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await work
    raise TimeoutError(f"not done within {seconds} s")
