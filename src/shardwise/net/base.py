"""The state every part of the transport shares, and its small helpers.

The transport is one chain of classes, each a layer of one object: ``TransportBase``
(this: state, counters, task tracking), ``Sessions`` (``sessions.py``: accepting,
dialling, ownership, reading and writing connections) and ``Transport``
(``transport.py``: the public API, sending, shutdown). What a message means once it
has arrived (Raft routing, the callee's and the caller's side of calls) is decided by
parts that own their own state, in ``dispatch.py``, which the transport holds; a
connection hands what it reads to the ``dispatch`` callable it was given.
"""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, Final

from shardwise.clock import AsyncioClock, Clock
from shardwise.net.admission import HandshakeSlots
from shardwise.net.auth import Credentials, UserLookup, check_secret, credentials_login
from shardwise.net.budget import FrameBudget
from shardwise.net.faults import FaultInjector
from shardwise.net.limits import Limits
from shardwise.net.links import Address, Link
from shardwise.net.memory import return_large_buffers_to_os
from shardwise.net.stats import TransportStats
from shardwise.net.timing import Backoff, RandomSource
from shardwise.net.wire import PeerRole, WireMessage, check_node_id

if TYPE_CHECKING:
    from shardwise.net.connection import PeerConnection

logger = logging.getLogger("shardwise.net.transport")

LOOPBACK: Final[Address] = ("127.0.0.1", 0)
"""Where a node listens unless told otherwise: loopback, an ephemeral port."""

Dispatch = Callable[[Link, WireMessage], None]
"""Handles one message read from a link's connection (raises ``ProtocolError`` for one
that has no business there)."""

_PRUNE_WAITERS_AT: Final = 64
"""Waiters kept before cancelled ones are swept out (see ``changed``)."""


class TransportBase:
    def __init__(
        self,
        node_id: str,
        secret: Credentials,
        *,
        role: PeerRole = PeerRole.NODE,
        listen: Address | None = LOOPBACK,
        server_ssl: ssl.SSLContext | None = None,
        client_ssl: ssl.SSLContext | None = None,
        clock: Clock | None = None,
        limits: Limits | None = None,
        backoff: Backoff | None = None,
        rng: RandomSource | None = None,
        faults: FaultInjector | None = None,
        dispatch: Dispatch,
    ) -> None:
        self.id = check_node_id(node_id)
        self.role = role
        self._login = credentials_login(secret)
        if self._login is not None and role is not PeerRole.CLIENT:
            raise ValueError("a node proves the cluster secret; only a client logs in as a user")
        # A client that logs in holds no secret; an acceptor always has one (a client
        # never accepts), so the empty placeholder is never used to prove anything.
        self._secret = check_secret(secret) if isinstance(secret, bytes) else b""
        self._users: UserLookup | None = None
        """How this node finds a logging-in user's verifier (``set_user_lookup``)."""
        self._listen = listen if role is PeerRole.NODE else None
        self._server_ssl = server_ssl
        self._client_ssl = client_ssl
        self._clock: Clock = clock or AsyncioClock()
        self.limits = limits or Limits()
        self._backoff = backoff or Backoff()
        self._rng: RandomSource = rng or random.Random()
        self.faults = faults
        self.stats = TransportStats()
        self._links: dict[str, Link] = {}
        self._client_links: set[Link] = set()
        self._dispatch = dispatch
        self._connections: set[PeerConnection] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._handshaking = 0
        """How many inbound connections are in their handshake (``len(self._slots)``)."""
        self._slots: HandshakeSlots[PeerConnection] = HandshakeSlots(
            self.limits.max_handshaking, self.limits.max_handshaking_per_source
        )
        self._frame_budget = FrameBudget(
            self.limits.max_buffered_frame_bytes,
            self.limits.frame_stall_s,
            self._clock,
            self._bump,
        )
        if self._listen is not None:  # a server: large buffers it frees go back at once
            return_large_buffers_to_os()
        self._delayed = 0
        self._server: asyncio.Server | None = None
        self._running = False
        self._closing = False
        self._waiters: list[asyncio.Future[None]] = []

    # --- observing ---------------------------------------------------------------------

    def set_user_lookup(self, users: UserLookup | None) -> None:
        """Let clients log in as users, their verifiers found with ``users`` (a node's
        copy of the access catalog); ``None``: only holders of the cluster secret."""
        self._users = users

    def changed(self) -> asyncio.Future[None]:
        """A future resolved at the next event the transport records (a frame, a
        connection change, a counter), registered at once so no event between this call
        and the ``await`` is missed. For tests and tools that wait without polling."""
        if len(self._waiters) >= _PRUNE_WAITERS_AT:  # cancelled by callers that gave up
            self._waiters = [w for w in self._waiters if not w.done()]
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        return waiter

    async def until(self, predicate: Callable[[], bool]) -> None:
        """Return once ``predicate()`` holds, checking it after every event. Bound the
        wait with ``asyncio.wait_for``."""
        while not predicate():
            await self.changed()

    def _notify(self) -> None:
        if self._waiters:
            waiters, self._waiters = self._waiters, []
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)

    def _bump(self, counter: str, n: int = 1) -> None:
        setattr(self.stats, counter, getattr(self.stats, counter) + n)
        self._notify()

    # --- helpers -----------------------------------------------------------------------

    def _spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro, name=f"{self.id}:{name}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _node_link(self, peer: str) -> Link | None:
        link = self._links.get(peer)
        if link is None and len(self._links) < self.limits.max_peers:
            link = self._links[peer] = Link(peer, PeerRole.NODE, None, self.limits)
        return link
