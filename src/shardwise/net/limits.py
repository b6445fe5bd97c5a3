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
"""Inbound connections still in their handshake: unauthenticated peers cannot hold more
than this many sockets, each for at most ``HANDSHAKE_TIMEOUT_S``."""

MAX_PEERS: Final = 4096
"""Node links kept (peers we dial or that dialed us)."""

MAX_DELAYED_FRAMES: Final = 10_000
"""Frames held by delay fault rules at once; more are dropped (tests only)."""

HANDSHAKE_TIMEOUT_S: Final = 5.0
"""An inbound peer must be authenticated within this, or it is cut off."""

CONNECT_TIMEOUT_S: Final = 5.0
"""Dialling, TLS and the handshake together, for an outbound connection."""

CLOSE_TIMEOUT_S: Final = 2.0
"""After sending its goodbye, a side waits this long for the peer's before it aborts."""

DRAIN_TIMEOUT_S: Final = 5.0
"""On shutdown, how long queued frames may take to reach the socket."""

DEFAULT_RPC_TIMEOUT_S: Final = 5.0
"""A call's deadline when the caller names none."""


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
    max_peers: int = MAX_PEERS
    max_delayed_frames: int = MAX_DELAYED_FRAMES
    handshake_timeout_s: float = HANDSHAKE_TIMEOUT_S
    connect_timeout_s: float = CONNECT_TIMEOUT_S
    close_timeout_s: float = CLOSE_TIMEOUT_S
    drain_timeout_s: float = DRAIN_TIMEOUT_S

    def __post_init__(self) -> None:
        for field in fields(self):
            if not getattr(self, field.name) > 0:
                raise ValueError(f"{field.name} must be positive")
