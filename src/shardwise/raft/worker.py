"""A thread of one's own for a host's blocking storage work (its fsyncs).

``asyncio.to_thread`` would do, at a cost that shows on a busy replica: each call copies
the context, goes through the default executor's queue and locks, and chains a
``concurrent.futures.Future`` to an asyncio one. Here a call is one queue put and, when
it is done, one ``call_soon_threadsafe``; and the jobs of one host run in order on one
thread, which is what a log's fsyncs need anyway.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Callable

_Job = tuple[Callable[[], None], asyncio.Future[None]]


class WorkerThread:
    """Runs blocking calls, one at a time and in order, on a daemon thread started on
    first use. A :class:`~shardwise.raft.host.BlockingRunner`: ``await worker(fn)``."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def __call__(self, fn: Callable[[], None], /) -> asyncio.Future[None]:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name=self._name, daemon=True)
            self._thread.start()
        self._jobs.put((fn, future))
        return future

    def close(self) -> None:
        """Let the thread end once the jobs queued before this are done (idempotent)."""
        if self._thread is not None:
            self._jobs.put(None)
            self._thread = None

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            fn, future = job
            error: BaseException | None = None
            try:
                fn()
            except BaseException as exc:  # handed to the awaiting coroutine
                error = exc
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits any more
                future.get_loop().call_soon_threadsafe(_settle, future, error)


def _settle(future: asyncio.Future[None], error: BaseException | None) -> None:
    if future.cancelled():
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)
