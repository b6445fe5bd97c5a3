"""Who is in the group, and what the node knows of each member.

The counterpart of etcd-raft's tracker and quorum packages: the membership, each member's
:class:`~shardwise.raft.progress.Progress` (kept while leading), the votes of the election
under way, and the quorum arithmetic over them. It reads no log and sends nothing: the
core asks it questions and acts on the answers.
"""

from __future__ import annotations

from collections.abc import Iterable

from shardwise.errors import RaftError
from shardwise.raft.messages import ConfChange, ConfChangeKind, Membership
from shardwise.raft.progress import Progress


class ProgressTracker:
    __slots__ = ("_answers_heard", "membership", "node_id", "progress", "votes")

    def __init__(self, node_id: str, membership: Membership) -> None:
        self.node_id = node_id
        self.membership = membership
        self.progress: dict[str, Progress] = {}
        """Each member's progress, this node's own included; empty unless leading."""
        self.votes: dict[str, bool] = {}
        """The answers to this node's (pre-)campaign: granted or not, by voter."""
        self._answers_heard = 0
        """Answers heard from followers as leader: a clock for ``Progress.heard``."""

    # --- membership ----------------------------------------------------------------------

    @property
    def voters(self) -> frozenset[str]:
        return self.membership.voters

    def members(self) -> list[str]:
        return sorted(self.membership.voters | self.membership.learners)

    def peers(self) -> list[str]:
        return [n for n in self.members() if n != self.node_id]

    def promotable(self) -> bool:
        return self.node_id in self.membership.voters

    def quorum(self) -> int:
        return len(self.voters) // 2 + 1

    def apply_change(self, change: ConfChange) -> None:
        """A committed one-server change takes effect (the core checked it when proposed)."""
        voters, learners = set(self.membership.voters), set(self.membership.learners)
        node = change.node
        if change.kind is ConfChangeKind.ADD_LEARNER:
            learners.add(node)
        elif change.kind is ConfChangeKind.PROMOTE:
            learners.discard(node)
            voters.add(node)
        else:
            voters.discard(node)
            learners.discard(node)
        if not voters:
            raise RaftError("a membership change left no voters")  # refused when proposed
        self.membership = Membership(frozenset(voters), frozenset(learners))

    # --- votes ---------------------------------------------------------------------------

    def reset_votes(self) -> None:
        self.votes = {}

    def record_vote(self, node: str, granted: bool) -> None:
        self.votes.setdefault(node, granted)  # a voter's first answer counts

    def granted_votes(self) -> int:
        return sum(1 for node, granted in self.votes.items() if granted and node in self.voters)

    def rejected_votes(self) -> int:
        return sum(1 for node, granted in self.votes.items() if not granted and node in self.voters)

    # --- progress (while leading) --------------------------------------------------------

    def start_leading(self, last_index: int, own_stable: int) -> None:
        """Track every member from the leader's log end; the leader's own copy counts
        only up to what it has persisted."""
        self.progress = {n: Progress(last_index + 1) for n in self.members()}
        for pr in self.progress.values():
            pr.recent_active = True
        own = self.progress[self.node_id]
        own.become_replicate()
        own.match = own_stable

    def stop_leading(self) -> None:
        self.progress = {}

    def track(self, node: str, next_index: int) -> Progress:
        """A learner joined while this node leads: start sending it from ``next_index``."""
        pr = self.progress[node] = Progress(next_index)
        pr.recent_active = True
        return pr

    def heard_from(self, pr: Progress) -> None:
        pr.recent_active = True
        self._answers_heard += 1
        pr.heard = self._answers_heard

    def quorum_active(self) -> bool:
        """Whether a quorum (this node included) was heard from since the last reset."""
        active = sum(
            1
            for n in self.voters
            if n == self.node_id or (n in self.progress and self.progress[n].recent_active)
        )
        return active >= self.quorum()

    def reset_recent_active(self) -> None:
        for node, pr in self.progress.items():
            pr.recent_active = node == self.node_id

    def quorum_match(self) -> int | None:
        """The highest index a quorum of voters holds (None if too few are tracked)."""
        matches = sorted(
            (self.progress[v].match for v in self.voters if v in self.progress), reverse=True
        )
        if len(matches) < self.quorum():
            return None
        return matches[self.quorum() - 1]

    def read_targets(self, candidates: Iterable[str], confirming: int) -> list[str]:
        """Whom a heartbeat for reads goes to: as few voters as make a quorum with the
        leader and the ``confirming`` voters whose appends carry the reads already, those
        heard from most recently first. A read needs a quorum's answer, not everyone's:
        asking the others too costs each of them a wake-up and an answer per round.
        If a chosen voter does not answer, the next tick's heartbeat asks everyone (and
        its silence makes the others more recent for the next round)."""
        needed = self.quorum() - 1 - confirming
        if needed <= 0:
            return []
        voters = [p for p in candidates if p in self.voters]
        voters.sort(key=lambda p: (-self.progress[p].heard, p))
        return voters[:needed]
