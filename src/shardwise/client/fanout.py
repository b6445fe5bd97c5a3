"""Running many requests of one call at once, bounded, and waiting for all of them."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Final, TypeVar

T = TypeVar("T")

MAX_FANOUT: Final = 64
"""Requests one ``mget``/``mput``/``scan`` keeps in flight at once."""


async def fan_out(jobs: list[Callable[[], Awaitable[T]]], limit: int = MAX_FANOUT) -> list[T]:
    """Run every job, at most ``limit`` at once; the first error (in job order) is
    raised once all have finished, so none is left running unwatched."""
    slots = asyncio.Semaphore(limit)

    async def run(job: Callable[[], Awaitable[T]]) -> T:
        async with slots:
            return await job()

    outcomes = await asyncio.gather(*(run(job) for job in jobs), return_exceptions=True)
    results: list[T] = []
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            raise outcome
        results.append(outcome)
    return results


def bind(fn: Callable[..., Awaitable[T]], *args: Any) -> Callable[[], Awaitable[T]]:
    """``fn`` with its arguments, called later (a coroutine is made only when it runs)."""
    return lambda: fn(*args)
