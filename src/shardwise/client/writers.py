"""Client ids for writes in flight, so many writes of one client are each applied once.

A write carries a client id and a sequence number that stay the same across its retries,
so the servers apply it once. Servers remember only the latest sequence number per client
id, so two writes of one id in flight at once could make the older one *stale* (not
applied). Each write in flight therefore holds a client id of its own from a bounded pool
(``<client_id>/0``, ``<client_id>/1``, ...), and each pooled id numbers its writes in
increasing order: many writes may be in flight on one client and none is ever stale.
KV writes (``kv.py``) and SQL writes (``sql.py``) share one pool.
"""

from __future__ import annotations

import asyncio

from shardwise.net.leader import CallDeadline


class Writer:
    """A pooled client id and its sequence numbers."""

    __slots__ = ("client_id", "seq")

    def __init__(self, client_id: str, first_seq: int) -> None:
        self.client_id = client_id
        self.seq = first_seq

    def next_seq(self) -> int:
        self.seq += 1
        return self.seq


class WriterPool:
    """Client ids for writes in flight: each write holds one for all its retries, so no
    two writes in flight share an id. Ids are made on demand up to ``size`` and reused
    most-recently-released first, so a client that writes one at a time uses one id."""

    def __init__(self, base_id: str, size: int, first_seq: int) -> None:
        self._base_id = base_id
        self._first_seq = first_seq
        self._free: list[Writer] = []
        self._made = 0
        self._slots = asyncio.Semaphore(size)

    @property
    def ids_made(self) -> int:
        return self._made

    async def acquire(self, call: CallDeadline) -> Writer:
        """A writer, waiting for a free slot until ``call``'s deadline."""
        remaining = call.remaining()
        if remaining <= 0:
            raise call.timed_out()
        try:
            async with asyncio.timeout(remaining):
                await self._slots.acquire()
        except TimeoutError:
            call.why = "every writer slot stayed busy"
            raise call.timed_out() from None
        if self._free:
            return self._free.pop()
        writer = Writer(f"{self._base_id}/{self._made}", self._first_seq)
        self._made += 1
        return writer

    def release(self, writer: Writer) -> None:
        self._free.append(writer)
        self._slots.release()
