"""The event loop to run servers on: uvloop when it is installed, asyncio's otherwise.

uvloop is optional (the ``fast`` extra): the transport only uses the asyncio API, so it
behaves the same on both; uvloop just moves bytes with less CPU.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, TypeVar

T = TypeVar("T")


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    """``uvloop.new_event_loop`` if uvloop is importable, else asyncio's."""
    try:
        import uvloop  # noqa: PLC0415 -- optional: imported only when asked for
    except ImportError:
        return asyncio.new_event_loop
    return uvloop.new_event_loop


def uses_uvloop() -> bool:
    return loop_factory() is not asyncio.new_event_loop


def run(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(main)`` on the best loop available."""
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(main)


async def gather_or_cancel(tasks: Sequence[Coroutine[Any, Any, T]]) -> list[T]:
    """Every result in order, or the first error with the others cancelled (work fanned
    out to several servers should stop when one part fails, not be waited for)."""
    running = [asyncio.ensure_future(t) for t in tasks]
    try:
        return list(await asyncio.gather(*running))
    except BaseException:
        for task in running:
            task.cancel()
        raise
