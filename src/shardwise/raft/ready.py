"""What the core hands its host after each batch of input, and the knobs it runs with."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Final

from shardwise.raft.messages import Message
from shardwise.storage.types import HardState, LogEntry, SnapshotMeta

MAX_APPEND_BYTES: Final = 1 << 20
"""Entry bytes per append message (at least one entry is always sent)."""

MAX_APPLY_BYTES: Final = 8 << 20
"""Committed entry bytes handed to the state machine per Ready."""

MAX_UNCOMMITTED_BYTES: Final = 64 << 20
"""Bytes a leader accepts beyond its commit index before it drops proposals: back-pressure
instead of an unbounded log when followers cannot keep up."""

SNAPSHOT_CHUNK_BYTES: Final = 256 << 10
"""Snapshot bytes per InstallSnapshot chunk; each chunk is acknowledged before the next."""

MAX_SNAPSHOT_BYTES: Final = 4 << 30
"""A follower refuses a snapshot announced larger than this."""

MAX_PENDING_READS: Final = 4096
"""ReadIndex requests waiting for a quorum before new ones are refused."""


class Role(enum.Enum):
    FOLLOWER = "follower"
    PRE_CANDIDATE = "pre-candidate"
    CANDIDATE = "candidate"
    LEADER = "leader"


@dataclass(frozen=True, slots=True)
class RaftConfig:
    """Timing and behaviour of one node. Ticks are the host's unit of time."""

    election_ticks: int = 10
    """A follower that hears no leader for [election_ticks, 2 * election_ticks) ticks
    starts an election; a leader that cannot reach a quorum for election_ticks steps down."""
    heartbeat_ticks: int = 1
    pre_vote: bool = True
    """Ask for votes in a pre-election first, so a node cut off from the cluster cannot
    inflate its term and depose a healthy leader when it comes back."""
    check_quorum: bool = True
    """A leader steps down when it has not heard from a quorum in an election timeout;
    followers that heard from a leader recently ignore vote requests (a lease)."""
    lease_reads: bool = False
    """Let a leader serve linearizable reads from a lease (``raft/lease.py``) instead of a
    ReadIndex round each. Needs ``check_quorum``. A node then also refuses votes for its
    first election timeout after a (re)start, as if it had just heard from a leader: it
    may have answered the leader's heartbeat just before it crashed. The servers turn
    it on; off here so that the core's own tests elect at once."""
    catch_up_entries: int = 100
    """A learner may be promoted once it is within this many entries of the leader."""

    def __post_init__(self) -> None:
        if self.heartbeat_ticks < 1 or self.election_ticks <= self.heartbeat_ticks:
            raise ValueError("need 1 <= heartbeat_ticks < election_ticks")
        if self.lease_reads and not self.check_quorum:
            raise ValueError("lease_reads needs check_quorum (the followers' side of the lease)")


@dataclass(frozen=True, slots=True)
class ReadState:
    """A linearizable read may be served once the state machine has applied ``index``."""

    index: int
    context: bytes


@dataclass(frozen=True, slots=True)
class IncomingSnapshot:
    """A snapshot received from the leader: persist it, then restore the state machine."""

    meta: SnapshotMeta
    data: bytes


@dataclass(slots=True)
class Ready:
    """Work for the host, in this order: send ``early_messages`` (they may go before the
    write); persist ``snapshot`` (first: the entries may follow it), then ``entries``, then
    ``hard_state``, and sync if ``must_sync``; then send ``messages``; then apply
    ``committed`` and answer ``read_states``; then call ``advance(ready)``."""

    hard_state: HardState | None = None
    entries: list[LogEntry] = field(default_factory=list)
    snapshot: IncomingSnapshot | None = None
    messages: list[Message] = field(default_factory=list)
    early_messages: list[Message] = field(default_factory=list)
    """A leader's appends and heartbeats: safe to send before this Ready is persisted."""
    committed: list[LogEntry] = field(default_factory=list)
    read_states: list[ReadState] = field(default_factory=list)
    dropped_reads: list[bytes] = field(default_factory=list)
    lease_round: int = 0
    """The newest lease round numbered so far (``raft/lease.py``): every heartbeat in
    this Ready carries at most it, so a host that notes the time between taking the
    Ready and sending it knows no round it carries left before that time."""
    """Contexts of reads that cannot be served here (no leader, or leadership lost)."""
    must_sync: bool = False

    def is_empty(self) -> bool:
        return not (
            self.hard_state
            or self.entries
            or self.snapshot
            or self.messages
            or self.early_messages
            or self.committed
            or self.read_states
            or self.dropped_reads
        )
