"""The virtual time event loop: timers fire in deadline order, waiting takes no real time,
and runs that can never finish fail with a reason instead of hanging."""

from __future__ import annotations

import asyncio
import random
import time

import pytest

from shardwise.testing.virtualtime import (
    DEFAULT_TIME_LIMIT_S,
    VirtualDeadlockError,
    VirtualTimeError,
    VirtualTimeLimitError,
    VirtualTimeLoop,
    current_loop,
    run_virtual,
)

REAL_BUDGET_S = 5.0
"""Real seconds a test's virtual hours may take: generous for a slow CI machine, and
still far below what the virtual waits would take on real time."""


def test_long_sleeps_take_no_real_time_and_wake_in_deadline_order() -> None:
    woke: list[tuple[str, float]] = []

    async def sleeper(name: str, seconds: float) -> None:
        await asyncio.sleep(seconds)
        woke.append((name, asyncio.get_running_loop().time()))

    async def main() -> float:
        await asyncio.gather(
            sleeper("c", 1000.0), sleeper("a", 10.0), sleeper("b", 500.0), sleeper("a2", 10.0)
        )
        return asyncio.get_running_loop().time()

    started = time.monotonic()
    end = run_virtual(main())
    assert time.monotonic() - started < REAL_BUDGET_S
    assert woke == [("a", 10.0), ("a2", 10.0), ("b", 500.0), ("c", 1000.0)]
    assert end == 1000.0


def test_timeouts_are_measured_on_virtual_time() -> None:
    async def main() -> list[float]:
        loop = asyncio.get_running_loop()
        seen = []
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(3.0):
                await asyncio.sleep(3600.0)
        seen.append(loop.time())
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(loop.create_future(), timeout=2.5)
        seen.append(loop.time())
        return seen

    assert run_virtual(main()) == [3.0, 5.5]


def test_the_clock_starts_where_told_and_stands_still_while_code_runs() -> None:
    async def main() -> tuple[float, float]:
        loop = asyncio.get_running_loop()
        before = loop.time()
        sum(range(100_000))  # real work takes no virtual time
        await asyncio.sleep(0)
        return before, loop.time()

    assert run_virtual(main(), start=100.0) == (100.0, 100.0)


def test_threads_are_replaced_by_inline_calls() -> None:
    """``to_thread`` work runs on the loop thread at once: a worker thread would run in
    real time while virtual time races ahead of it."""

    async def main() -> tuple[int, float]:
        result = await asyncio.to_thread(lambda: 6 * 7)
        return result, asyncio.get_running_loop().time()

    assert run_virtual(main()) == (42, 0.0)

    async def failing() -> None:
        await asyncio.to_thread(int, "not a number")

    with pytest.raises(ValueError, match="not a number"):
        run_virtual(failing())


def test_waiting_for_what_never_happens_is_reported_as_a_deadlock() -> None:
    async def main() -> None:
        await asyncio.Event().wait()

    with pytest.raises(VirtualDeadlockError, match="deadlock"):
        run_virtual(main())


def test_a_run_that_never_ends_hits_the_time_limit_and_still_cleans_up() -> None:
    cleaned: list[float] = []

    async def spin_forever() -> None:
        try:
            while True:
                await asyncio.sleep(1.0)
        finally:
            await asyncio.sleep(5.0)  # cleanup may still wait, past the limit
            cleaned.append(asyncio.get_running_loop().time())

    async def main() -> None:
        # Not awaited by main, so that only the runner's cleanup cancels it (once).
        spinner = asyncio.get_running_loop().create_task(spin_forever())
        await asyncio.Event().wait()
        spinner.cancel()

    started = time.monotonic()
    with pytest.raises(VirtualTimeLimitError):
        run_virtual(main(), time_limit_s=60.0)
    assert time.monotonic() - started < REAL_BUDGET_S
    assert cleaned == [65.0]
    assert DEFAULT_TIME_LIMIT_S >= 3600


def test_leftover_tasks_are_cancelled_when_the_run_ends() -> None:
    cancelled: list[bool] = []

    async def background() -> None:
        try:
            await asyncio.sleep(10_000.0)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    async def main() -> None:
        asyncio.get_running_loop().create_task(background())
        await asyncio.sleep(1.0)

    run_virtual(main())
    assert cancelled == [True]


def test_the_same_seed_replays_the_same_interleaving() -> None:
    async def main() -> list[tuple[float, int]]:
        rng = current_loop().rng
        log: list[tuple[float, int]] = []

        async def worker(n: int) -> None:
            for _ in range(20):
                await asyncio.sleep(rng.uniform(0.0, 1.0))
                log.append((asyncio.get_running_loop().time(), n))

        await asyncio.gather(*(worker(n) for n in range(5)))
        return log

    first = run_virtual(main(), seed=7)
    assert run_virtual(main(), seed=7) == first
    assert run_virtual(main(), seed=8) != first


def test_current_loop_refuses_a_real_time_loop() -> None:
    async def main() -> None:
        current_loop()

    with pytest.raises(VirtualTimeError):
        asyncio.run(main())
    with pytest.raises(ValueError, match="positive"):
        VirtualTimeLoop(time_limit_s=0)


@pytest.mark.virtual_time
async def test_the_marker_runs_a_test_on_virtual_time() -> None:
    loop = asyncio.get_running_loop()
    assert isinstance(loop, VirtualTimeLoop)
    await asyncio.sleep(3000.0)
    assert loop.time() == 3000.0


@pytest.mark.virtual_time(start=50.0, time_limit_s=86_400.0)
async def test_the_marker_passes_its_arguments_to_the_loop() -> None:
    loop = asyncio.get_running_loop()
    assert loop.time() == 50.0
    await asyncio.sleep(80_000.0)
    assert loop.time() == 80_050.0


@pytest.mark.virtual_time
async def test_the_loop_rng_follows_the_test_seed(seed: int) -> None:
    assert current_loop().rng.random() == random.Random(seed).random()
