"""The knobs of one :class:`~shardwise.raft.host.RaftHost`, its seams' types and its status.

The core's own knobs are in :class:`~shardwise.raft.ready.RaftConfig`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final, Protocol, TypeAlias

from shardwise.raft.messages import Message
from shardwise.raft.ready import Role

DEFAULT_TICK_INTERVAL_S: Final = 0.1
"""With the core's default of 10 election ticks: heartbeats every 100 ms, elections after
1-2 s of silence (etcd's defaults)."""

DEFAULT_SNAPSHOT_EVERY: Final = 10_000
"""Applied entries between snapshots: bounds the log kept in memory and on disk, and the
replay after a restart."""

MAX_PENDING_PROPOSALS: Final = 10_000
"""Proposals (and membership changes) waiting to be applied, per host, before new ones are
refused: back-pressure instead of unbounded memory when the group falls behind."""

MAX_PENDING_READS: Final = 4_096
"""Linearizable reads in flight per host (the core bounds a leader's queue alike)."""

MAX_PENDING_TRANSFERS: Final = 16
"""Leadership transfers waited on at once; more are refused."""

Send: TypeAlias = Callable[[Message], None]
"""Hands one message to the transport; must neither block nor raise for delivery."""


class BlockingRunner(Protocol):
    """Runs blocking storage work (fsync) off the event loop; ``asyncio.to_thread`` is one."""

    def __call__(self, fn: Callable[[], None], /) -> Awaitable[None]: ...


async def run_inline(fn: Callable[[], None]) -> None:
    """A :class:`BlockingRunner` that blocks the loop: for in-memory storage in tests and
    deterministic simulations, where a thread would only add scheduling noise."""
    fn()


@dataclass(frozen=True, slots=True)
class HostOptions:
    """Timing and limits of one host; the core's own knobs are in ``RaftConfig``."""

    tick_interval_s: float = DEFAULT_TICK_INTERVAL_S
    snapshot_every: int = DEFAULT_SNAPSHOT_EVERY
    max_pending_proposals: int = MAX_PENDING_PROPOSALS
    max_pending_reads: int = MAX_PENDING_READS
    defer_leader_snapshots: bool = True
    """A leader's snapshot pauses its whole group (a follower's only itself: the other
    replicas still make a quorum), so a leader snapshots only at the hard limits
    (``SNAPSHOT_DEFER_LIMIT``, ``MAX_LOG_BYTES_BETWEEN_SNAPSHOTS``) and leaves the
    regular ones to its followers."""
    sync_in_loop_unless_leading: bool = False
    """A follower (or candidate) writes and fsyncs in the event loop instead of through
    ``run_blocking``. Nothing it could do meanwhile is worth the hand-off to a thread
    and back: its answer waits for the fsync anyway, and what arrives during it waits
    in the socket and makes the next Ready's batch larger. A leader always syncs through
    ``run_blocking``: its appends to the followers overlap its own write. Off by default
    so that simulations exercise a follower's core stepping while its fsync runs; the
    servers turn it on."""

    follower_apply_batch: int = 0
    """A follower holds back up to this many committed entries and applies them together
    (at the latest each tick, and at once when a read here, a snapshot or leadership
    needs them): one long run of applying instead of a few entries per wake-up, which on
    a busy machine costs several times as much per entry (cold caches). Nothing waits
    on a follower's apply: its answers to the leader are about its log. 0: apply each
    Ready's entries at once (the default; the servers turn it on)."""

    check_senders: bool = True
    """Drop (and count) messages from nodes that are not members of the group as this
    replica knows it, and messages no member could send (``hosting/senders.py``). Off
    only in the control runs of the tests that show what it prevents."""

    def __post_init__(self) -> None:
        if not self.tick_interval_s > 0:
            raise ValueError("tick_interval_s must be positive")
        if min(self.snapshot_every, self.max_pending_proposals, self.max_pending_reads) < 1:
            raise ValueError("snapshot_every and the pending limits must be positive")


@dataclass(frozen=True, slots=True)
class HostStatus:
    node_id: str
    role: Role
    term: int
    leader: str | None
    commit: int
    applied: int
    """The host's applied index: commands in the state machine, plus no-ops and
    membership changes the core applied."""
    halted: bool
    disk_full: bool = False
    """Stopped by a full disk: it refuses writes and resumes once there is room."""
    halt_reason: str = ""
    """Why it halted (the error it stopped on), "" while it runs."""
