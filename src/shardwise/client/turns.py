"""One client's writes over several shards take turns on the shards they share.

A write made atomic on its own (``sqltxn.write_atomically``) aborts when another
transaction holds one of its shards, and retries after a pause; with nothing fair about
it, a client's own writes that span the same shards (a bulk load, four INSERTs in
flight, each over most of the 64 shards; any write to a reference table) keep aborting
one another, and one of them can lose every race until its deadline. Within one client
they need not race at all: each takes the shards' turns, in one global order (so two
writes never wait for each other crosswise), before its first attempt. Writers in other
clients still meet at the servers' locks, and back off.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence

from shardwise.model.config import ShardId


class ShardTurns:
    """A lock per shard this client has written to several shards at once (one entry per
    shard of the keyspaces it writes: bounded by their shard counts)."""

    def __init__(self) -> None:
        self._locks: dict[ShardId, asyncio.Lock] = {}

    @contextlib.asynccontextmanager
    async def holding(self, shards: Sequence[ShardId], timeout_s: float) -> AsyncIterator[None]:
        """Hold the turn of every shard of ``shards``, taken in sorted order; raises
        ``TimeoutError`` after ``timeout_s`` without them."""
        held: list[asyncio.Lock] = []
        try:
            async with asyncio.timeout(max(0.0, timeout_s)):
                for shard in sorted(set(shards)):
                    lock = self._locks.setdefault(shard, asyncio.Lock())
                    await lock.acquire()
                    held.append(lock)
            yield
        finally:
            for lock in reversed(held):
                lock.release()
