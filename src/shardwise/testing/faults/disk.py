"""What a crash does to a server's Raft log on disk, applied between kill and restart.

A SIGKILL loses nothing the process wrote (the kernel keeps its page cache); a power cut
loses what was written but not yet fsynced. With the storage's test-only marks on
(``storage/segments.py``: ``SYNCED_MARKS_ENV``), each sync records how many bytes of the
active segment it made durable in ``<segment>.synced``, and :func:`crash_disk` cuts the
active segment back to that mark: the loss of unsynced writes, as LazyFS does below a
real database. A *torn* write keeps part of the first record it loses.

Only the last segment is ever cut: every earlier one was fsynced when it was sealed. What
is left on disk when the server restarts counts as durable, as after a real reboot: the
mark is moved to it before the restart.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from shardwise.storage.record import scan_segment
from shardwise.storage.recovery import list_segments

MARK_SUFFIX: Final = ".synced"


@dataclass(frozen=True)
class DiskDamage:
    """What a crash cut from one log: whole records lost, and a torn one's kept bytes."""

    records_lost: int = 0
    torn_bytes: int = 0

    def __str__(self) -> str:
        torn = f", torn after {self.torn_bytes} bytes" if self.torn_bytes else ""
        return f"{self.records_lost} unsynced records lost{torn}"


def _last_segment(raft_dir: Path) -> Path | None:
    if not raft_dir.is_dir():
        return None
    segments = list_segments(str(raft_dir))
    return raft_dir / segments[-1].name if segments else None


def _record_ends(path: Path) -> list[int]:
    """The offset just past each readable record of a segment (zeros allocated ahead and
    a torn tail are not records)."""
    first_index = int(path.name[len("seg-") : -len(".log")])
    scan = scan_segment(path.read_bytes(), path.name, first_index, 0)
    return [*scan.offsets[1:], scan.valid_end] if len(scan.offsets) else []


def _read_mark(segment: Path) -> int:
    """The durable length of ``segment``; 0 if it was never synced since it was made."""
    mark = segment.with_name(segment.name + MARK_SUFFIX)
    try:
        return int(mark.read_bytes() or b"0")
    except FileNotFoundError:
        return 0


def _write_mark(segment: Path, size: int) -> None:
    segment.with_name(segment.name + MARK_SUFFIX).write_bytes(b"%020d" % size)


def crash_disk(
    raft_dir: Path, rng: random.Random, *, lose_unsynced: bool, tear: bool, tear_synced: bool
) -> DiskDamage:
    """Apply a crash to the (stopped) server's log: drop the records written after its
    last sync (``lose_unsynced``); ``tear``: keep part of the first record dropped, or, if
    none was and ``tear_synced``, cut into the last record although it was synced (a
    disk that lost acknowledged data, which Raft does not promise to survive)."""
    segment = _last_segment(raft_dir)
    if segment is None:
        return DiskDamage()
    ends = _record_ends(segment)
    valid_end = ends[-1] if ends else 0
    keep = min(_read_mark(segment), valid_end) if lose_unsynced else valid_end
    lost = [end for end in ends if end > keep]
    torn = 0
    if tear and lost:
        start = max([0, *(end for end in ends if end <= keep)])
        torn = rng.randrange(1, lost[0] - start)
    elif tear and tear_synced and ends:
        start = ends[-2] if len(ends) > 1 else 0
        torn = rng.randrange(1, ends[-1] - start)
        keep, lost = start, [ends[-1]]
    with open(segment, "r+b") as handle:
        handle.truncate(keep + torn)
    # Recovery will cut the torn part; the rest is on disk for good, as after a reboot.
    _write_mark(segment, keep)
    return DiskDamage(len(lost), torn)
