"""What the leader knows of each follower's log, and how much it may send it.

A follower is in one of three states (as in etcd's progress tracker):

* ``PROBE``: the leader does not know where the logs agree; it sends one append at a
  time and waits for the answer (or the next heartbeat) before sending another.
* ``REPLICATE``: the logs agree up to ``match``; the leader streams appends without
  waiting, up to ``MAX_INFLIGHT_MSGS`` messages and ``MAX_INFLIGHT_BYTES`` unacknowledged.
* ``SNAPSHOT``: the follower needs entries the leader has compacted; a snapshot is on
  its way in acknowledged chunks, and no appends are sent until it is installed.
"""

from __future__ import annotations

import enum
from collections import deque
from typing import Final

MAX_INFLIGHT_MSGS: Final = 64
"""Appends in flight to one follower before the leader waits for acknowledgements."""

MAX_INFLIGHT_BYTES: Final = 16 << 20
"""Unacknowledged entry bytes to one follower before the leader waits."""


class ProgressState(enum.Enum):
    PROBE = "probe"
    REPLICATE = "replicate"
    SNAPSHOT = "snapshot"


class Progress:
    __slots__ = (
        "heard",
        "inflight",
        "inflight_bytes",
        "match",
        "next",
        "probe_sent",
        "recent_active",
        "snapshot_index",
        "snapshot_offset",
        "space_low",
        "state",
    )

    def __init__(self, next_index: int) -> None:
        self.match = 0
        self.next = next_index
        self.state = ProgressState.PROBE
        self.probe_sent = False
        self.recent_active = False
        self.heard = 0
        """When the leader last heard from this follower, as a count of answers heard
        from any follower: larger is more recent (see ``ProgressTracker.read_targets``)."""
        self.inflight: deque[tuple[int, int]] = deque()  # (last index sent, bytes)
        self.inflight_bytes = 0
        self.snapshot_index = 0
        self.snapshot_offset = 0
        self.space_low = True
        """The follower's disk is nearly full, as its last heartbeat answer said; until
        one is heard, assumed so (a new leader hands leadership only to a replica known
        to have room)."""

    def __repr__(self) -> str:
        return f"Progress({self.state.value}, match={self.match}, next={self.next})"

    def become_probe(self) -> None:
        # After a snapshot, resume right after it; otherwise after what we know matches.
        if self.state is ProgressState.SNAPSHOT:
            self.next = max(self.match + 1, self.snapshot_index + 1)
        else:
            self.next = self.match + 1
        self._reset(ProgressState.PROBE)

    def become_replicate(self) -> None:
        self.next = self.match + 1
        self._reset(ProgressState.REPLICATE)

    def become_snapshot(self, index: int) -> None:
        self._reset(ProgressState.SNAPSHOT)
        self.snapshot_index = index
        self.snapshot_offset = 0

    def _reset(self, state: ProgressState) -> None:
        self.state = state
        self.probe_sent = False
        self.inflight.clear()
        self.inflight_bytes = 0
        self.snapshot_index = 0 if state is not ProgressState.SNAPSHOT else self.snapshot_index

    def paused(self) -> bool:
        if self.state is ProgressState.PROBE:
            return self.probe_sent
        if self.state is ProgressState.SNAPSHOT:
            return True
        return len(self.inflight) >= MAX_INFLIGHT_MSGS or self.inflight_bytes >= MAX_INFLIGHT_BYTES

    def sent(self, last_index: int, size: int) -> None:
        """An append carrying entries up to ``last_index`` went out."""
        if self.state is ProgressState.REPLICATE:
            if last_index >= self.next:
                self.next = last_index + 1
                self.inflight.append((last_index, size))
                self.inflight_bytes += size
        elif self.state is ProgressState.PROBE:
            self.probe_sent = True

    def free_first(self) -> None:
        """Forget the oldest append in flight (presumed lost), making room for one more."""
        if self.inflight:
            _, size = self.inflight.popleft()
            self.inflight_bytes -= size

    def acknowledge(self, index: int) -> bool:
        """The follower matches up to ``index``; returns whether that is news."""
        updated = index > self.match
        if updated:
            self.match = index
            self.probe_sent = False
        self.next = max(self.next, index + 1)
        while self.inflight and self.inflight[0][0] <= index:
            _, size = self.inflight.popleft()
            self.inflight_bytes -= size
        return updated

    def reject(self, rejected: int, next_guess: int, proven_match: int) -> bool:
        """The follower refused an append at ``rejected`` (or said, answering a heartbeat,
        that it lacks entry ``rejected``); returns False if stale.

        ``proven_match`` is the highest index the leader knows the follower's log agrees
        with from what the rejection says (its hint entry, if the leader's log holds the
        same term there; else 0).
        """
        if rejected == self.match > proven_match and self.state is not ProgressState.SNAPSHOT:
            # The follower lacks the entry at ``match``, which it acknowledged: it lost
            # synced data (a cut log file), or this is an old rejection overtaken by a
            # later success. We cannot tell which, so we believe it: otherwise a follower
            # that lost its tail is sent the entry after ``match`` for ever, refuses it
            # for ever and never catches up. Lowering ``match`` to what the rejection
            # proves can only count the follower towards fewer commits, never more, so
            # it is safe either way; a stale one costs a probe's round trip. A follower
            # that lost entries is always asked at ``match`` in the end (the probe after
            # any rejection above it, or its answer to a heartbeat carrying the commit
            # index), so rejections below ``match``, which only reordering makes, are
            # left alone: under reordering they are common and each would cost a probe.
            self.match = proven_match
            self._reset(ProgressState.PROBE)
            self.next = max(self.match + 1, min(next_guess, rejected))
            return True
        if self.state is ProgressState.REPLICATE:
            if rejected <= self.match:
                return False  # an old rejection, overtaken by later success
            self.become_probe()
            self.next = max(self.match + 1, min(next_guess, rejected))
            return True
        if self.next - 1 != rejected:
            return False  # not the probe we are waiting for
        self.next = max(self.match + 1, min(next_guess, rejected))
        self.probe_sent = False
        return True
