"""The Raft core's view of its log: a snapshot point, then entries, some not yet durable.

The core keeps the entries after its last snapshot in memory (the host compacts the log
after each snapshot, so this is bounded by the snapshot policy); ``stable`` marks how far
the host has persisted them, ``committed`` and ``applied`` how far they have gone.
"""

from __future__ import annotations

from collections.abc import Sequence

from shardwise.errors import LogCompactedError, LogUnavailableError, RaftError
from shardwise.storage.types import LogEntry, SnapshotMeta, entry_size


class RaftLog:
    __slots__ = ("applied", "committed", "entries", "offset", "snapshot", "stable")

    def __init__(self, snapshot: SnapshotMeta | None, entries: Sequence[LogEntry]) -> None:
        self.snapshot = snapshot or SnapshotMeta(0, 0)
        self.offset = self.snapshot.index  # entries[i] has index offset + 1 + i
        self.entries: list[LogEntry] = [e for e in entries if e.index > self.offset]
        for i, entry in enumerate(self.entries):
            if entry.index != self.offset + 1 + i:
                raise RaftError(f"log has a gap before entry {entry.index}")
        self.stable = self.last_index()
        self.committed = self.snapshot.index
        self.applied = self.snapshot.index

    def first_index(self) -> int:
        return self.offset + 1

    def last_index(self) -> int:
        return self.offset + len(self.entries)

    def last_term(self) -> int:
        return self.entries[-1].term if self.entries else self.snapshot.term

    def term(self, index: int) -> int:
        """Term at ``index``; the snapshot's own index answers with the snapshot's term."""
        if index == self.offset:
            return self.snapshot.term
        if index < self.offset:
            raise LogCompactedError(f"entry {index} is compacted (snapshot at {self.offset})")
        if index > self.last_index():
            raise LogUnavailableError(f"entry {index} is past the last entry")
        return self.entries[index - self.offset - 1].term

    def term_or_none(self, index: int) -> int | None:
        if index < self.offset or index > self.last_index():
            return None
        return self.term(index)

    def matches(self, index: int, term: int) -> bool:
        return self.term_or_none(index) == term

    def is_up_to_date(self, last_index: int, last_term: int) -> bool:
        """Whether a candidate's log is at least as up-to-date as ours (Raft 5.4.1)."""
        mine = self.last_term()
        return last_term > mine or (last_term == mine and last_index >= self.last_index())

    def slice(self, lo: int, hi: int, max_bytes: int) -> list[LogEntry]:
        """Entries ``lo .. hi-1``, at least one, stopping once ``max_bytes`` is passed."""
        if lo <= self.offset:
            raise LogCompactedError(f"entry {lo} is compacted (snapshot at {self.offset})")
        out: list[LogEntry] = []
        size = 0
        for entry in self.entries[lo - self.offset - 1 : hi - self.offset - 1]:
            size += entry_size(entry)
            if out and size > max_bytes:
                break
            out.append(entry)
        return out

    def append(self, entries: Sequence[LogEntry]) -> None:
        """Append, truncating any conflicting suffix first; never below ``committed``."""
        if not entries:
            return
        first = entries[0].index
        if first <= self.committed:
            raise RaftError(f"refusing to overwrite committed entry {first}")
        if first > self.last_index() + 1:
            raise RaftError(f"append at {first} would leave a gap after {self.last_index()}")
        del self.entries[first - self.offset - 1 :]
        self.entries.extend(entries)
        self.stable = min(self.stable, first - 1)

    def find_conflict(self, entries: Sequence[LogEntry]) -> int:
        """Index of the first entry whose term differs from ours (or that we lack); 0 if none."""
        for entry in entries:
            if not self.matches(entry.index, entry.term):
                return entry.index
        return 0

    def conflict_hint(self, index: int, term: int) -> tuple[int, int]:
        """The largest index ``<= index`` whose term is ``<= term``, and that term.

        Used both ways of the fast back-off: a follower answers a failed consistency
        check with it, and the leader uses it to jump over a whole term of mismatches.
        """
        index = min(index, self.last_index())
        while index > self.offset:
            t = self.term(index)
            if t <= term:
                return index, t
            index -= 1
        return self.offset, self.snapshot.term

    def unstable(self) -> list[LogEntry]:
        return self.entries[self.stable - self.offset :] if self.stable >= self.offset else []

    def stable_to(self, index: int, term: int) -> None:
        """The host persisted entries up to ``index`` (ignored if that entry was replaced)."""
        if self.matches(index, term) and index > self.stable:
            self.stable = index

    def commit_to(self, index: int) -> bool:
        if index > self.committed:
            if index > self.last_index():
                raise RaftError(f"commit {index} is past the last entry {self.last_index()}")
            self.committed = index
            return True
        return False

    def committed_entries(self, max_bytes: int) -> list[LogEntry]:
        if self.applied >= self.committed:
            return []
        return self.slice(self.applied + 1, self.committed + 1, max_bytes)

    def restore(self, snapshot: SnapshotMeta) -> None:
        """Replace the log with a snapshot received from the leader."""
        self.snapshot = snapshot
        self.offset = snapshot.index
        self.entries = []
        self.stable = snapshot.index
        self.committed = snapshot.index
        self.applied = snapshot.index

    def compact(self, snapshot: SnapshotMeta) -> None:
        """Drop entries the host's new local snapshot covers (up to the applied index)."""
        if snapshot.index <= self.offset:
            return
        if snapshot.index > self.applied:
            raise RaftError(f"cannot snapshot at {snapshot.index}: applied only {self.applied}")
        del self.entries[: snapshot.index - self.offset]
        self.snapshot = snapshot
        self.offset = snapshot.index
