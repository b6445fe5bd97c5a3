"""``within``: a deadline on the injected clock, the same on the loop's own clock (one
timer in the caller's task) and on a ManualClock (a sleeper raced against the work)."""

from __future__ import annotations

import asyncio

import pytest

from shardwise.clock import AsyncioClock, Clock, ManualClock
from shardwise.net.timing import within


async def advance(clock: Clock, seconds: float) -> None:
    """Let the loop's time or the manual clock pass ``seconds``."""
    if isinstance(clock, ManualClock):
        for _ in range(3):  # the caller's task, then its sleeper's, start
            await asyncio.sleep(0)
        clock.advance(seconds)
        for _ in range(3):
            await asyncio.sleep(0)
    else:
        await asyncio.sleep(seconds)


CLOCKS = [AsyncioClock, ManualClock]


@pytest.mark.virtual_time
@pytest.mark.parametrize("make_clock", CLOCKS)
async def test_the_result_arrives_in_time(make_clock: type[Clock]) -> None:
    clock = make_clock()

    async def work() -> int:
        await asyncio.sleep(0)
        return 7

    assert await within(clock, 5.0, work()) == 7


@pytest.mark.virtual_time
@pytest.mark.parametrize("make_clock", CLOCKS)
async def test_a_late_result_is_cancelled_and_the_caller_times_out(
    make_clock: type[Clock],
) -> None:
    clock = make_clock()
    never: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    waiting = asyncio.ensure_future(within(clock, 1.0, never))
    await advance(clock, 2.0)
    with pytest.raises(TimeoutError, match=r"not done within 1\.0 s"):
        await waiting
    assert never.cancelled()


@pytest.mark.virtual_time
@pytest.mark.parametrize("make_clock", CLOCKS)
async def test_the_works_own_timeout_error_passes_through(make_clock: type[Clock]) -> None:
    clock = make_clock()

    async def fails() -> None:
        raise TimeoutError("the work's own")

    with pytest.raises(TimeoutError, match="the work's own"):
        await within(clock, 5.0, fails())


@pytest.mark.virtual_time
@pytest.mark.parametrize("make_clock", CLOCKS)
async def test_cancelling_the_caller_cancels_the_work(make_clock: type[Clock]) -> None:
    clock = make_clock()
    never: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    waiting = asyncio.ensure_future(within(clock, 60.0, never))
    await asyncio.sleep(0)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert never.cancelled()
