"""The follower's side of replication: the leader's appends, heartbeats and snapshots.

:class:`Receiver` is the part of the core that owns what only a follower needs: what has
arrived of a snapshot the leader is sending in ``SNAPSHOT_CHUNK_BYTES`` chunks (each
acknowledged with the offset expected next, so a lost chunk is resent from where it
stopped and a new transfer starts over), and a completed snapshot waiting for the next
``Ready``. Its counterpart on the leader is :class:`~shardwise.raft.replication.Replicator`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

from shardwise.raft.messages import (
    AppendEntries,
    AppendResponse,
    Heartbeat,
    HeartbeatResponse,
    InstallSnapshot,
    SnapshotResponse,
    decode_membership,
)
from shardwise.raft.ready import MAX_SNAPSHOT_BYTES, IncomingSnapshot
from shardwise.storage.types import SnapshotMeta

if TYPE_CHECKING:
    from shardwise.raft.node import RaftNode


class _ChunkAnswer(NamedTuple):
    """What to tell the leader about a chunk, and the whole snapshot if it completed it."""

    offset: int
    done: bool = False
    reject: bool = False
    completed: bytes | None = None


class Receiver:
    __slots__ = ("_incoming", "_node", "installed")

    def __init__(self, node: RaftNode) -> None:
        self._node = node
        self._incoming: tuple[SnapshotMeta, bytearray] | None = None
        """The snapshot being received, and its bytes so far."""
        self.installed: IncomingSnapshot | None = None
        """A received snapshot the log now starts after, for the host to persist and
        restore (taken by the next Ready)."""

    def append(self, m: AppendEntries) -> None:
        """Take the entries that extend our log (cutting a conflicting suffix), or tell
        the leader where to look for the point where our logs agree."""
        node = self._node
        log = node.log
        if m.prev_index < log.committed:
            node.emit(
                AppendResponse(
                    term=node.term,
                    sender=node.id,
                    to=m.sender,
                    index=log.committed,
                    context=m.context,
                )
            )
            return
        if log.matches(m.prev_index, m.prev_term):
            conflict = log.find_conflict(m.entries)
            if conflict:
                log.append(m.entries[conflict - m.prev_index - 1 :])
            last_new = m.prev_index + len(m.entries)
            log.commit_to(min(m.commit, last_new))
            node.emit(
                AppendResponse(
                    term=node.term, sender=node.id, to=m.sender, index=last_new, context=m.context
                )
            )
            return
        hint_index, hint_term = log.conflict_hint(min(m.prev_index, log.last_index()), m.prev_term)
        node.emit(
            AppendResponse(
                term=node.term,
                sender=node.id,
                to=m.sender,
                index=m.prev_index,
                reject=True,
                hint_index=hint_index,
                hint_term=hint_term,
                context=m.context,
            )
        )

    def heartbeat(self, m: Heartbeat) -> None:
        """The leader's commit index, as far as it knows our log holds it."""
        node = self._node
        log = node.log
        log.commit_to(min(m.commit, log.last_index()))
        node.emit(
            HeartbeatResponse(
                term=node.term,
                sender=node.id,
                to=m.sender,
                context=m.context,
                round=m.round,
                space_low=node.space_low,
            )
        )
        if m.commit > log.last_index():
            # The leader sends a commit index only up to what we acknowledged, so we lost
            # entries we had synced (a damaged or cut log file). Say so as a rejection:
            # the leader then probes from our last entry and sends the rest. Otherwise,
            # with no new writes, nothing would ever tell it, and we would never catch up.
            # (After the heartbeat's answer, which would otherwise resend the probe.)
            node.emit(
                AppendResponse(
                    term=node.term,
                    sender=node.id,
                    to=m.sender,
                    index=m.commit,
                    reject=True,
                    hint_index=log.last_index(),
                    hint_term=log.last_term(),
                )
            )

    def snapshot_chunk(self, m: InstallSnapshot) -> None:
        """One chunk of the leader's snapshot; the last one installs it."""
        node = self._node
        answer = self._reassemble(m, node.log.committed)
        if answer.completed is not None:
            self._install(m.meta, answer.completed)
        node.emit(
            SnapshotResponse(
                term=node.term,
                sender=node.id,
                to=m.sender,
                index=m.meta.index,
                offset=answer.offset,
                done=answer.done,
                reject=answer.reject,
            )
        )

    def _install(self, meta: SnapshotMeta, data: bytes) -> None:
        node = self._node
        if node.log.matches(meta.index, meta.term):
            node.log.commit_to(meta.index)  # our log already holds it: just commit
            return
        node.log.restore(meta)
        node.replication.snapshot_data = data
        if meta.config:
            node.membership = decode_membership(meta.config)
        self.installed = IncomingSnapshot(meta, data)

    def _reassemble(self, m: InstallSnapshot, committed: int) -> _ChunkAnswer:
        """Take one chunk; ``committed`` is the follower's commit index."""
        if m.total > MAX_SNAPSHOT_BYTES:
            return _ChunkAnswer(0, reject=True)
        if m.meta.index <= committed:
            return _ChunkAnswer(m.total, done=True)  # we already have all of it
        if self._incoming is None or self._incoming[0] != m.meta or m.offset == 0:
            self._incoming = (m.meta, bytearray())
        buffer = self._incoming[1]
        if m.offset != len(buffer):
            return _ChunkAnswer(len(buffer))  # resume from what we have
        buffer.extend(m.data)
        if not m.done:
            return _ChunkAnswer(len(buffer))
        self._incoming = None
        if len(buffer) != m.total:
            return _ChunkAnswer(0)  # inconsistent transfer: start over
        return _ChunkAnswer(m.total, done=True, completed=bytes(buffer))
