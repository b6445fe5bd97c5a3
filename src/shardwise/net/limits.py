"""Every bound of the transport, named, with the reason for its size.

:class:`Limits` gathers them so a test can shrink one (a queue of four frames floods in
four sends); production uses the defaults.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Final

MAX_RAFT_QUEUE_FRAMES: Final = 4096
"""Raft frames queued per peer before new ones are dropped (Raft retransmits; an old
queue is worth less than memory). About 40 heartbeat rounds for 100 groups."""

MAX_REQUEST_QUEUE_FRAMES: Final = 1024
"""Call requests queued per peer before ``call`` raises ``RpcOverloadedError``."""

MAX_REPLY_QUEUE_FRAMES: Final = 1024
"""Replies queued per link; beyond it a reply is dropped and its caller times out."""

MAX_QUEUE_BYTES: Final = 64 << 20
"""Encoded bytes queued per link, all queues together: four full-size frames, or 64
appends of ``MAX_APPEND_BYTES``."""

MAX_PENDING_CALLS: Final = 1024
"""Calls per peer waiting for an answer; more raise ``RpcOverloadedError`` at once."""

MAX_HANDLERS_PER_LINK: Final = 256
"""Calls from one peer running at once; more are refused with ``OVERLOADED``."""

MAX_HANDLERS: Final = 4096
"""Calls running at once in one transport, from all peers together."""

MAX_WRITE_BATCH_FRAMES: Final = 256
"""Frames handed to the socket in one write (one system call for many small frames)."""

MAX_WRITE_BATCH_BYTES: Final = 1 << 20
"""Bytes handed to the socket in one write; a single larger frame still goes alone."""

READ_CHUNK_BYTES: Final = 256 << 10
"""Bytes read from the socket at once."""

MAX_CONNECTIONS: Final = 1024
"""Open connections (nodes and clients, inbound and outbound); beyond it new inbound
connections are closed at once."""

MAX_HANDSHAKING: Final = 64
"""Inbound connections still in their handshake. When all are taken, a new connection
does not wait or get refused: it evicts the oldest unauthenticated one (silent ones
first, then the most crowded source address, never a known peer's address while another
is available). An honest dialer sends its hello at once and is done in one round trip,
so it gets through however many silent sockets an attacker keeps reopening; the slots
only bound the memory and sockets unauthenticated peers hold."""

MAX_HANDSHAKING_PER_SOURCE: Final = 16
"""Inbound connections still in their handshake from one source address; a new one
beyond it evicts that address's oldest. A node dials with one connection and a client
host with a few, so 16 leaves room for a burst from one NAT'd host while one attacking
address holds at most a quarter of the slots and can only evict its own connections
(until the slots are full, when the most crowded address pays first). On loopback every
source is 127.0.0.1, so there the global eviction is what protects honest dialers."""

MAX_PEERS: Final = 4096
"""Node links kept (peers we dial or that dialed us)."""

MAX_DELAYED_FRAMES: Final = 10_000
"""Frames held by delay fault rules at once; more are dropped (tests only)."""

HANDSHAKE_TIMEOUT_S: Final = 3.0
"""An inbound peer must be authenticated within this, or it is cut off (the TLS handshake,
when there is one, gets the same budget before it). The handshake is two round trips and
two HMACs: 3 s is ten intercontinental round trips, room for a lost packet's first
retransmission (TCP's initial RTO is 1 s), and short enough that a slot held by a peer
that stalls after its hello is soon free even when nothing evicts it."""

FIRST_FRAME_TIMEOUT_S: Final = 1.0
"""An inbound connection must deliver its whole first frame (the hello, under 200 bytes,
which a dialer writes the moment it connects) within this: a connection that says
nothing is cut soonest. One second is a one-way trip around the world several times
over; a dialer whose hello packet was lost and not retransmitted in time fails its dial
and retries. Capped by ``handshake_timeout_s``."""

CONNECT_TIMEOUT_S: Final = 5.0
"""Dialling, TLS and the handshake together, for an outbound connection."""

CLOSE_TIMEOUT_S: Final = 2.0
"""After sending its goodbye, a side waits this long for the peer's before it aborts."""

DRAIN_TIMEOUT_S: Final = 5.0
"""On shutdown, how long queued frames may take to reach the socket."""

DEFAULT_RPC_TIMEOUT_S: Final = 5.0
"""A call's deadline when the caller names none."""

MAX_BUFFERED_FRAME_BYTES: Final = 256 << 20
"""Bytes buffered for unfinished incoming frames of at least ``EXACT_BUFFER_AT_BYTES``
(``frames.py``), all inbound connections of a transport together. Without it, 1,024
connections each holding an unfinished 16 MiB frame could make a server buffer 16 GiB.
256 MiB is sixteen full-size frames at once (a busy node receives a few 1 MiB appends or
256 KiB snapshot chunks at a time); a frame that finds no room waits, not reading, until
some is released. One connection holds at most one unfinished frame, so at most
``MAX_FRAME_BYTES`` (a sixteenth) of it."""

FRAME_STALL_S: Final = 2.0
"""While a frame waits for room in the buffer budget, a connection whose unfinished frame
got no byte for this long, and holds more than its fair share of the budget (the budget
over the connections holding or waiting), is cut to make room: a frame that is arriving
is never cut, a frame that stopped arriving cannot starve one that waits. Two seconds
is above TCP's retransmission pauses on a healthy link and short against the time an
honest large frame may wait."""


@dataclass(frozen=True, slots=True)
class Limits:
    max_raft_queue_frames: int = MAX_RAFT_QUEUE_FRAMES
    max_request_queue_frames: int = MAX_REQUEST_QUEUE_FRAMES
    max_reply_queue_frames: int = MAX_REPLY_QUEUE_FRAMES
    max_queue_bytes: int = MAX_QUEUE_BYTES
    max_pending_calls: int = MAX_PENDING_CALLS
    max_handlers_per_link: int = MAX_HANDLERS_PER_LINK
    max_handlers: int = MAX_HANDLERS
    max_write_batch_frames: int = MAX_WRITE_BATCH_FRAMES
    max_write_batch_bytes: int = MAX_WRITE_BATCH_BYTES
    read_chunk_bytes: int = READ_CHUNK_BYTES
    max_connections: int = MAX_CONNECTIONS
    max_handshaking: int = MAX_HANDSHAKING
    max_handshaking_per_source: int = MAX_HANDSHAKING_PER_SOURCE
    max_peers: int = MAX_PEERS
    max_delayed_frames: int = MAX_DELAYED_FRAMES
    handshake_timeout_s: float = HANDSHAKE_TIMEOUT_S
    first_frame_timeout_s: float = FIRST_FRAME_TIMEOUT_S
    connect_timeout_s: float = CONNECT_TIMEOUT_S
    close_timeout_s: float = CLOSE_TIMEOUT_S
    drain_timeout_s: float = DRAIN_TIMEOUT_S
    max_buffered_frame_bytes: int = MAX_BUFFERED_FRAME_BYTES
    frame_stall_s: float = FRAME_STALL_S

    def __post_init__(self) -> None:
        for field in fields(self):
            if not getattr(self, field.name) > 0:
                raise ValueError(f"{field.name} must be positive")
