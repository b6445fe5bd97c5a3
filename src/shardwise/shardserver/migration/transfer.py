"""Copying an image from a server of another group into this group's log, paced.

A pull fetches the image in pieces of up to ``PULL_CHUNK_BYTES`` from one server of the
source group and proposes each as :class:`~shardwise.shardserver.commands.InstallChunk`
entries of ``INSTALL_CHUNK_BYTES`` as soon as it arrives, at most :data:`PROPOSE_WINDOW`
in flight, so fetching and replicating overlap. A base taken while the shard still serves
at the source (nothing waits for it) pauses after each piece (:data:`PRECOPY_PAUSE_RATIO`)
so the group's own writes keep the log.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Final

from msgspec.structs import replace

from shardwise.errors import NetError, ShardwiseError
from shardwise.model.config import ShardId
from shardwise.net.endpoint import Endpoint
from shardwise.shardserver.commands import INSTALL_CHUNK_BYTES, Command, InstallChunk
from shardwise.shardserver.protocol import PULL, PullReply, PullRequest, server_address

PULL_CALL_TIMEOUT_S: Final = 10.0
"""One pull call (one piece of an image) to one server of the source group."""

FIRST_PULL_TIMEOUT_S: Final = 3.0
"""The first piece, from a server that may be down: short, so the next one is tried soon
(long enough for a source to export a large shard)."""

PROPOSE_WINDOW: Final = 1
"""Install pieces in flight in the log at once. Measured (`bench/kv.py`, a 100 MiB move
under load on 2 cores), before the pre-copy: 16 in flight made other shards' p99 4.7x
its steady state; 4: 2.5x; 2: 1.0-1.1x (and the shard refused writes throughout). With
the pre-copy the copy happens while the shard still serves, so it may be slow: one
piece of 256 KiB at a time kept other shards' p99 at 1.0-1.5x (three runs; 512 KiB
pieces, two in flight: 1.5-3.7x), for a move of 8-10 s instead of 6-7 s."""

PRECOPY_PAUSE_RATIO: Final = 1.0
"""After each piece of a pre-copy commits, the copy waits this many times as long as the
piece took before it proposes the next, so it holds the gaining group's log at most half
the time (and less when the group is busy, since pieces then take longer). Measured
(`bench/kv.py`, 100 MiB under workload A on 2 cores, once the request path had become
fast enough to keep the servers busy): without the pause the gaining group's p99 went
from 13-14 ms to 41-52 ms during the copy, other shards' p99 1.7-2.5x steady state;
with it 24-34 ms and 1.25-1.56x (five runs), the move 7-12 s instead of 4-8 s (pieces
go faster when they do not queue behind the group's writes); twice as long a pause:
1.1-1.3x, 9-10 s. A copy of the frozen shard is not paced: writes to it wait for it."""


class ImagePuller:
    """Pulls images over ``transport`` and logs them through ``propose`` (which says
    whether the command applied)."""

    def __init__(self, transport: Endpoint, propose: Callable[[Command], Awaitable[bool]]) -> None:
        self._transport = transport
        self._propose = propose
        self._attempts = 0

    async def ask(self, server: str, request: PullRequest, timeout_s: float) -> PullReply | None:
        """``server``'s answer to ``request``; None if it could not be reached."""
        self._transport.set_peer(server, server_address(server))
        try:
            return await self._transport.call(server, PULL, request, timeout_s=timeout_s)
        except NetError:
            return None

    async def first_piece(
        self, shard: ShardId, config_num: int, servers: Sequence[str], request: PullRequest
    ) -> tuple[str, PullReply]:
        """The first piece of the image and the server that gave it; every later piece
        comes from that server (replicas' files hold the same rows but need not be
        byte-identical)."""
        # Start at a different server each attempt: a dead one (whose calls only time
        # out) must not be first every time.
        self._attempts += 1
        start = self._attempts % max(1, len(servers))
        for server in (*servers[start:], *servers[:start]):
            first = await self.ask(server, request, FIRST_PULL_TIMEOUT_S)
            if first is not None and first.status == "ok":
                return server, first
        raise ShardwiseError(
            f"no server of {list(servers)} has {shard} ready for configuration {config_num} yet"
        )

    async def stream_in(
        self, shard: ShardId, config_num: int, server: str, first: PullReply, request: PullRequest
    ) -> None:
        """Log the image whose first piece is ``first`` in :class:`InstallChunk` pieces,
        each proposed as soon as it arrives (at most :data:`PROPOSE_WINDOW` in flight), so
        fetching and replicating overlap; the rest comes from the same ``server``. A base
        taken while the shard still serves at the source (``first.live``: nothing waits
        for it) pauses after each piece (:data:`PRECOPY_PAUSE_RATIO`)."""
        total, crc, paced = first.total, first.crc, first.live
        loop = asyncio.get_running_loop()
        in_flight: deque[tuple[float, asyncio.Task[bool]]] = deque()
        try:
            offset, data = 0, first.data
            while True:
                for start in range(0, len(data), INSTALL_CHUNK_BYTES):
                    if len(in_flight) >= PROPOSE_WINDOW:
                        proposed, oldest = in_flight.popleft()
                        if not await oldest:
                            raise ShardwiseError(f"install of {shard} was interrupted")
                        if paced:  # let the group's own writes have the log too
                            await asyncio.sleep(PRECOPY_PAUSE_RATIO * (loop.time() - proposed))
                    piece = data[start : start + INSTALL_CHUNK_BYTES]
                    chunk = InstallChunk(shard, config_num, offset + start, piece)
                    in_flight.append((loop.time(), asyncio.ensure_future(self._propose(chunk))))
                offset += len(data)
                if offset >= total:
                    break
                data = await self._next_piece(server, replace(request, offset=offset), crc)
            if total == 0:
                empty = InstallChunk(shard, config_num, 0, b"")
                in_flight.append((loop.time(), asyncio.ensure_future(self._propose(empty))))
            if not all(await asyncio.gather(*(task for _, task in in_flight))):
                raise ShardwiseError(f"install of {shard} was interrupted")
        finally:
            for _, task in in_flight:
                task.cancel()  # only those not done: a failed pull leaves none behind

    async def _next_piece(self, server: str, request: PullRequest, crc: int) -> bytes:
        reply = await self._transport.call(server, PULL, request, timeout_s=PULL_CALL_TIMEOUT_S)
        if reply.status != "ok" or reply.crc != crc or not reply.data:
            raise ShardwiseError(f"{server} stopped serving {request.shard} mid-pull")
        return reply.data
