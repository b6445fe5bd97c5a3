"""The server-wide bound on bytes buffered for unfinished incoming frames.

A connection that reads the header of a large frame (``frames.EXACT_BUFFER_AT_BYTES`` or
more) whose body has not all arrived asks the budget for the frame's whole size before
its codec allocates the buffer; the size is given back when the frame is complete or the
connection ends. Asking is first come, first served: a frame that does not fit waits,
and while it waits its connection reads nothing (TCP pushes back on the sender). Waiting
for ever is not an option, since the holders could be attackers that never finish their
frames, so the first waiter may cut a holder to make room: one whose frame got no byte
for ``stall_s`` and that holds more than its fair share (the budget over the connections
holding or waiting). A frame that is arriving is never cut. A frame larger than the whole
budget can never fit and fails at once.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from shardwise.clock import Clock
from shardwise.errors import FrameBudgetError
from shardwise.net.timing import within

_MIN_WAIT_S = 0.001
"""Shortest wait before looking for a stalled holder again."""


class Holder(Protocol):
    """A connection, as the budget sees it."""

    def cut_for_budget(self, error: FrameBudgetError) -> None:
        """Close at once: its frame is given up to make room."""


@dataclass(slots=True)
class _Hold:
    size: int
    last_progress: float


class FrameBudget:
    """``total`` bytes shared by every inbound connection of one transport.

    ``count(name, n)`` is told of every change: ``frame_bytes_buffered`` (a gauge, by the
    change in bytes), ``frame_budget_waits``, ``frame_budget_stall_cuts`` and
    ``frame_budget_too_large``.
    """

    def __init__(
        self, total: int, stall_s: float, clock: Clock, count: Callable[[str, int], None]
    ) -> None:
        if total < 1 or stall_s <= 0:
            raise ValueError("the budget and the stall time must be positive")
        self.total = total
        self.stall_s = stall_s
        self._clock = clock
        self._count = count
        self.used = 0
        self._holds: dict[Holder, _Hold] = {}
        self._waiters: deque[Holder] = deque()
        self._withdrawn: set[Holder] = set()
        self._changed = asyncio.Event()

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def held_by(self, holder: Holder) -> int:
        hold = self._holds.get(holder)
        return 0 if hold is None else hold.size

    async def acquire(self, holder: Holder, size: int) -> None:
        """Reserve ``size`` bytes for ``holder``'s next frame, waiting for room in turn;
        :class:`FrameBudgetError` if it can never fit."""
        if holder in self._holds:
            raise RuntimeError("a connection buffers one unfinished frame at a time")
        if size > self.total:
            self._count("frame_budget_too_large", 1)
            raise FrameBudgetError(
                f"a {size}-byte frame can never fit the {self.total}-byte buffer budget"
            )
        if not self._waiters and self.used + size <= self.total:
            self._grant(holder, size)
            return
        self._count("frame_budget_waits", 1)
        self._waiters.append(holder)
        try:
            while True:
                if holder in self._withdrawn:
                    raise ConnectionAbortedError("the connection closed while it waited")
                if self._waiters[0] is holder:
                    if self.used + size <= self.total:
                        self._grant(holder, size)
                        return
                    if self._cut_stalled():
                        continue  # room was made: try again at once
                    wait_s = self._until_stalled()
                else:
                    wait_s = None
                await self._wait(wait_s)
        finally:
            self._withdrawn.discard(holder)
            with contextlib.suppress(ValueError):
                self._waiters.remove(holder)
            self._signal()

    def progress(self, holder: Holder) -> None:
        """Bytes of ``holder``'s frame arrived: it is not stalled."""
        hold = self._holds.get(holder)
        if hold is not None:
            hold.last_progress = self._clock.now()

    def release(self, holder: Holder) -> None:
        """``holder``'s frame is complete, or the connection ended (idempotent). A holder
        still waiting for room stops waiting (``ConnectionAbortedError``)."""
        if holder in self._waiters:
            self._withdrawn.add(holder)
            self._signal()
        hold = self._holds.pop(holder, None)
        if hold is not None:
            self.used -= hold.size
            self._count("frame_bytes_buffered", -hold.size)
            self._signal()

    # --- inside ------------------------------------------------------------------------

    def _grant(self, holder: Holder, size: int) -> None:
        self._holds[holder] = _Hold(size, self._clock.now())
        self.used += size
        self._count("frame_bytes_buffered", size)

    def _over_share(self) -> list[tuple[Holder, _Hold]]:
        share = self.total // (len(self._holds) + len(self._waiters))
        return [(holder, hold) for holder, hold in self._holds.items() if hold.size > share]

    def _cut_stalled(self) -> bool:
        """Cut the holder stalled longest among those over their fair share, if it has
        been stalled for ``stall_s``; whether one was cut."""
        candidates = self._over_share()
        if not candidates:
            return False
        victim, hold = min(candidates, key=lambda item: item[1].last_progress)
        stalled_s = self._clock.now() - hold.last_progress
        if stalled_s < self.stall_s:
            return False
        self.release(victim)
        self._count("frame_budget_stall_cuts", 1)
        victim.cut_for_budget(
            FrameBudgetError(
                f"an unfinished frame got no byte for {stalled_s:.1f} s while others "
                "waited for the frame buffer budget"
            )
        )
        return True

    def _until_stalled(self) -> float | None:
        """How long until a holder over its fair share could count as stalled (``None``:
        none is over its share, so only a release can make room)."""
        candidates = self._over_share()
        if not candidates:
            return None
        last = min(hold.last_progress for _, hold in candidates)
        # Never 0: rounding could leave a holder not quite stalled for ``_cut_stalled``.
        return max(last + self.stall_s - self._clock.now(), _MIN_WAIT_S)

    async def _wait(self, timeout_s: float | None) -> None:
        event = self._changed
        if timeout_s is None:
            await event.wait()
            return
        with contextlib.suppress(TimeoutError):
            await within(self._clock, timeout_s, event.wait())

    def _signal(self) -> None:
        """Wake every waiter to look again (a new event for the next round)."""
        self._changed.set()
        self._changed = asyncio.Event()
