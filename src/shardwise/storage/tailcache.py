"""A bounded cache of the newest log entries.

A leader reads what it just appended to replicate it, so the tail of the log is read far
more often than the rest; caching it spares those reads a trip to the file. Lagging
followers read older entries, which come from disk and are not cached (they would evict
the tail that everyone else needs).
"""

from __future__ import annotations

from collections.abc import Sequence

from shardwise.storage.types import LogEntry, entry_size


class TailCache:
    """Entries ``lo .. hi - 1``, a contiguous run ending at the log's last entry, holding at
    most ``max_bytes`` (sized by ``entry_size``); older entries are evicted first."""

    def __init__(self, max_bytes: int, next_index: int) -> None:
        self.max_bytes = max_bytes
        self.lo = next_index
        self.hi = next_index
        self._entries: dict[int, LogEntry] = {}
        self._bytes = 0

    def get(self, index: int) -> LogEntry:
        return self._entries[index]

    def extend(self, entries: Sequence[LogEntry]) -> None:
        """Add entries that continue the log at ``hi``."""
        for entry in entries:
            self._entries[entry.index] = entry
            self._bytes += entry_size(entry)
        self.hi = entries[-1].index + 1
        while self._bytes > self.max_bytes and self.lo < self.hi:
            self._bytes -= entry_size(self._entries.pop(self.lo))
            self.lo += 1

    def truncate(self, index: int) -> None:
        """Forget entries from ``index`` on (the log was cut there)."""
        for stale in range(max(index, self.lo), self.hi):
            self._bytes -= entry_size(self._entries.pop(stale))
        self.hi = index
        self.lo = min(self.lo, index)

    def drop_before(self, index: int) -> None:
        """Forget entries below ``index`` (the log was compacted)."""
        for stale in range(self.lo, min(index, self.hi)):
            self._bytes -= entry_size(self._entries.pop(stale))
        self.lo = max(self.lo, index)
        self.hi = max(self.hi, index)

    def clear(self, next_index: int) -> None:
        self._entries.clear()
        self._bytes = 0
        self.lo = self.hi = next_index
