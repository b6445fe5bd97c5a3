"""What a replica tells its log about its group's leadership: elections, a new leader,
losing the lead, once each, at INFO.

These are the events an operator reads after a failover ("who led, who leads now, since
which term, why was there an election"), so each line names the group, the term and the
old and new leader. Everything else the core does is silent (a pre-vote that goes
nowhere, a heartbeat) or DEBUG.
"""

from __future__ import annotations

import logging

from shardwise.raft.node import RaftNode
from shardwise.raft.ready import Role

logger = logging.getLogger("shardwise.raft.host")


class LeadershipLog:
    """Compares the core's role, term and leader with what it saw last and logs the
    difference; :meth:`check` is cheap enough to call after every message."""

    __slots__ = ("_group", "_id", "_known_leader", "_leader", "_role", "_term")

    def __init__(self, node_id: str, group: str) -> None:
        self._id = node_id
        self._group = group
        self._role: Role | None = None
        self._term = -1
        self._leader: str | None = None
        self._known_leader: str | None = None
        """The last leader this replica knew of (kept while it has none)."""

    def started(self, node: RaftNode, detail: str) -> None:
        """The replica starts (its first start, or a restart on its data)."""
        self._role, self._term, self._leader = node.role, node.term, node.leader
        logger.info(
            "%s: %s replica starts in term %d (%s)", self._id, self._group, node.term, detail
        )

    def check(self, node: RaftNode) -> None:
        role, term, leader = node.role, node.term, node.leader
        if role is self._role and term == self._term and leader == self._leader:
            return
        was_role, was_term = self._role, self._term
        self._role, self._term, self._leader = role, term, leader
        before = self._known_leader
        if leader is not None:
            self._known_leader = leader
        if role is Role.LEADER and was_role is not Role.LEADER:
            logger.info(
                "%s: leads %s from term %d (%s)",
                self._id,
                self._group,
                term,
                f"the leader before was {before}" if before and before != self._id else
                "no leader before",
            )  # fmt: skip
        elif was_role is Role.LEADER and role is not Role.LEADER:
            logger.info(
                "%s: no longer leads %s: term %d (was %d), leader %s",
                self._id,
                self._group,
                term,
                was_term,
                leader or "not known yet",
            )
        elif role is Role.CANDIDATE and (was_role is not Role.CANDIDATE or term != was_term):
            if was_role is Role.CANDIDATE:
                reason = f"the election in term {was_term} found no winner"
            elif before is not None:
                reason = f"no word from leader {before}"
            else:
                reason = "no leader known"
            logger.info(
                "%s: starts an election for %s in term %d: %s", self._id, self._group, term, reason
            )
        elif role is Role.FOLLOWER and leader is not None and leader != before:
            logger.info(
                "%s: %s has a new leader, %s, in term %d (%s)",
                self._id,
                self._group,
                leader,
                term,
                f"was {before}" if before else "none known before",
            )
        else:
            logger.debug("%s: %s, term %d, leader %s", self._id, role.value, term, leader)
