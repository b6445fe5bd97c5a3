"""ReadIndex: linearizable reads, served at the leader's commit index once a quorum has
confirmed that it still leads.

A read is safe to serve at index ``i`` once (1) the leader has committed an entry of its
own term, so ``i`` covers everything committed before it was elected, and (2) a quorum has
answered a heartbeat sent after the read arrived, so no newer leader existed. Reads are
confirmed in arrival order: a quorum answering the heartbeat of one read confirms every
read queued before it too.

:class:`PendingReads` is the leader's queue; :class:`ReadIndex` is the part of the core
that owns it and the reads' answers for the next ``Ready``.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

from shardwise.raft.messages import ReadIndexRequest, ReadIndexResponse
from shardwise.raft.ready import MAX_PENDING_READS, ReadState, Role

if TYPE_CHECKING:
    from shardwise.raft.node import RaftNode

FORWARDED_READ_WAIT_ELECTIONS: Final = 2
"""How long a follower's read may wait, in election timeouts (1 s with the servers' 50 ms
ticks and 10-tick elections), for the leader's answer and then for its own log to commit
the answer's index. Past it the read is dropped, so the client tries another replica
(the leader) well within its own attempt timeout (2 s), instead of waiting that out on a
replica that cannot serve it: its leader is gone, or its log is behind (it lost entries,
or is far behind). A healthy follower needs a few round trips; two election timeouts is
also when it would have started an election if it had heard nothing."""


@dataclass(slots=True)
class _Read:
    index: int | None
    """The commit index to serve at; None until the leader commits an entry of its term."""
    origin: str
    acks: set[str] = field(default_factory=set)


class PendingReads:
    __slots__ = ("_queue",)

    def __init__(self) -> None:
        self._queue: OrderedDict[bytes, _Read] = OrderedDict()

    def __len__(self) -> int:
        return len(self._queue)

    def add(self, context: bytes, origin: str, index: int | None, self_id: str) -> None:
        self._queue[context] = _Read(index, origin, {self_id})

    def acknowledge(self, context: bytes, sender: str, quorum: int) -> list[tuple[ReadState, str]]:
        read = self._queue.get(context)
        if read is None or read.index is None:
            return []
        read.acks.add(sender)
        if len(read.acks) < quorum:
            return []
        confirmed: list[tuple[ReadState, str]] = []
        while self._queue:
            key, queued = self._queue.popitem(last=False)
            if queued.index is not None:
                confirmed.append((ReadState(queued.index, key), queued.origin))
            if key == context:
                break
        return confirmed

    def release_waiting(self, index: int, self_id: str, quorum: int) -> list[tuple[ReadState, str]]:
        """The leader committed its first entry: waiting reads get an index. With a single
        voter they are confirmed at once; otherwise a heartbeat round must confirm them."""
        for read in self._queue.values():
            if read.index is None:
                read.index = index
        if quorum > 1:
            return []
        released = [(ReadState(r.index or index, k), r.origin) for k, r in self._queue.items()]
        self._queue.clear()
        return released

    def has_unconfirmed(self) -> bool:
        return bool(self._queue)

    def last_context(self) -> bytes:
        return next(reversed(self._queue))

    def drop_all(self, self_id: str) -> list[bytes]:
        """Forget every pending read; returns the contexts of the local ones to fail."""
        local = [k for k, r in self._queue.items() if r.origin == self_id]
        self._queue.clear()
        return local


class ReadIndex:
    """A node's reads: the leader's queue, and the answers and failures for the next
    ``Ready``. Followers forward their reads to the leader."""

    __slots__ = (
        "_forwarded",
        "_held",
        "_held_min",
        "_node",
        "_pending",
        "_ticks",
        "dropped",
        "heartbeat_due",
        "states",
    )

    def __init__(self, node: RaftNode) -> None:
        self._node = node
        self._pending = PendingReads()
        self._ticks = 0
        self._forwarded: OrderedDict[bytes, int] = OrderedDict()
        """A follower's reads sent to the leader, each with the tick it is dropped at
        (in the order sent, so the first expires first)."""
        self._held: dict[bytes, int] = {}
        """Forwarded reads the leader answered with an index this log has not committed
        yet: handed to the host once it has (or dropped at their deadline)."""
        self._held_min = 0
        """The smallest index in ``_held`` (0 if empty)."""
        self.states: list[ReadState] = []
        """Reads that may be served once the state machine has applied their index."""
        self.dropped: list[bytes] = []
        """Contexts of local reads that cannot be served here."""
        self.heartbeat_due = False
        """Reads arrived since the last ready(): one heartbeat, for the newest, confirms all."""

    def request(self, context: bytes) -> None:
        """A local read (see ``RaftNode.read_index``)."""
        node = self._node
        if node.role is Role.LEADER:
            self.serve(context, origin=node.id)
        elif node.lead is None:
            self.dropped.append(context)
        else:
            wait = FORWARDED_READ_WAIT_ELECTIONS * node.config.election_ticks
            self._forwarded[context] = self._ticks + wait
            node.emit(
                ReadIndexRequest(term=node.term, sender=node.id, to=node.lead, context=context)
            )

    def serve(self, context: bytes, origin: str) -> None:
        """As leader: queue a read from ``origin`` (this node or a follower)."""
        node = self._node
        if len(self._pending) >= MAX_PENDING_READS:
            self._fail(context, origin)
            return
        committed_in_term = node.log.term_or_none(node.log.committed) == node.term
        if len(node.tracker.voters) == 1 and committed_in_term:
            self._deliver(ReadState(node.log.committed, context), origin)
            return
        self._pending.add(
            context, origin, node.log.committed if committed_in_term else None, node.id
        )
        if committed_in_term:
            # At the next ready(), one heartbeat for the newest read confirms every read
            # queued before it: many reads between two Readys cost one round, not many.
            self.heartbeat_due = True

    def answered(self, m: ReadIndexResponse) -> None:
        """The leader answered a read this follower forwarded. It is handed to the host
        once this log has committed the read's index: before that the host could only
        wait, and if this log is behind (it lost entries), for longer than the client."""
        if m.context not in self._forwarded or m.context in self._held:
            return  # dropped already, answered already, or not ours (a previous run's)
        if m.index <= self._node.log.committed:
            del self._forwarded[m.context]
            self.states.append(ReadState(m.index, m.context))
            return
        self._held[m.context] = m.index
        self._held_min = min(self._held_min or m.index, m.index)

    def tick(self) -> None:
        """Drop the forwarded reads that waited too long (``FORWARDED_READ_WAIT_ELECTIONS``)."""
        self._ticks += 1
        forwarded = self._forwarded
        if not forwarded or next(iter(forwarded.values())) > self._ticks:
            return
        while forwarded:
            context, deadline = next(iter(forwarded.items()))
            if deadline > self._ticks:
                break
            del forwarded[context]
            self.dropped.append(context)
            self._held.pop(context, None)
        self._held_min = min(self._held.values(), default=0)

    def _servable_held(self) -> bool:
        return bool(self._held) and self._held_min <= self._node.log.committed

    def _release_held(self) -> None:
        """Hand the host the held reads whose index this log has now committed."""
        committed = self._node.log.committed
        waiting: dict[bytes, int] = {}
        for context, index in self._held.items():
            if index <= committed:
                self._forwarded.pop(context, None)
                self.states.append(ReadState(index, context))
            else:
                waiting[context] = index
        self._held = waiting
        self._held_min = min(waiting.values(), default=0)

    def acknowledge(self, sender: str, context: bytes) -> None:
        """A peer answered a heartbeat or an append that carried a read's context: it
        still followed this leader after the read arrived (its answer is of our term)."""
        tracker = self._node.tracker
        if context and sender in tracker.voters:
            for state, origin in self._pending.acknowledge(context, sender, tracker.quorum()):
                self._deliver(state, origin)

    def release(self, index: int) -> None:
        """The leader committed the first entry of its term, at ``index``: reads waiting
        for it get that index, and a heartbeat round to confirm them."""
        node = self._node
        for state, origin in self._pending.release_waiting(index, node.id, node.tracker.quorum()):
            self._deliver(state, origin)
        if self._pending.has_unconfirmed():
            node.replication.broadcast_heartbeat(self._pending.last_context())

    def unconfirmed_context(self) -> bytes:
        """The newest unconfirmed read's context, for the per-tick heartbeat (a lost read
        heartbeat is sent again), or empty."""
        return self._pending.last_context() if self._pending.has_unconfirmed() else b""

    def take_heartbeat_context(self) -> bytes | None:
        """At ready(): the context a heartbeat round must carry for the reads that
        arrived since the last one, or None if none wait."""
        waiting = self.heartbeat_due and self._pending.has_unconfirmed()
        self.heartbeat_due = False
        return self._pending.last_context() if waiting else None

    def drop_all(self) -> None:
        """Leadership changed hands: forget every queued read, failing the local ones.
        A follower's forwarded reads not yet answered fail too: an answer from the old
        leader would be of an old term, which the node ignores, so they could only time
        out. (Those answered and held for the commit index stay: their index is valid.)"""
        self.dropped.extend(self._pending.drop_all(self._node.id))
        for context in [c for c in self._forwarded if c not in self._held]:
            del self._forwarded[context]
            self.dropped.append(context)

    def has_output(self) -> bool:
        return bool(self.heartbeat_due or self.states or self.dropped or self._servable_held())

    def take_output(self) -> tuple[list[ReadState], list[bytes]]:
        """The answered and the failed reads, for the Ready."""
        if self._servable_held():
            self._release_held()
        states, dropped = self.states, self.dropped
        self.states, self.dropped = [], []
        return states, dropped

    def _fail(self, context: bytes, origin: str) -> None:
        if origin == self._node.id:
            self.dropped.append(context)
        # A forwarded read is simply not answered: the follower's host times it out.

    def _deliver(self, state: ReadState, origin: str) -> None:
        node = self._node
        if origin == node.id:
            self.states.append(state)
            return
        node.emit(
            ReadIndexResponse(
                term=node.term,
                sender=node.id,
                to=origin,
                context=state.context,
                index=state.index,
            )
        )
        # The follower serves the read once it has applied ``state.index``: tell it
        # the commit index now rather than at the next append or heartbeat.
        if origin in node.tracker.progress:
            node.replication.send_append(origin)
