"""Opening a log directory: find the segments, check them, and cut away a torn tail.

The rules (see ``DESIGN.md``):

1. Segments a snapshot covers entirely are deleted unread.
2. Every other segment is scanned record by record. Segment names and the entries inside
   must form one gap-free run of indexes, with terms that never decrease.
3. A record that cannot be read is a *torn tail* only if it sits in the last segment and
   no readable record follows it; the tail is then truncated (and the truncation
   fsynced). Anywhere else it is damage to data that was once durable, and opening fails
   with ``CorruptLogError`` naming the file and offset. We never skip over it.
4. The log is reconciled with the snapshot: if the log holds the snapshot's last entry
   with the same term (or starts right after it), the entries after it are kept;
   otherwise the log predates a snapshot installed from the leader and is discarded.
"""

from __future__ import annotations

import os
import re
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

from shardwise.errors import CorruptLogError
from shardwise.storage.fsutil import Disk, read_all
from shardwise.storage.record import SegmentScan, scan_segment
from shardwise.storage.types import SnapshotMeta

_SEGMENT_NAME: Final = re.compile(r"^seg-(\d{20})\.log$")


def segment_name(first_index: int) -> str:
    """Zero-padded so that names sort like the indexes they hold."""
    return f"seg-{first_index:020d}.log"


@dataclass
class Segment:
    """One segment file: the index of its first entry, its name, and its valid length."""

    first_index: int
    name: str
    size: int = 0


@dataclass
class RecoveredLog:
    """The log as found on disk: segments plus per-entry index for ``first .. last``."""

    segments: list[Segment]
    first: int
    base_term: int
    """Term of entry ``first - 1`` (the snapshot's term, or 0)."""
    terms: array[int] = field(default_factory=lambda: array("Q"))
    offsets: array[int] = field(default_factory=lambda: array("Q"))
    """Offset of each entry's record inside its segment."""
    data_lengths: array[int] = field(default_factory=lambda: array("Q"))


def list_segments(directory: str) -> list[Segment]:
    """The segment files in ``directory``, in log order."""
    found: list[Segment] = []
    for name in os.listdir(directory):
        match = _SEGMENT_NAME.match(name)
        if match:
            found.append(Segment(int(match.group(1)), name))
    found.sort(key=lambda segment: segment.first_index)
    return found


def recover_log(directory: str, disk: Disk, snapshot: SnapshotMeta | None) -> RecoveredLog:
    """Read the log in ``directory`` as it must be served after a restart."""
    covered = 0 if snapshot is None else snapshot.index
    segments = _drop_covered(directory, disk, list_segments(directory), covered)
    if segments and not 1 <= segments[0].first_index <= covered + 1:
        raise CorruptLogError(
            f"{segments[0].name}: log starts at entry {segments[0].first_index}, "
            f"but entries up to {covered} are all that a snapshot covers"
        )
    log = RecoveredLog(segments, segments[0].first_index if segments else covered + 1, 0)
    _scan_all(directory, disk, log)
    if snapshot is not None:
        _reconcile(directory, disk, log, snapshot)
    return log


def _drop_covered(
    directory: str, disk: Disk, segments: list[Segment], covered: int
) -> list[Segment]:
    """Delete segments whose entries all precede the snapshot's last entry.

    The segment holding entry ``covered`` itself is kept, so that the log can be checked
    against the snapshot.
    """
    keep_from = 0
    while keep_from + 1 < len(segments) and segments[keep_from + 1].first_index <= covered:
        keep_from += 1
    remove_segments(directory, disk, segments[:keep_from])
    return segments[keep_from:]


def _scan_all(directory: str, disk: Disk, log: RecoveredLog) -> None:
    expected = log.first
    previous_term = 0
    for position, segment in enumerate(log.segments):
        if segment.first_index != expected:
            raise CorruptLogError(
                f"{segment.name}: starts at entry {segment.first_index}, but the segment "
                f"before it ends at {expected - 1}"
            )
        path = os.path.join(directory, segment.name)
        scan = scan_segment(read_all(path), segment.name, segment.first_index, previous_term)
        if scan.bad_reason is not None:
            is_last = position == len(log.segments) - 1
            if not is_last or scan.later_record is not None:
                raise CorruptLogError(_damage_message(segment.name, scan))
            _truncate_file(path, disk, scan.valid_end)
        segment.size = scan.valid_end
        log.terms.extend(scan.terms)
        log.offsets.extend(scan.offsets)
        log.data_lengths.extend(scan.data_lengths)
        expected += len(scan.terms)
        if scan.terms:
            previous_term = scan.terms[-1]


def _damage_message(name: str, scan: SegmentScan) -> str:
    if scan.later_record is None:
        where = "in a segment that is not the last"
    else:
        where = f"followed by a valid record at offset {scan.later_record}"
    return f"{name}: offset {scan.valid_end}: {scan.bad_reason}, {where}"


def _truncate_file(path: str, disk: Disk, size: int) -> None:
    """Cut a torn tail away, durably, before anything is appended after it: otherwise a
    crash could leave new records followed by the old torn bytes."""
    fd = os.open(path, os.O_RDWR)
    try:
        os.ftruncate(fd, size)
        disk.fdatasync(fd)
    finally:
        os.close(fd)


def _reconcile(directory: str, disk: Disk, log: RecoveredLog, snapshot: SnapshotMeta) -> None:
    """Keep the entries after the snapshot if the log agrees with it, else discard all."""
    physical_first = log.first
    last = physical_first + len(log.terms) - 1
    index = snapshot.index
    starts_after = index == physical_first - 1
    holds_match = (
        physical_first <= index <= last and log.terms[index - physical_first] == snapshot.term
    )
    if starts_after or holds_match:
        drop = index + 1 - physical_first
        del log.terms[:drop]
        del log.offsets[:drop]
        del log.data_lengths[:drop]
    else:
        remove_segments(directory, disk, log.segments[::-1])
        log.segments = []
        log.terms, log.offsets, log.data_lengths = array("Q"), array("Q"), array("Q")
    log.first = index + 1
    log.base_term = snapshot.term


def remove_segments(directory: str, disk: Disk, segments: Sequence[Segment]) -> None:
    """Delete segments in the order given, each one durably before the next.

    A file system may persist directory changes out of order; an fsync of the directory
    after each removal makes sure a crash leaves exactly the segments not yet removed.
    Removing from the end (truncation, discard) then always leaves a prefix of the log,
    and removing from the start (compaction) a suffix: never a log with a hole, and never
    a suffix of a discarded log that could pass for entries following a snapshot.
    """
    for segment in segments:
        os.remove(os.path.join(directory, segment.name))
        disk.fsync_dir(directory)
