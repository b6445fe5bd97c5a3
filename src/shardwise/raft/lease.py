"""The leader's lease rounds: which of its heartbeat rounds a quorum has answered.

A follower that answers a heartbeat has just heard from its leader, and for an election
timeout after that it refuses to vote for anyone else (``RaftConfig.check_quorum``; a
restarted node refuses for its first election timeout too, ``RaftConfig.lease_reads``).
So once a quorum has answered the heartbeat round sent at time *t*, no other leader can
be elected before *t* plus (almost) an election timeout, and until then the leader may
serve a linearizable read at its commit index without a ReadIndex round of its own.

The core has no clock: it numbers its heartbeat rounds and tracks which one a quorum
last answered (:attr:`LeaseRounds.confirmed`); the host notes when each round left
(no later than it was sent) and turns the confirmed round into a lease that ends at a
time (``raft/hosting/lease.py``). A leadership transfer gives the lease up for the rest
of the term: the transferee campaigns with ``transfer`` set, which voters grant inside
their own lease.
"""

from __future__ import annotations

from typing import Final

MAX_OPEN_ROUNDS: Final = 64
"""Heartbeat rounds awaiting a quorum's answers that are remembered; an older one is
forgotten (answers to it then renew nothing). At one round per tick and per batch of
reads, an unanswered round older than this is long past being useful."""


class LeaseRounds:
    """A leader's numbered heartbeat rounds and the newest one a quorum answered."""

    __slots__ = ("_acks", "confirmed", "forfeited", "sent")

    def __init__(self) -> None:
        self.sent = 0
        """The number of the newest round sent this term (0: none)."""
        self.confirmed = 0
        """The newest round a quorum of voters (this node included) answered (0: none)."""
        self.forfeited = False
        """A leadership transfer started this term: no lease until the next term."""
        self._acks: dict[int, set[str]] = {}

    def reset(self) -> None:
        """A new term, or a change of role: nothing said before counts."""
        self.sent = self.confirmed = 0
        self.forfeited = False
        self._acks.clear()

    def next_round(self, self_id: str) -> int:
        """Number a new heartbeat round; the leader has answered it itself."""
        self.sent += 1
        self._acks[self.sent] = {self_id}
        if len(self._acks) > MAX_OPEN_ROUNDS:
            del self._acks[min(self._acks)]
        return self.sent

    def acknowledge(self, sender: str, number: int, voters: frozenset[str], quorum: int) -> None:
        """``sender`` answered round ``number`` (an answer of this term)."""
        acks = self._acks.get(number)
        if acks is None or sender not in voters:
            return
        acks.add(sender)
        if len(acks & voters) >= quorum:
            self.confirmed = max(self.confirmed, number)
            for done in [n for n in self._acks if n <= number]:
                del self._acks[done]
