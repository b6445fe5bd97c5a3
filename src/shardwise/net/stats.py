"""Counters a transport keeps: every drop, refusal and failure is counted, never silent."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(slots=True)
class TransportStats:
    # connections
    connections_accepted: int = 0
    connections_dialed: int = 0
    connections_refused: int = 0
    """Inbound connections closed at once: too many, shutting down, or cut by a rule. The
    dialer is told why (a ``refuse/1`` frame)."""
    handshakes_evicted: int = 0
    """Unauthenticated connections closed to make room for a newer one (the handshake
    slots, or their source address's share, were full)."""
    first_frame_timeouts: int = 0
    """Inbound connections that sent no whole first frame in time (also counted in
    ``handshake_timeouts``)."""
    connections_superseded: int = 0
    """Duplicate connections between the same two nodes closed by the ownership rule."""
    connections_lost: int = 0
    """Connections that ended without a goodbye (EOF, reset, abort, cut)."""
    dial_attempts: int = 0
    dial_failures: int = 0
    dial_give_ups: int = 0
    handshake_timeouts: int = 0
    auth_failures: int = 0
    protocol_errors: int = 0
    frames_sent: int = 0
    frames_received: int = 0
    frame_bytes_buffered: int = 0
    """A gauge, not a counter: bytes reserved now for unfinished large incoming frames,
    all inbound connections together (bounded by ``Limits.max_buffered_frame_bytes``)."""
    frame_budget_waits: int = 0
    """Large frames that had to wait for room in the buffer budget."""
    frame_budget_stall_cuts: int = 0
    """Connections cut because their unfinished frame stalled while others waited."""
    frame_budget_too_large: int = 0
    """Frames refused because they could never fit the buffer budget."""
    # raft
    raft_sent: int = 0
    raft_delivered: int = 0
    raft_dropped_queue_full: int = 0
    raft_dropped_unroutable: int = 0
    raft_dropped_too_large: int = 0
    raft_dropped_unknown_group: int = 0
    raft_dropped_misaddressed: int = 0
    raft_dropped_closed: int = 0
    raft_handler_errors: int = 0
    # rpc
    rpc_calls: int = 0
    rpc_timeouts: int = 0
    rpc_overloaded: int = 0
    """Calls refused here: too many pending or a full request queue."""
    rpc_unreachable: int = 0
    """Calls failed at once because the peer could not be dialled (nothing was sent)."""
    rpc_refused: int = 0
    """Calls from peers refused with OVERLOADED or SHUTTING_DOWN."""
    rpc_handler_errors: int = 0
    rpc_replies_dropped: int = 0
    rpc_late_replies: int = 0
    """Replies for calls that had already ended (timed out): ignored."""
    connections_dropped_silent: int = 0
    """Connections dropped because a call on them timed out while nothing at all came
    back (a dead peer or a cut path): redialled rather than waited on."""
    # faults
    fault_dropped: int = 0
    fault_delayed: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)
