"""When a replica snapshots its state machine.

Snapshots bound the log kept in memory and on disk and the replay after a restart, but a
snapshot copies the whole state. So a replica snapshots every so many applied entries,
and only once the log since its last snapshot is as large as that snapshot was: a large
state with small writes is copied once per its own size of log, not every few seconds.
A leader's pause stalls its whole group (a follower's only itself: the others still make
a quorum), so a leader waits for the hard limits (``HostOptions.defer_leader_snapshots``).
"""

from __future__ import annotations

import zlib
from typing import Final

from shardwise.raft.hosting.options import HostOptions

MAX_LOG_BYTES_BETWEEN_SNAPSHOTS: Final = 256 << 20
"""Log a replica applies before it snapshots even a state larger than this."""

SNAPSHOT_DEFER_LIMIT: Final = 10
"""A snapshot waits for the log to grow as large as the last one (see
``SnapshotSchedule.due``), but never past this many times ``snapshot_every`` entries: the
log lives in memory."""


def snapshot_interval(node_id: str, snapshot_every: int) -> int:
    """Entries between two snapshots of replica ``node_id``: ``snapshot_every`` plus up to
    a fifth more, fixed by the id. A group's replicas then take their snapshots at
    different indexes and do not all pause at once (a large state machine's snapshot
    holds its replica's event loop for a while)."""
    return snapshot_every + zlib.crc32(node_id.encode()) % (snapshot_every // 5 + 1)


class SnapshotSchedule:
    """One replica's last snapshot and the log applied since, and whether to take the
    next one now."""

    __slots__ = ("_defer_when_leading", "_interval", "_snapshot_bytes", "index", "log_bytes")

    def __init__(self, node_id: str, options: HostOptions) -> None:
        self._interval = snapshot_interval(node_id, options.snapshot_every)
        self._defer_when_leading = options.defer_leader_snapshots
        self.index = 0
        """The index of the last snapshot taken or installed."""
        self._snapshot_bytes = 0
        """Size of the last snapshot taken or installed."""
        self.log_bytes = 0
        """Bytes of entries applied since the last snapshot (the host adds to it)."""

    def reset(self, index: int, size: int) -> None:
        """A snapshot of ``size`` bytes at ``index`` was taken, installed or loaded."""
        self.index = index
        self._snapshot_bytes, self.log_bytes = size, 0

    def due(self, applied: int, leading: bool) -> bool:
        """Whether to snapshot at ``applied`` now."""
        entries = applied - self.index
        if entries < self._interval:
            return False
        at_limit = (
            entries >= SNAPSHOT_DEFER_LIMIT * self._interval
            or self.log_bytes >= MAX_LOG_BYTES_BETWEEN_SNAPSHOTS
        )
        if self._defer_when_leading and leading and not at_limit:
            return False
        return not (self.log_bytes < self._snapshot_bytes and not at_limit)
