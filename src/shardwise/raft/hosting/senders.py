"""Which incoming Raft messages a replica lets reach its core.

The transport authenticates the node a message comes from (with TLS, by its node
certificate), but any node of the cluster can reach any group: a server of group 2 is a
legitimate node and still has no business in group 1's elections. A message whose
sender is not a member of the group as this replica knows it is dropped and counted,
whatever it says: a non-member can neither raise a term (and so depose a leader, or keep
a group leaderless with term + 1 every few hundred milliseconds), nor win a vote, nor
act as a leader (append or install a snapshot).

**As this replica knows it** means: the voters and learners of the membership its core
has applied, plus every node named by a membership entry still in its log past that
point (a change under way: both the old configuration and the one being moved to). So

* a node being **added** is known to every replica from the moment the change reaches
  its log, before it commits: the leader starts replicating to it only after it commits,
  and its first vote can only come later still;
* a **joining** replica starts from its group's founding membership (every server is
  started with it, ``--peer``), whose leader it accepts; as it replays the log it learns
  every change in order, so the leader that added it is known to it before anything that
  leader wrote about it;
* a **removed** node is dropped by each replica once that replica has applied its
  removal: the classic disruption of a removed server that keeps campaigning with
  ever-higher terms is gone too;
* a replica whose core knows no membership at all (a core started without one: no
  server does that) accepts every sender until it learns one.

Known limit: a replica cut off while its group replaced a majority of its members and
elected one of the new ones cannot hear that leader (it is not in the replica's log
yet): the replica stays behind, the group goes on without it, and an operator restores
it (a fresh data directory, or the founders' membership updated). Accepting unknown
leaders instead would let any node of the cluster write into the group's log.

Two checks apply to every sender, member or not: a term above :data:`MAX_ACCEPTED_TERM`
(so large that no real group reaches it, and that counting elections on from it could
overflow the 64-bit fields) is dropped, and so is a snapshot chunk whose membership does
not decode (installing it would halt the replica).
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import TYPE_CHECKING, Final

from shardwise.errors import RaftError
from shardwise.raft.messages import (
    EntryKind,
    InstallSnapshot,
    Membership,
    Message,
    decode_conf_change,
    decode_membership,
)

if TYPE_CHECKING:
    from shardwise.raft.node import RaftNode

logger = logging.getLogger("shardwise.raft.host")

MAX_ACCEPTED_TERM: Final = 2**62
"""The largest term a message may carry: at an election per millisecond a group takes
146 million years to get there, and every term arithmetic from it (a new election, +1)
stays far inside the signed 64 bits terms are stored in."""

MAX_LOGGED_SENDERS: Final = 64
"""Distinct dropped senders logged at WARNING; later ones are only counted (a flood of
forged ids must not become a flood of log lines)."""

NON_MEMBER: Final = "non_member"
TERM_TOO_LARGE: Final = "term_too_large"
BAD_SNAPSHOT: Final = "bad_snapshot_membership"


class SenderFilter:
    """Decides, per message, whether it reaches the core; counts what it drops."""

    __slots__ = ("_logged", "_membership", "_node_id", "_pending", "_scanned", "dropped")

    def __init__(self, node_id: str) -> None:
        self._node_id = node_id
        self.dropped: Counter[str] = Counter()
        """Messages dropped, by reason (``non_member``, ``term_too_large``,
        ``bad_snapshot_membership``)."""
        self._logged: set[str] = set()
        self._membership: Membership | None = None
        """The applied membership the pending names were gathered against."""
        self._pending: set[str] = set()
        """Nodes named by membership entries past the applied index."""
        self._scanned = 0
        """The last log index looked at for ``_pending``."""

    def admit(self, node: RaftNode, m: Message) -> bool:
        if m.term > MAX_ACCEPTED_TERM:
            return self._drop(TERM_TOO_LARGE, m)
        if isinstance(m, InstallSnapshot) and m.meta.config:
            try:
                decode_membership(m.meta.config)
            except RaftError:
                return self._drop(BAD_SNAPSHOT, m)
        membership = node.membership
        if m.sender in membership.voters or m.sender in membership.learners:
            return True
        if not membership.voters and not membership.learners:
            return True  # knows no membership yet (see the module's docstring)
        if m.sender in self._pending_members(node):
            return True
        return self._drop(NON_MEMBER, m)

    def _pending_members(self, node: RaftNode) -> set[str]:
        """Nodes named by membership entries in the log past the applied index, gathered
        incrementally: each entry is looked at once, until the applied membership
        changes (then the pending changes are gathered again from the applied index)."""
        log = node.log
        if node.membership is not self._membership or log.last_index() < self._scanned:
            self._membership = node.membership
            self._pending = set()
            self._scanned = log.applied
        start = max(self._scanned, log.applied, log.offset) + 1
        for index in range(start, log.last_index() + 1):
            entry = log.entries[index - log.offset - 1]
            if not entry.data:
                continue
            try:
                if entry.data[0] == EntryKind.CONF_CHANGE:
                    self._pending.add(decode_conf_change(entry).node)
                elif entry.data[0] == EntryKind.MEMBERSHIP:
                    named = decode_membership(entry.data[1:])
                    self._pending.update(named.voters, named.learners)
            except RaftError:
                pass  # undecodable: applying it will halt the replica; it names nobody
        self._scanned = max(self._scanned, log.last_index())
        return self._pending

    def _drop(self, reason: str, m: Message) -> bool:
        self.dropped[reason] += 1
        key = f"{reason}:{m.sender}"
        if key not in self._logged and len(self._logged) < MAX_LOGGED_SENDERS:
            self._logged.add(key)
            logger.warning(
                "%s: dropped %s from %r (term %d): %s",
                self._node_id,
                type(m).__name__,
                m.sender,
                m.term,
                reason.replace("_", " "),
            )
        return False
