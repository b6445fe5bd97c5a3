"""A replica stopped by a full disk, and when it looks for room again.

A write that finds no room (``DiskFullError``: the Raft log's ``ENOSPC``, or SQLite's
``SQLITE_FULL`` while applying) does not halt the replica for good. It stops as a crash
would (it sends, acknowledges and applies nothing more, so it promises nothing it could
not keep), fails what waits on it, and every :data:`DISK_FULL_RETRY_S` it asks its
storage whether there is room again. Then it does in-process what a restart does:
reopen the storage (which recovers from what is on disk and makes it durable), rebuild
the Raft core from it and go on. If the state machine's own write failed, its state may
no longer match its applied index (SQLite may roll a transaction back on
``SQLITE_FULL``), so it is rebuilt from the durable record too: restored from the
storage's snapshot, or emptied by its ``reset()``, then fed the log again.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from shardwise.errors import ReplicaHaltedError
from shardwise.raft.hosting.applying import Applier
from shardwise.raft.statemachine import StateMachine
from shardwise.storage.fsutil import is_out_of_space
from shardwise.storage.interface import StoredState
from shardwise.storage.space import DiskFullError

DISK_FULL_RETRY_S: Final = 1.0
"""How often a replica stopped by a full disk looks for room again: a ``statvfs`` each
time, and a reopen (a scan of the log) only once there is room."""


class DiskFullStop:
    """Why and since when a replica is stopped by a full disk (``None`` fields: it runs)."""

    def __init__(self) -> None:
        self.error: DiskFullError | None = None
        self.rebuild_state_machine = False
        self._next_try = 0.0
        self.stops = 0
        """Times the replica stopped on a full disk (for tests and status pages)."""

    @property
    def stopped(self) -> bool:
        return self.error is not None

    def stop(self, error: DiskFullError, now: float, *, state_machine_failed: bool) -> bool:
        """Record a stop; whether it is a new one (not already stopped)."""
        self.rebuild_state_machine |= state_machine_failed
        if self.error is not None:
            return False
        self.error = error
        self.stops += 1
        self._next_try = now + DISK_FULL_RETRY_S
        return True

    def due(self, now: float) -> bool:
        """Whether to look for room now (at most every ``DISK_FULL_RETRY_S``)."""
        if self.error is None or now < self._next_try:
            return False
        self._next_try = now + DISK_FULL_RETRY_S
        return True

    def resumed(self) -> None:
        self.error = None
        self.rebuild_state_machine = False


def disk_full_cause(error: BaseException) -> DiskFullError | None:
    """The ``DiskFullError`` behind ``error`` (itself, or what it was raised from); an
    ``ENOSPC`` from a state machine's own file writes counts as one too."""
    seen = 0
    current: BaseException | None = error
    while current is not None and seen < 8:  # a short chain: a halt wraps a cause or two
        if isinstance(current, DiskFullError):
            return current
        if isinstance(current, OSError) and is_out_of_space(current):
            full = DiskFullError(f"the disk is full ({current})")
            full.__cause__ = current
            return full
        current = current.__cause__
        seen += 1
    return None


def rebuild_state_machine(
    node_id: str, state_machine: StateMachine, stored: StoredState, applier: Applier
) -> None:
    """Bring the state machine back to the durable record, to be fed the log after it:
    from the snapshot, or from nothing through its optional ``reset()``."""
    if stored.snapshot is not None:
        meta, data = stored.snapshot
        state_machine.restore(data, meta.index)
        applier.applied = meta.index
        return
    reset: Callable[[], None] | None = getattr(state_machine, "reset", None)
    if reset is None:
        raise ReplicaHaltedError(
            f"replica {node_id!r} cannot rebuild its state machine after a full disk "
            "(no snapshot, and it has no reset()): restart it"
        )
    reset()
    applier.applied = 0
