"""The host's side of a leader's lease: when each heartbeat round left, and so until when
the newest round a quorum answered lets the leader read alone (``raft/lease.py``).

A follower that answered round *k* heard it no earlier than it was sent, and refuses
other candidates for ``election_ticks`` of its ticks after that; each of its ticks takes
at least a tick interval (a busy loop makes them later, never sooner), so for at least
``(election_ticks - 1)`` intervals. The lease is :data:`LEASE_SHARE` of that, counted on
this host's monotonic clock from a time no later than the round was sent: the rest is
the margin for clocks that run at slightly different rates. Every replica of a group
must use the same tick interval and election ticks (the servers take both from the
cluster's configuration).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Final

LEASE_SHARE: Final = 0.75
"""The part of the followers' shortest vote refusal a lease lasts."""

MAX_ROUND_TIMES: Final = 256
"""Send times of rounds not yet answered by a quorum that are kept; an older one is
forgotten (its answers then renew nothing, which is safe)."""


def lease_duration_s(election_ticks: int, tick_interval_s: float) -> float:
    return (election_ticks - 1) * tick_interval_s * LEASE_SHARE


class LeaseClock:
    """Send times of a leader's heartbeat rounds, and the lease the confirmed one gives."""

    __slots__ = ("_noted", "_sent_at", "_term", "_until", "_until_round", "duration_s")

    def __init__(self, duration_s: float) -> None:
        self.duration_s = duration_s
        self._term = -1
        self._noted = 0
        self._sent_at: OrderedDict[int, float] = OrderedDict()
        self._until = 0.0
        self._until_round = 0

    def note(self, term: int, sent_round: int, now: float) -> None:
        """Between taking a Ready and sending any of it: rounds up to ``sent_round``
        (``Ready.lease_round``) go out with it or went out before, so a round first noted
        here was not sent before ``now``."""
        if term != self._term or sent_round < self._noted:
            self._restart(term)
        for number in range(self._noted + 1, sent_round + 1):
            self._sent_at[number] = now
        self._noted = sent_round
        while len(self._sent_at) > MAX_ROUND_TIMES:
            self._sent_at.popitem(last=False)

    def until(self, term: int, confirmed: int) -> float:
        """When the lease of round ``confirmed`` (the newest a quorum answered in
        ``term``) ends; 0 if this host cannot tell."""
        if term != self._term or confirmed == 0:
            return 0.0
        if confirmed > self._until_round:
            sent_at = self._sent_at.get(confirmed)
            if sent_at is not None:
                self._until, self._until_round = sent_at + self.duration_s, confirmed
            while self._sent_at and next(iter(self._sent_at)) <= confirmed:
                self._sent_at.popitem(last=False)
        return self._until

    def _restart(self, term: int) -> None:
        self._term = term
        self._noted = 0
        self._sent_at.clear()
        self._until = 0.0
        self._until_round = 0
