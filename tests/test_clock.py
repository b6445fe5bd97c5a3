"""The injected clocks: the manual one moves only when told, and wakes in order."""

from __future__ import annotations

import asyncio

import pytest

from shardwise.clock import AsyncioClock, Clock, ManualClock


def test_sleepers_wake_in_deadline_order_when_time_passes() -> None:
    async def main() -> list[str]:
        clock = ManualClock()
        woke: list[str] = []

        async def sleeper(name: str, seconds: float) -> None:
            await clock.sleep(seconds)
            woke.append(f"{name}@{clock.now():g}")

        tasks = [
            asyncio.create_task(sleeper(name, s))
            for name, s in [("late", 2.0), ("early", 1.0), ("tie", 1.0), ("now", 0)]
        ]
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert woke == ["now@0"]
        clock.advance(0.5)
        await asyncio.sleep(0)
        assert woke == ["now@0"]
        clock.advance(1.0)
        await asyncio.gather(*tasks[1:3])
        clock.advance(5.0)
        await tasks[0]
        return woke

    assert asyncio.run(main()) == ["now@0", "early@1.5", "tie@1.5", "late@6.5"]


def test_a_cancelled_sleeper_is_skipped() -> None:
    async def main() -> None:
        clock = ManualClock(start=10.0)
        task = asyncio.create_task(clock.sleep(1.0))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        clock.advance(2.0)  # must not try to wake the cancelled sleeper
        assert clock.sleepers() == 0
        assert clock.now() == 12.0

    asyncio.run(main())


def test_time_cannot_go_back() -> None:
    with pytest.raises(ValueError):
        ManualClock().advance(-1)


def test_the_real_clock_follows_the_loop() -> None:
    async def main() -> None:
        clock: Clock = AsyncioClock()
        before = clock.now()
        await clock.sleep(0)
        assert before <= clock.now() == pytest.approx(asyncio.get_running_loop().time())

    asyncio.run(main())
