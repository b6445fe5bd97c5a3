"""A host's linearizable reads until they have an index to wait for: from the leader's
lease at once (``hosting/lease.py``), or through a ReadIndex round of the core."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import msgspec

from shardwise.errors import NotLeaderError, ProposalDroppedError, RaftError
from shardwise.raft.hosting.lease import LeaseClock
from shardwise.raft.hosting.waiting import Deadlines, fail
from shardwise.raft.node import RaftNode
from shardwise.raft.ready import Ready

_encode = msgspec.msgpack.Encoder().encode


class HostReads:
    """The reads waiting for the core's answer, by context, and the lease's clock."""

    __slots__ = (
        "_count",
        "_deadlines",
        "_host_id",
        "_incarnation",
        "_max_pending",
        "_waiting",
        "from_lease",
        "lease",
    )

    def __init__(
        self,
        host_id: str,
        incarnation: bytes,
        max_pending: int,
        deadlines: Deadlines,
        lease_s: float,
    ) -> None:
        self._host_id = host_id
        self._incarnation = incarnation
        self._max_pending = max_pending
        self._deadlines = deadlines
        self._waiting: dict[bytes, asyncio.Future[int]] = {}
        self._count = 0
        self.lease = LeaseClock(lease_s)
        self.from_lease = 0
        """Reads served from the lease, without a ReadIndex round."""

    def lease_index(self, node: RaftNode, now: float) -> int | None:
        """The index to read at if this leader's lease holds at ``now``, else None."""
        index = node.lease_read_index()
        if index is None or self.lease.until(node.term, node.lease.confirmed) <= now:
            return None
        self.from_lease += 1
        return index

    async def read_index(self, node: RaftNode, deadline: float, wakeup: Callable[[], None]) -> int:
        """A ReadIndex round. The context carries this host's id and a random
        incarnation, so a late answer to a previous run's read is never taken for ours."""
        if len(self._waiting) >= self._max_pending:
            raise ProposalDroppedError(f"{len(self._waiting)} reads pending on {self._host_id!r}")
        self._count += 1
        context = _encode((self._host_id, self._incarnation, self._count))
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._waiting[context] = future
        self._deadlines.add(deadline, future, f"read on {self._host_id!r}")
        try:
            node.read_index(context)
            wakeup()
            return await future
        finally:
            self._waiting.pop(context, None)

    def answer(self, node: RaftNode, ready: Ready) -> None:
        """The Ready's answered and dropped reads."""
        for state in ready.read_states:
            future = self._waiting.get(state.context)
            if future is not None and not future.done():
                future.set_result(state.index)
        for context in ready.dropped_reads:
            future = self._waiting.get(context)
            if future is None or future.done():
                continue
            if node.is_leader():
                fail(future, ProposalDroppedError(f"leader {self._host_id!r} has too many reads"))
            else:
                fail(future, NotLeaderError(node.id, node.leader))

    def fail_all(self, error: RaftError) -> None:
        for future in self._waiting.values():
            fail(future, error)
