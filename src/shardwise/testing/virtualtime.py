"""An asyncio event loop on virtual time: timers fire in order, but waiting takes no time.

Why: the servers read time only through the event loop (``AsyncioClock``,
``asyncio.sleep``, ``asyncio.timeout``, ``call_later``), so running them on a loop whose
clock is virtual lets a test wait for election timeouts, call deadlines or minutes of
background work without sleeping: a 1000 s wait finishes at once, timers still fire in
deadline order, and a run that uses no real I/O and no threads is deterministic. Unlike
:class:`~shardwise.clock.ManualClock`, nothing has to move time by hand: time moves by
itself, exactly when the loop would otherwise block.

How: :class:`VirtualTimeLoop` is a ``SelectorEventLoop`` whose selector never blocks.
When the loop has no callback ready it calls ``select(timeout)`` with the time until its
next timer; the selector polls the real selector without waiting (so the loop's own
self-pipe and any real socket still work), and if nothing is ready it moves the virtual
clock forward by ``timeout`` and returns. ``select(None)`` means no timer at all and no
callback ready: nothing can ever happen again, and :class:`VirtualDeadlockError` says so
instead of hanging.

Limits of the model, on purpose:

* ``run_in_executor`` (and so ``asyncio.to_thread``) runs the function inline on the loop
  thread: a worker thread would run in real time while virtual time raced ahead of it,
  so an fsync in a thread would "take" an arbitrary amount of virtual time. Blocking work
  therefore takes no virtual time at all.
* Real I/O (sockets, subprocesses) still works but its timing is real and so is not
  deterministic; and while it is in progress virtual time jumps to the next timer, so a
  read with a timeout times out at once. Use :mod:`shardwise.testing.simnet` instead.
* A runaway run (a livelock, a retry loop that never gives up) would spin forever on
  virtual time; the loop stops it with :class:`VirtualTimeLimitError` once the virtual
  clock passes ``time_limit_s`` (one hour of virtual time by default).

Use it with :func:`run_virtual`, or mark an ``async def`` test with
``@pytest.mark.virtual_time`` (``tests/conftest.py`` then runs it on a fresh
:class:`VirtualTimeLoop`; keyword arguments of the marker go to its constructor, e.g.
``@pytest.mark.virtual_time(time_limit_s=86_400)``).
"""

from __future__ import annotations

import asyncio
import contextvars
import random
import selectors
from collections.abc import Callable, Coroutine, Mapping
from concurrent.futures import Executor
from typing import TYPE_CHECKING, Any, Final, TypeVar

from shardwise.errors import ShardwiseError

if TYPE_CHECKING:
    from _typeshed import FileDescriptorLike

T = TypeVar("T")

DEFAULT_TIME_LIMIT_S: Final = 3600.0
"""Virtual seconds a loop may run before :class:`VirtualTimeLimitError`: far beyond any
test's timeouts (a Raft election takes 1-2 s), and reached in seconds of real time by a
run that never finishes, instead of at the test runner's timeout minutes later."""


class VirtualTimeError(ShardwiseError, RuntimeError):
    """A run on virtual time cannot go on."""


class VirtualDeadlockError(VirtualTimeError):
    """The loop has nothing ready and no timer: whatever is awaited will never happen."""


class VirtualTimeLimitError(VirtualTimeError):
    """The virtual clock passed the loop's ``time_limit_s``: the run does not end."""


class _VirtualSelector(selectors.BaseSelector):
    """Wraps the real selector; ``select`` polls it without blocking and, when nothing is
    ready, moves the loop's virtual clock by ``timeout`` instead of waiting."""

    def __init__(self, advance: Callable[[float | None], None]) -> None:
        self._real = selectors.DefaultSelector()
        self._advance = advance

    def register(
        self, fileobj: FileDescriptorLike, events: int, data: Any = None
    ) -> selectors.SelectorKey:
        return self._real.register(fileobj, events, data)

    def unregister(self, fileobj: FileDescriptorLike) -> selectors.SelectorKey:
        return self._real.unregister(fileobj)

    def modify(
        self, fileobj: FileDescriptorLike, events: int, data: Any = None
    ) -> selectors.SelectorKey:
        return self._real.modify(fileobj, events, data)

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready = self._real.select(0)
        if ready or timeout == 0:
            return ready
        self._advance(timeout)
        return []

    def get_map(self) -> Mapping[FileDescriptorLike, selectors.SelectorKey]:
        return self._real.get_map()

    def close(self) -> None:
        self._real.close()


VIRTUAL_EPOCH: Final = 1_800_000_000.0
"""A simulation's wall clock at virtual time 0 (a fixed date in 2027: runs replay)."""


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """A selector event loop whose ``time()`` is virtual (see the module's docstring).

    ``start`` is the clock's first reading. ``seed`` seeds :attr:`rng`, a random source
    for whatever the run decides at random (a simulated network, a nemesis), so that
    one number replays a run. ``time_limit_s`` (``None``: no limit) bounds the virtual
    time the loop may run for, counted from ``start``.
    """

    def __init__(
        self,
        *,
        start: float = 0.0,
        seed: int | None = None,
        time_limit_s: float | None = DEFAULT_TIME_LIMIT_S,
    ) -> None:
        self._now = float(start)
        self._deadline = None if time_limit_s is None else start + time_limit_s
        self.rng = random.Random(seed)
        """The run's random source, seeded by ``seed``."""
        super().__init__(_VirtualSelector(self._advance))
        if time_limit_s is not None and not time_limit_s > 0:
            self.close()  # checked after the base class is set up, so that it can close
            raise ValueError("time_limit_s must be positive (or None)")

    def time(self) -> float:
        return self._now

    def wall_time(self) -> float:
        """The wall clock as the simulation sees it: :data:`VIRTUAL_EPOCH` plus virtual
        time (``model/txn.wall_ms`` asks for it, so a transaction's age runs virtually)."""
        return VIRTUAL_EPOCH + self._now

    def _advance(self, timeout: float | None) -> None:
        if timeout is None:
            raise VirtualDeadlockError(
                "virtual time deadlock: no callback is ready and no timer is scheduled, "
                "so nothing awaited can ever happen (a future nobody resolves, an event "
                "nobody sets, or work left to a thread: threads do not run on virtual time)"
            )
        target = self._now + timeout
        if self._deadline is not None and target > self._deadline:
            limit = self._deadline
            self._deadline = None  # once: let the caller's cleanup run on the clock
            raise VirtualTimeLimitError(
                f"the virtual clock would pass {limit} s: the run never finishes "
                "(raise time_limit_s if it legitimately runs that long)"
            )
        self._now = target

    def run_in_executor(  # type: ignore[override]
        self, executor: Executor | None, func: Callable[..., T], *args: Any
    ) -> asyncio.Future[T]:
        """Run ``func(*args)`` now, on the loop thread, and return its settled future: a
        worker thread would not run on virtual time (see the module's docstring)."""
        if self.is_closed():
            raise RuntimeError("Event loop is closed")
        future: asyncio.Future[T] = self.create_future()
        try:
            result = func(*args)
        except Exception as exc:
            future.set_exception(exc)
        else:
            future.set_result(result)
        return future


def current_loop() -> VirtualTimeLoop:
    """The running loop, which must be a :class:`VirtualTimeLoop` (for code that needs its
    :attr:`~VirtualTimeLoop.rng` or must not run on real time)."""
    loop = asyncio.get_running_loop()
    if not isinstance(loop, VirtualTimeLoop):
        raise VirtualTimeError(f"the running loop is a {type(loop).__name__}, not virtual")
    return loop


def run_virtual(
    coro: Coroutine[Any, Any, T],
    *,
    seed: int | None = None,
    start: float = 0.0,
    time_limit_s: float | None = DEFAULT_TIME_LIMIT_S,
    context: contextvars.Context | None = None,
) -> T:
    """Run ``coro`` to completion on a fresh :class:`VirtualTimeLoop`, like
    ``asyncio.run``: tasks left over are cancelled (and awaited), async generators
    finalised, and the loop closed. (asyncio cancels leftovers in no fixed order: a run
    that must replay exactly stops its own tasks before it returns.)"""
    with asyncio.Runner(
        loop_factory=virtual_loop_factory(seed=seed, start=start, time_limit_s=time_limit_s)
    ) as runner:
        return runner.run(coro, context=context)


def virtual_loop_factory(
    *,
    seed: int | None = None,
    start: float = 0.0,
    time_limit_s: float | None = DEFAULT_TIME_LIMIT_S,
) -> Callable[[], VirtualTimeLoop]:
    """A ``loop_factory`` for ``asyncio.Runner`` (and the test hook) that makes fresh
    :class:`VirtualTimeLoop` instances."""

    def factory() -> VirtualTimeLoop:
        return VirtualTimeLoop(start=start, seed=seed, time_limit_s=time_limit_s)

    return factory
