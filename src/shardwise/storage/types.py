"""The values Raft storage persists: log entries, hard state and snapshot metadata.

They are frozen msgspec Structs so that the log and the wire share one validated
encoding, and so that nothing handed to storage can be mutated after it was persisted.
Storage treats every payload as opaque: the Raft layer encodes an entry's kind (command,
configuration change, no-op) inside ``LogEntry.data`` and a membership inside
``SnapshotMeta.config``.
"""

from __future__ import annotations

from typing import Final

import msgspec

from shardwise.model.bounds import Int64

ENTRY_OVERHEAD_BYTES: Final = 16
"""Fixed cost charged per entry by :func:`entry_size`, on top of its payload.

Without it an empty entry (a leader's no-op) would cost nothing, and a ``max_bytes``
limit would let an unbounded number of them through.
"""


class LogEntry(msgspec.Struct, frozen=True, array_like=True):
    """One Raft log entry: its position, the term it was created in, and its payload.

    ``array_like`` encodes it as ``[index, term, data]``, which keeps the log compact.
    """

    index: Int64
    """Position in the log, starting at 1; consecutive entries have consecutive indexes."""
    term: Int64
    """Term of the leader that created the entry; never decreases along the log."""
    data: bytes
    """Opaque payload, interpreted only by the Raft layer."""


class HardState(msgspec.Struct, frozen=True, array_like=True):
    """What a Raft node must remember across restarts besides its log.

    ``term`` and ``vote`` must be durable before the node sends any message that depends
    on them; ``commit`` is stored along with them (not on its own: a commit-only change
    would cost an fsync per write) so that a restarted node can re-apply that much without
    waiting for the leader, and learns the rest from it.
    """

    term: Int64 = 0
    """Latest term this node has seen."""
    vote: str | None = None
    """Node id this node voted for in ``term``, or ``None``."""
    commit: Int64 = 0
    """Highest log index known to be committed."""


class SnapshotMeta(msgspec.Struct, frozen=True, array_like=True):
    """What a snapshot covers: every entry up to ``index`` (whose term is ``term``)."""

    index: Int64
    """Index of the last entry the snapshot includes."""
    term: Int64
    """Term of the entry at ``index``."""
    config: bytes = b""
    """Opaque encoding of the cluster membership as of ``index``."""


EMPTY_HARD_STATE: Final = HardState()
"""The hard state of a node that has never seen a term."""


def entry_size(entry: LogEntry) -> int:
    """Size charged against a ``max_bytes`` limit: the payload plus a fixed overhead.

    Both storage implementations, and the Raft layer when it sizes messages, use this one
    measure, so a limit means the same thing everywhere.
    """
    return len(entry.data) + ENTRY_OVERHEAD_BYTES
