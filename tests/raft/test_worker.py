"""The storage worker thread: jobs run off the loop, in order, and report back."""

from __future__ import annotations

import asyncio
import functools
import threading

import pytest

from shardwise.raft.worker import WorkerThread


async def test_jobs_run_in_order_on_one_other_thread() -> None:
    worker = WorkerThread("test-worker")
    ran: list[tuple[int, str]] = []
    try:

        def job(n: int) -> None:
            ran.append((n, threading.current_thread().name))

        futures = [worker(functools.partial(job, n)) for n in range(50)]
        await asyncio.wait_for(asyncio.gather(*futures), timeout=30)
    finally:
        worker.close()
    assert [n for n, _ in ran] == list(range(50))
    assert {name for _, name in ran} == {"test-worker"}
    assert threading.current_thread().name != "test-worker"


async def test_an_error_reaches_the_caller_and_the_next_job_still_runs() -> None:
    worker = WorkerThread("test-worker")

    def fail() -> None:
        raise OSError("disk on fire")

    try:
        with pytest.raises(OSError, match="disk on fire"):
            await asyncio.wait_for(worker(fail), timeout=30)
        done: list[bool] = []
        await asyncio.wait_for(worker(lambda: done.append(True)), timeout=30)
        assert done == [True]
    finally:
        worker.close()


async def test_close_ends_the_thread_after_the_queued_jobs() -> None:
    worker = WorkerThread("test-worker-close")
    ran: list[int] = []
    finished = worker(lambda: ran.append(1))
    thread = worker._thread
    assert thread is not None
    worker.close()
    await asyncio.wait_for(finished, timeout=30)
    thread.join(timeout=30)
    assert ran == [1] and not thread.is_alive()
