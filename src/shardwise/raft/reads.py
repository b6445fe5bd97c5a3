"""ReadIndex bookkeeping on the leader: reads waiting for a quorum to confirm leadership.

A read is safe to serve at index ``i`` once (1) the leader has committed an entry of its
own term, so ``i`` covers everything committed before it was elected, and (2) a quorum has
answered a heartbeat sent after the read arrived, so no newer leader existed. Reads are
confirmed in arrival order: a quorum answering the heartbeat of one read confirms every
read queued before it too.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

from shardwise.raft.ready import ReadState


@dataclass(slots=True)
class _Read:
    index: int | None
    """The commit index to serve at; None until the leader commits an entry of its term."""
    origin: str
    acks: set[str] = field(default_factory=set)


class PendingReads:
    __slots__ = ("_queue",)

    def __init__(self) -> None:
        self._queue: OrderedDict[bytes, _Read] = OrderedDict()

    def __len__(self) -> int:
        return len(self._queue)

    def add(self, context: bytes, origin: str, index: int | None, self_id: str) -> None:
        self._queue[context] = _Read(index, origin, {self_id})

    def acknowledge(self, context: bytes, sender: str, quorum: int) -> list[tuple[ReadState, str]]:
        read = self._queue.get(context)
        if read is None or read.index is None:
            return []
        read.acks.add(sender)
        if len(read.acks) < quorum:
            return []
        confirmed: list[tuple[ReadState, str]] = []
        while self._queue:
            key, queued = self._queue.popitem(last=False)
            if queued.index is not None:
                confirmed.append((ReadState(queued.index, key), queued.origin))
            if key == context:
                break
        return confirmed

    def release_waiting(self, index: int, self_id: str, quorum: int) -> list[tuple[ReadState, str]]:
        """The leader committed its first entry: waiting reads get an index. With a single
        voter they are confirmed at once; otherwise a heartbeat round must confirm them."""
        for read in self._queue.values():
            if read.index is None:
                read.index = index
        if quorum > 1:
            return []
        released = [(ReadState(r.index or index, k), r.origin) for k, r in self._queue.items()]
        self._queue.clear()
        return released

    def has_unconfirmed(self) -> bool:
        return bool(self._queue)

    def last_context(self) -> bytes:
        return next(reversed(self._queue))

    def drop_all(self, self_id: str) -> list[bytes]:
        """Forget every pending read; returns the contexts of the local ones to fail."""
        local = [k for k, r in self._queue.items() if r.origin == self_id]
        self._queue.clear()
        return local
