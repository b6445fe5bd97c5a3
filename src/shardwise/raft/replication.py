"""The parts of the Raft core that move data between nodes: the leader's replication
(appends with flow control, snapshot streaming, commitment), both ends of a snapshot
transfer, and ReadIndex reads. A mixin of :class:`~shardwise.raft.node.RaftNode`, split
out to keep each module readable; it holds no state of its own.
"""

from __future__ import annotations

from collections.abc import Iterable

from shardwise.raft.log import RaftLog
from shardwise.raft.messages import (
    AppendEntries,
    AppendResponse,
    Heartbeat,
    HeartbeatResponse,
    InstallSnapshot,
    Membership,
    Message,
    ReadIndexRequest,
    ReadIndexResponse,
    SnapshotResponse,
    TimeoutNow,
    decode_membership,
)
from shardwise.raft.progress import Progress, ProgressState
from shardwise.raft.reads import PendingReads
from shardwise.raft.ready import (
    MAX_APPEND_BYTES,
    MAX_PENDING_READS,
    MAX_SNAPSHOT_BYTES,
    SNAPSHOT_CHUNK_BYTES,
    IncomingSnapshot,
    ReadState,
    Role,
)
from shardwise.storage.types import LogEntry, SnapshotMeta, entry_size


class Replication:
    # State owned by RaftNode, declared here for the type checker.
    id: str
    term: int
    lead: str | None
    log: RaftLog
    membership: Membership
    progress: dict[str, Progress]
    transferee: str | None
    _msgs: list[Message]
    _reads: PendingReads
    _read_states: list[ReadState]
    _dropped_reads: list[bytes]
    _snapshot_data: bytes
    _incoming: tuple[SnapshotMeta, bytearray] | None
    _installed: IncomingSnapshot | None
    _uncommitted_bytes: int
    _read_heartbeat_pending: bool
    _answers_heard: int

    role: Role

    def is_leader(self) -> bool:
        return self.role is Role.LEADER

    # --- membership helpers --------------------------------------------------------------

    @property
    def voters(self) -> frozenset[str]:
        return self.membership.voters

    def members(self) -> list[str]:
        return sorted(self.membership.voters | self.membership.learners)

    def peers(self) -> list[str]:
        return [n for n in self.members() if n != self.id]

    def promotable(self) -> bool:
        return self.id in self.membership.voters

    def quorum(self) -> int:
        return len(self.voters) // 2 + 1

    @property
    def leader(self) -> str | None:
        return self.lead

    def _send(self, message: Message) -> None:
        self._msgs.append(message)

    def read_index(self, context: bytes) -> None:
        """Ask for a linearizable read; a ReadState with ``context`` comes back in a Ready.

        ``context`` must be unique among reads in flight. With no leader known, the read
        comes back in ``Ready.dropped_reads`` instead.
        """
        if self.role is Role.LEADER:
            self._leader_read(context, origin=self.id)
        elif self.lead is None:
            self._dropped_reads.append(context)
        else:
            self._send(
                ReadIndexRequest(term=self.term, sender=self.id, to=self.lead, context=context)
            )

    def _leader_read(self, context: bytes, origin: str) -> None:
        if len(self._reads) >= MAX_PENDING_READS:
            self._fail_read(context, origin)
            return
        committed_in_term = self.log.term_or_none(self.log.committed) == self.term
        if len(self.voters) == 1 and committed_in_term:
            self._deliver_read(ReadState(self.log.committed, context), origin)
            return
        self._reads.add(context, origin, self.log.committed if committed_in_term else None, self.id)
        if committed_in_term:
            # At the next ready(), one heartbeat for the newest read confirms every read
            # queued before it: many reads between two Readys cost one round, not many.
            self._read_heartbeat_pending = True

    def _fail_read(self, context: bytes, origin: str) -> None:
        if origin == self.id:
            self._dropped_reads.append(context)
        # A forwarded read is simply not answered: the follower's host times it out.

    def _deliver_read(self, state: ReadState, origin: str) -> None:
        if origin == self.id:
            self._read_states.append(state)
        else:
            self._send(
                ReadIndexResponse(
                    term=self.term,
                    sender=self.id,
                    to=origin,
                    context=state.context,
                    index=state.index,
                )
            )
            # The follower serves the read once it has applied ``state.index``: tell it
            # the commit index now rather than at the next append or heartbeat.
            if origin in self.progress:
                self._send_append(origin)

    def _handle_snapshot_chunk(self, m: InstallSnapshot) -> None:
        def answer(offset: int, *, done: bool = False, reject: bool = False) -> None:
            self._send(
                SnapshotResponse(
                    term=self.term,
                    sender=self.id,
                    to=m.sender,
                    index=m.meta.index,
                    offset=offset,
                    done=done,
                    reject=reject,
                )
            )

        if m.total > MAX_SNAPSHOT_BYTES:
            answer(0, reject=True)
            return
        if m.meta.index <= self.log.committed:
            answer(m.total, done=True)  # we already have all of it
            return
        if self._incoming is None or self._incoming[0] != m.meta or m.offset == 0:
            self._incoming = (m.meta, bytearray())
        buffer = self._incoming[1]
        if m.offset != len(buffer):
            answer(len(buffer))  # resume from what we have
            return
        buffer.extend(m.data)
        if not m.done:
            answer(len(buffer))
            return
        self._incoming = None
        if len(buffer) != m.total:
            answer(0)  # inconsistent transfer: start over
            return
        self._install_snapshot(m.meta, bytes(buffer))
        answer(m.total, done=True)

    def _install_snapshot(self, meta: SnapshotMeta, data: bytes) -> None:
        if self.log.matches(meta.index, meta.term):
            self.log.commit_to(meta.index)  # our log already holds it: just commit
            return
        self.log.restore(meta)
        self._snapshot_data = data
        if meta.config:
            self.membership = decode_membership(meta.config)
        self._installed = IncomingSnapshot(meta, data)

    # --- the leader ----------------------------------------------------------------------

    def _dispatch_leader(self, m: Message) -> None:
        pr = self.progress.get(m.sender)
        if pr is None:
            return
        pr.recent_active = True
        self._answers_heard += 1
        pr.heard = self._answers_heard
        if isinstance(m, AppendResponse):
            self._handle_append_response(m, pr)
            self._acknowledge_read(m.sender, m.context)
        elif isinstance(m, HeartbeatResponse):
            pr.probe_sent = False
            if pr.state is ProgressState.REPLICATE and pr.paused():
                # The follower is reachable but a full window of appends went unanswered:
                # they may all be lost. Free one slot so an append goes out; if the
                # follower lacks what came before it, it rejects and we fall back to
                # probing, instead of waiting forever on acknowledgements that never come.
                pr.free_first()
            if pr.state is ProgressState.SNAPSHOT:
                self._send_snapshot_chunk(m.sender, pr)
            elif pr.match < self.log.last_index():
                self._send_append(m.sender)
            self._acknowledge_read(m.sender, m.context)
        elif isinstance(m, SnapshotResponse):
            self._handle_snapshot_response(m, pr)
        elif isinstance(m, ReadIndexRequest):
            self._leader_read(m.context, origin=m.sender)

    def _acknowledge_read(self, sender: str, context: bytes) -> None:
        """A peer answered a heartbeat or an append that carried a read's context: it
        still followed this leader after the read arrived (its answer is of our term)."""
        if context and sender in self.voters:
            for state, origin in self._reads.acknowledge(context, sender, self.quorum()):
                self._deliver_read(state, origin)

    def _handle_append_response(self, m: AppendResponse, pr: Progress) -> None:
        if m.reject:
            if m.index == 0 and m.hint_index == 0 and m.hint_term == 0:
                return  # a stale-term notice; the term check already handled it
            guess = m.hint_index + 1
            if m.hint_term > 0:
                guess = self.log.conflict_hint(m.hint_index, m.hint_term)[0] + 1
            if pr.reject(m.index, guess):
                self._send_append(m.sender)
            return
        was_paused = pr.paused()
        if pr.acknowledge(m.index):
            if pr.state is ProgressState.PROBE:
                pr.become_replicate()
            elif pr.state is ProgressState.SNAPSHOT and pr.match >= pr.snapshot_index:
                pr.become_probe()
                pr.become_replicate()
            # A new commit index is not broadcast on its own: followers learn it from the
            # next append or heartbeat (see ``_maybe_commit``).
            self._maybe_commit()
            if was_paused:
                self._send_append(m.sender)
            if m.sender == self.transferee and pr.match == self.log.last_index():
                self._send(TimeoutNow(term=self.term, sender=self.id, to=m.sender))
        while pr.next <= self.log.last_index() and not pr.paused():
            before = pr.next
            self._send_append(m.sender)
            if pr.next == before:
                break

    def _handle_snapshot_response(self, m: SnapshotResponse, pr: Progress) -> None:
        if pr.state is not ProgressState.SNAPSHOT or m.index != pr.snapshot_index:
            return
        if m.reject:
            pr.become_probe()
            return
        if m.done:
            pr.acknowledge(m.index)
            pr.become_probe()
            self._send_append(m.sender)
            return
        pr.snapshot_offset = m.offset
        self._send_snapshot_chunk(m.sender, pr)

    def _maybe_commit(self) -> bool:
        """Advance the commit index to what a quorum holds; whether it moved.

        Replication does not broadcast the new index (only a membership change, which is
        rare, still does): followers learn it from the next append (every append carries
        it) or heartbeat (every tick), or at once when one waits for it to serve a read
        (``_deliver_read``). Nothing else on a follower waits for it (a follower holds
        its applies until a tick anyway), and under load an append of its own per commit
        cost every round two more messages each way."""
        matches = sorted(
            (self.progress[v].match for v in self.voters if v in self.progress), reverse=True
        )
        if len(matches) < self.quorum():
            return False
        index = matches[self.quorum() - 1]
        # Figure 8: only an entry of the current term is committed by counting replicas.
        if index <= self.log.committed or self.log.term_or_none(index) != self.term:
            return False
        old = self.log.committed
        self.log.commit_to(index)
        for entry in self.log.slice(old + 1, index + 1, 1 << 62):
            self._uncommitted_bytes = max(0, self._uncommitted_bytes - entry_size(entry))
        if self.log.term_or_none(old) != self.term:
            for state, origin in self._reads.release_waiting(index, self.id, self.quorum()):
                self._deliver_read(state, origin)
            if self._reads.has_unconfirmed():
                self._broadcast_heartbeat(self._reads.last_context())
        return True

    def _broadcast_append(self) -> None:
        for peer in self.peers():
            self._send_append(peer)

    def _read_targets(self, candidates: Iterable[str], confirming: int) -> list[str]:
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

    def _broadcast_heartbeat(self, context: bytes) -> None:
        self._heartbeat(self.peers(), context)

    def _heartbeat(self, peers: Iterable[str], context: bytes) -> None:
        for peer in peers:
            pr = self.progress[peer]
            self._send(
                Heartbeat(
                    term=self.term,
                    sender=self.id,
                    to=peer,
                    commit=min(pr.match, self.log.committed),
                    context=context,
                )
            )

    def _send_append(self, peer: str, context: bytes = b"") -> bool:
        """Send ``peer`` what it lacks (or start a snapshot); True if an append went out."""
        pr = self.progress[peer]
        if pr.paused():
            return False
        prev = pr.next - 1
        prev_term = self.log.term_or_none(prev)
        if prev_term is None:
            self._start_snapshot(peer, pr)
            return False
        entries: list[LogEntry] = []
        if pr.next <= self.log.last_index():
            entries = self.log.slice(pr.next, self.log.last_index() + 1, MAX_APPEND_BYTES)
        self._send(
            AppendEntries(
                term=self.term,
                sender=self.id,
                to=peer,
                prev_index=prev,
                prev_term=prev_term,
                entries=tuple(entries),
                commit=self.log.committed,
                context=context,
            )
        )
        last = entries[-1].index if entries else prev
        pr.sent(last, sum(entry_size(e) for e in entries))
        return True

    def _start_snapshot(self, peer: str, pr: Progress) -> None:
        pr.become_snapshot(self.log.snapshot.index)
        self._send_snapshot_chunk(peer, pr)

    def _send_snapshot_chunk(self, peer: str, pr: Progress) -> None:
        if pr.snapshot_index != self.log.snapshot.index:
            pr.become_snapshot(self.log.snapshot.index)  # a newer snapshot replaced it
        data = self._snapshot_data
        offset = min(pr.snapshot_offset, len(data))
        chunk = data[offset : offset + SNAPSHOT_CHUNK_BYTES]
        self._send(
            InstallSnapshot(
                term=self.term,
                sender=self.id,
                to=peer,
                meta=self.log.snapshot,
                offset=offset,
                total=len(data),
                data=bytes(chunk),
                done=offset + len(chunk) >= len(data),
            )
        )
