"""The leader's replication: appends with flow control, heartbeats, snapshot streaming,
and commitment by quorum.

:class:`Replicator` is the part of the core that owns what only replication needs: the
uncommitted bytes behind the back-pressure limit, whether proposals wait to be sent,
and the snapshot data to stream to followers that fell behind the log. What it knows of
each follower is in the node's :class:`~shardwise.raft.tracker.ProgressTracker`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING

from shardwise.raft.messages import (
    AppendEntries,
    AppendResponse,
    Heartbeat,
    HeartbeatResponse,
    InstallSnapshot,
    Message,
    ReadIndexRequest,
    SnapshotResponse,
    TimeoutNow,
)
from shardwise.raft.progress import Progress, ProgressState
from shardwise.raft.ready import (
    MAX_APPEND_BYTES,
    MAX_UNCOMMITTED_BYTES,
    SNAPSHOT_CHUNK_BYTES,
    Role,
)
from shardwise.storage.types import LogEntry, entry_size

if TYPE_CHECKING:
    from shardwise.raft.node import RaftNode

logger = logging.getLogger("shardwise.raft.core")


class Replicator:
    __slots__ = ("_node", "_uncommitted_bytes", "broadcast_due", "snapshot_data")

    def __init__(self, node: RaftNode, snapshot_data: bytes) -> None:
        self._node = node
        self.snapshot_data = snapshot_data
        """The data of the log's snapshot, sent to followers that need entries before it."""
        self.broadcast_due = False
        """Entries were appended since the last ready(): they go out then, as one append
        per follower (proposals batch up)."""
        self._uncommitted_bytes = 0

    # --- the leader's own log ------------------------------------------------------------

    def start_term(self) -> None:
        """This node became leader: nothing of its own is uncommitted yet."""
        self._uncommitted_bytes = 0

    def has_room(self, size: int) -> bool:
        """Whether a proposal of ``size`` bytes stays under the back-pressure limit."""
        return self._uncommitted_bytes + size <= MAX_UNCOMMITTED_BYTES

    def append(self, payload: bytes) -> int:
        """Append an entry of the leader's term to its log; returns its index."""
        node = self._node
        entry = LogEntry(node.log.last_index() + 1, node.term, payload)
        node.log.append([entry])
        self._uncommitted_bytes += entry_size(entry)
        self.broadcast_due = True  # sent at the next ready(): proposals batch up
        return entry.index

    def flush(self, read_context: bytes | None) -> None:
        """At ready(): send what was appended since the last one. ``read_context`` is
        that of the reads waiting for a heartbeat round (None if none wait): they ride on
        the appends, and heartbeats make up the quorum if too few voters get one."""
        node = self._node
        if node.role is Role.LEADER:
            peers = node.tracker.peers()
            if self.broadcast_due:
                context = read_context or b""
                idle = [peer for peer in peers if not self.send_append(peer, context)]
                if context:
                    voters = node.tracker.voters
                    confirming = sum(1 for p in peers if p in voters and p not in idle)
                    self._heartbeat(node.tracker.read_targets(idle, confirming), context)
            elif read_context is not None:
                self._heartbeat(node.tracker.read_targets(peers, 0), read_context)
        self.broadcast_due = False

    # --- answers from followers ----------------------------------------------------------

    def handle_response(self, m: Message) -> None:
        """A message of the leader's term from a member, other than those every role
        handles."""
        node = self._node
        pr = node.tracker.progress.get(m.sender)
        if pr is None:
            return
        node.tracker.heard_from(pr)
        if isinstance(m, AppendResponse):
            self._handle_append_response(m, pr)
            node.reads.acknowledge(m.sender, m.context)
        elif isinstance(m, HeartbeatResponse):
            pr.probe_sent = False
            pr.space_low = m.space_low
            if pr.state is ProgressState.REPLICATE and pr.paused():
                # The follower is reachable but a full window of appends went unanswered:
                # they may all be lost. Free one slot so an append goes out; if the
                # follower lacks what came before it, it rejects and we fall back to
                # probing, instead of waiting forever on acknowledgements that never come.
                pr.free_first()
            if pr.state is ProgressState.SNAPSHOT:
                self._send_snapshot_chunk(m.sender, pr)
            elif pr.match < node.log.last_index():
                self.send_append(m.sender)
            node.reads.acknowledge(m.sender, m.context)
            node.lease.acknowledge(m.sender, m.round, node.tracker.voters, node.quorum())
        elif isinstance(m, SnapshotResponse):
            self._handle_snapshot_response(m, pr)
        elif isinstance(m, ReadIndexRequest):
            node.reads.serve(m.context, origin=m.sender)

    def _handle_append_response(self, m: AppendResponse, pr: Progress) -> None:
        node = self._node
        if m.reject:
            if m.index == 0 and m.hint_index == 0 and m.hint_term == 0:
                return  # a stale-term notice; the term check already handled it
            guess = m.hint_index + 1
            if m.hint_term > 0:
                guess = node.log.conflict_hint(m.hint_index, m.hint_term)[0] + 1
            # Log Matching: a follower entry with our term at that index proves that the
            # logs agree up to it.
            proven = m.hint_index if node.log.matches(m.hint_index, m.hint_term) else 0
            if m.index == pr.match > proven and pr.state is not ProgressState.SNAPSHOT:
                logger.warning(
                    "%s: follower %s lacks entry %d it acknowledged (match %d, its log "
                    "agrees up to %d): it lost data, or the answer is stale; probing it",
                    node.id,
                    m.sender,
                    m.index,
                    pr.match,
                    proven,
                )
            if pr.reject(m.index, guess, proven):
                self.send_append(m.sender)
            return
        was_paused = pr.paused()
        if pr.acknowledge(m.index):
            if pr.state is ProgressState.PROBE:
                pr.become_replicate()
            elif pr.state is ProgressState.SNAPSHOT and pr.match >= pr.snapshot_index:
                pr.become_probe()
                pr.become_replicate()
            # A new commit index is not broadcast on its own: followers learn it from the
            # next append or heartbeat (see ``maybe_commit``).
            self.maybe_commit()
            if was_paused:
                self.send_append(m.sender)
            if m.sender == node.transferee and pr.match == node.log.last_index():
                node.emit(TimeoutNow(term=node.term, sender=node.id, to=m.sender))
        while pr.next <= node.log.last_index() and not pr.paused():
            before = pr.next
            self.send_append(m.sender)
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
            self.send_append(m.sender)
            return
        pr.snapshot_offset = m.offset
        self._send_snapshot_chunk(m.sender, pr)

    def maybe_commit(self) -> bool:
        """Advance the commit index to what a quorum holds; whether it moved.

        Replication does not broadcast the new index (only a membership change, which is
        rare, still does): followers learn it from the next append (every append carries
        it) or heartbeat (every tick), or at once when one waits for it to serve a read
        (``ReadIndex._deliver``). Nothing else on a follower waits for it (a follower
        holds its applies until a tick anyway), and under load an append of its own per
        commit cost every round two more messages each way."""
        node = self._node
        log = node.log
        index = node.tracker.quorum_match()
        if index is None:
            return False
        # Figure 8: only an entry of the current term is committed by counting replicas.
        if index <= log.committed or log.term_or_none(index) != node.term:
            return False
        old = log.committed
        log.commit_to(index)
        for entry in log.slice(old + 1, index + 1, 1 << 62):
            self._uncommitted_bytes = max(0, self._uncommitted_bytes - entry_size(entry))
        if log.term_or_none(old) != node.term:
            node.reads.release(index)
        return True

    # --- sending -------------------------------------------------------------------------

    def broadcast_append(self) -> None:
        for peer in self._node.tracker.peers():
            self.send_append(peer)

    def broadcast_heartbeat(self, context: bytes) -> None:
        self._heartbeat(self._node.tracker.peers(), context)

    def _heartbeat(self, peers: Iterable[str], context: bytes) -> None:
        node = self._node
        number = node.lease.next_round(node.id) if node.config.lease_reads else 0
        for peer in peers:
            pr = node.tracker.progress[peer]
            node.emit(
                Heartbeat(
                    term=node.term,
                    sender=node.id,
                    to=peer,
                    commit=min(pr.match, node.log.committed),
                    context=context,
                    round=number,
                )
            )

    def send_append(self, peer: str, context: bytes = b"") -> bool:
        """Send ``peer`` what it lacks (or start a snapshot); True if an append went out."""
        node = self._node
        log = node.log
        pr = node.tracker.progress[peer]
        if pr.paused():
            return False
        prev = pr.next - 1
        prev_term = log.term_or_none(prev)
        if prev_term is None:
            pr.become_snapshot(log.snapshot.index)
            self._send_snapshot_chunk(peer, pr)
            return False
        entries: list[LogEntry] = []
        if pr.next <= log.last_index():
            entries = log.slice(pr.next, log.last_index() + 1, MAX_APPEND_BYTES)
        node.emit(
            AppendEntries(
                term=node.term,
                sender=node.id,
                to=peer,
                prev_index=prev,
                prev_term=prev_term,
                entries=tuple(entries),
                commit=log.committed,
                context=context,
            )
        )
        last = entries[-1].index if entries else prev
        pr.sent(last, sum(entry_size(e) for e in entries))
        return True

    def _send_snapshot_chunk(self, peer: str, pr: Progress) -> None:
        node = self._node
        snapshot = node.log.snapshot
        if pr.snapshot_index != snapshot.index:
            pr.become_snapshot(snapshot.index)  # a newer snapshot replaced it
        data = self.snapshot_data
        offset = min(pr.snapshot_offset, len(data))
        chunk = data[offset : offset + SNAPSHOT_CHUNK_BYTES]
        node.emit(
            InstallSnapshot(
                term=node.term,
                sender=node.id,
                to=peer,
                meta=snapshot,
                offset=offset,
                total=len(data),
                data=bytes(chunk),
                done=offset + len(chunk) >= len(data),
            )
        )
