"""Applying committed entries to a host's state machine: in order, once each, and with
what waits on them settled.

A proposal is settled when its entry is applied (``Proposals``), a read when the applied
index reaches the read's index (the ``applied_waiters`` heap). A follower may hold
entries back and apply them together (``HostOptions.follower_apply_batch``). Whatever
cannot be applied raises ``ReplicaHaltedError``: the host halts rather than diverge.
"""

from __future__ import annotations

from collections.abc import Callable

from shardwise.errors import ReplicaHaltedError
from shardwise.raft.hosting.snapshots import SnapshotSchedule
from shardwise.raft.hosting.waiting import FutureHeap, Proposals
from shardwise.raft.messages import EntryKind, decode_conf_change, entry_kind
from shardwise.raft.statemachine import StateMachine
from shardwise.storage.types import LogEntry


class Applier:
    """Owns the host's applied index and the entries a follower holds back."""

    def __init__(
        self,
        node_id: str,
        state_machine: StateMachine,
        *,
        proposals: Proposals,
        applied_waiters: FutureHeap,
        snapshots: SnapshotSchedule,
        follower_batch: int,
    ) -> None:
        self._id = node_id
        self._state_machine = state_machine
        # Optional: a state machine with ``end_batch()`` hears when a batch of applied
        # entries ends, so it can commit them together (see StateMachine).
        self._end_batch: Callable[[], None] | None = getattr(state_machine, "end_batch", None)
        self._proposals = proposals
        self._applied_waiters = applied_waiters
        self._snapshots = snapshots
        self._follower_batch = follower_batch
        self.applied = 0
        """The host's applied index: commands in the state machine, plus no-ops and
        membership changes the core applied."""
        self._held: list[LogEntry] = []
        """Committed entries a follower holds back (``HostOptions.follower_apply_batch``)."""

    def is_holding(self) -> bool:
        return bool(self._held)

    def apply_committed(self, entries: list[LogEntry], leading: bool) -> None:
        """Apply a Ready's committed entries, or (a follower, with no read waiting) hold
        them back until the batch is full."""
        limit = self._follower_batch
        if (
            limit
            and not leading
            and not self._applied_waiters
            and len(self._held) + len(entries) < limit
        ):
            self._held.extend(entries)
            return
        if self._held:
            entries = [*self._held, *entries]
            self._held = []
        self._apply(entries)

    def apply_held(self) -> None:
        """Apply what a follower holds back (at a tick, or when a read or a snapshot
        needs it)."""
        if self._held:
            entries, self._held = self._held, []
            self._apply(entries)

    def drop_held(self) -> None:
        """Forget what a follower holds back (it comes again: the core is rebuilt from
        storage after a stop on a full disk)."""
        self._held = []

    def restored(self, index: int) -> None:
        """The state machine was restored from a snapshot at ``index``."""
        self.applied = index
        self.release_applied()

    def release_applied(self) -> None:
        for future, _ in self._applied_waiters.pop_through(self.applied):
            future.set_result(None)

    def _apply(self, entries: list[LogEntry]) -> None:
        try:
            self._apply_each(entries)
        finally:
            if self._end_batch is not None:
                try:
                    self._end_batch()
                except Exception as exc:
                    raise ReplicaHaltedError(
                        f"replica {self._id!r} cannot finish applying a batch: {exc}"
                    ) from exc

    def _apply_each(self, entries: list[LogEntry]) -> None:
        for entry in entries:
            if entry.index <= self.applied:
                continue  # replayed after a restart: the state machine already holds it
            try:
                kind = entry_kind(entry)
                result = b""
                if kind is EntryKind.COMMAND:
                    result = self._state_machine.apply(entry.index, entry.data[1:])
                elif kind is EntryKind.CONF_CHANGE:
                    decode_conf_change(entry)  # fail here, not inside the core's advance()
            except Exception as exc:
                raise ReplicaHaltedError(
                    f"replica {self._id!r} cannot apply committed entry {entry.index} "
                    f"(term {entry.term}): {exc}"
                ) from exc
            self.applied = entry.index
            self._snapshots.log_bytes += len(entry.data)
            self._proposals.settle(entry.index, entry.term, result)
        self.release_applied()
