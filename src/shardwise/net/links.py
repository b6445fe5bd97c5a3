"""A link: everything queued for one peer, and which connection carries it now.

A node peer has one link for the life of the transport, whatever connections come and
go under it: queues and calls in flight survive a reconnect. A client (which has no
address to dial back) gets a link per connection. Three queues of encoded frames, each
bounded by frames and all together by bytes:

* ``replies``: answers to the peer's calls; they free resources at the peer, so they go
  first;
* ``raft``: one-way Raft frames; when full, new ones are dropped (Raft retransmits);
* ``requests``: our calls; when full, ``call`` fails at once with ``RpcOverloadedError``.

The writer takes frames round-robin across the queues, so a flood of Raft appends cannot
starve calls, nor calls starve heartbeats.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import TYPE_CHECKING

from shardwise.errors import AuthenticationError
from shardwise.net.limits import Limits
from shardwise.net.rpc import PendingCall
from shardwise.net.wire import PeerRole

if TYPE_CHECKING:
    from shardwise.net.connection import PeerConnection

Address = tuple[str, int]


class Link:
    def __init__(
        self, peer_id: str, role: PeerRole, address: Address | None, limits: Limits
    ) -> None:
        self.peer_id = peer_id
        self.role = role
        self.user: str | None = None
        """The user a client link logged in as (``None``: it proved the peer secret)."""
        self.address = address
        self.connection: PeerConnection | None = None
        self.replies: deque[bytes] = deque()
        self.raft: deque[bytes] = deque()
        self.requests: deque[tuple[int, bytes]] = deque()
        self.queued_bytes = 0
        self.pending: dict[int, PendingCall] = {}
        self.dialer: asyncio.Task[None] | None = None
        self.dial_failures = 0
        """Dials that failed in a row (0 once a connection is made)."""
        self.unreachable_until = 0.0
        self.login_refused: AuthenticationError | None = None
        """A client's last dial here failed because the server refused its login: what
        calls that wait for a connection fail with, rather than "unreachable"."""
        """Clock time before which the peer counts as unreachable: the last dial failed
        and the next is not due yet. A call meanwhile fails at once (see
        :meth:`fail_queued_calls`) instead of waiting for a peer that is down."""
        self.wakeup = asyncio.Event()
        """Set when there is something new for a writer to look at."""
        self._limits = limits

    def __repr__(self) -> str:
        return f"<Link {self.peer_id} via {self.connection!r}>"

    # --- queues ------------------------------------------------------------------------

    def _fits(self, frame: bytes, queued: int, max_frames: int) -> bool:
        return (
            queued < max_frames and self.queued_bytes + len(frame) <= self._limits.max_queue_bytes
        )

    def push_raft(self, frame: bytes) -> bool:
        if not self._fits(frame, len(self.raft), self._limits.max_raft_queue_frames):
            return False
        self.raft.append(frame)
        self._queued(frame)
        return True

    def push_request(self, call_id: int, frame: bytes) -> bool:
        if not self._fits(frame, len(self.requests), self._limits.max_request_queue_frames):
            return False
        self.requests.append((call_id, frame))
        self._queued(frame)
        return True

    def push_reply(self, frame: bytes) -> bool:
        if not self._fits(frame, len(self.replies), self._limits.max_reply_queue_frames):
            return False
        self.replies.append(frame)
        self._queued(frame)
        return True

    def _queued(self, frame: bytes) -> None:
        self.queued_bytes += len(frame)
        self.wakeup.set()

    def has_frames(self) -> bool:
        return bool(self.replies or self.raft or self.requests)

    def wants_connection(self) -> bool:
        """Whether a dialer should keep trying: something waits to be sent or answered."""
        return self.has_frames() or bool(self.pending)

    def take_batch(self, serial: int) -> list[bytes]:
        """Up to a batch of frames, round-robin across the queues. Requests whose call
        has ended (timed out) are skipped; the others are marked written on ``serial``."""
        limits = self._limits
        batch: list[bytes] = []
        size = 0
        while len(batch) < limits.max_write_batch_frames and size < limits.max_write_batch_bytes:
            before = len(batch)
            if self.replies:
                batch.append(self.replies.popleft())
            if self.raft:
                batch.append(self.raft.popleft())
            while self.requests:
                call_id, frame = self.requests.popleft()
                call = self.pending.get(call_id)
                if call is None or call.future.done():
                    self.queued_bytes -= len(frame)
                    continue
                call.written_on = serial
                batch.append(frame)
                break
            if len(batch) == before:
                break
            size += sum(len(frame) for frame in batch[before:])
        self.queued_bytes -= size
        return batch

    def fail_queued_calls(self, error: Exception) -> int:
        """Fail the calls whose request was never written on a connection (the peer
        cannot have run them, so the caller may retry elsewhere at once); how many."""
        failed = 0
        for call in self.pending.values():
            if call.written_on == 0 and not call.future.done():
                call.future.set_exception(error)
                failed += 1
        return failed

    def clear_queues(self) -> int:
        """Forget every queued frame; returns how many Raft frames were dropped."""
        dropped = len(self.raft)
        self.replies.clear()
        self.raft.clear()
        self.requests.clear()
        self.queued_bytes = 0
        return dropped
