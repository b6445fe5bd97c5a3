"""Reading the processes' log files as one story: each line parsed into an event, the
files merged by time.

A log file holds what a process wrote to stderr and stdout: JSON objects, one a line
(``SHARDWISE_LOG_FORMAT=json``, what ``shardwise up`` asks), or plain lines of the text
format (a server started by hand), the ``READY`` line, the lines ``shardwise up`` adds
when it starts a process or sees it exit, and whatever Python printed before logging was
set up (a traceback). Every line becomes a :class:`LogEvent`; a line without a time of its
own takes the time of the line before it in the same file, so merging keeps it in place.
"""

from __future__ import annotations

import heapq
import json
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

MAX_TAIL_BYTES: Final = 4 << 20
"""The most of each log read to find its last events."""

LEVELS: Final = {"DEBUG": 10, "INFO": 20, "WARNING": 30, "ERROR": 40, "CRITICAL": 50}

_TEXT_LINE: Final = re.compile(
    r"^(\d{4}-\d\d-\d\d) (\d\d:\d\d:\d\d)[,.](\d{3}) (DEBUG|INFO|WARNING|ERROR|CRITICAL) "
    r"(\S+): (.*)$"
)
"""A line of the servers' text format: ``%(asctime)s %(levelname)s %(name)s: %(message)s``."""


@dataclass(frozen=True, slots=True)
class LogEvent:
    time: str
    """``YYYY-MM-DDTHH:MM:SS.mmm`` (local time, as the processes write it); ``""`` for a
    line before any timed one."""
    process: str
    level: str
    """``DEBUG`` ... ``CRITICAL``; ``""`` for a line that is not a log record."""
    message: str
    logger: str = ""
    node: str = ""
    exception: str = ""

    @property
    def severity(self) -> int:
        """The level's number (a plain line counts as INFO)."""
        return LEVELS.get(self.level, LEVELS["INFO"])

    def to_json(self) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "time": self.time or None,
            "process": self.process,
            "level": self.level or None,
            "message": self.message,
        }
        if self.logger:
            entry["logger"] = self.logger
        if self.node:
            entry["node"] = self.node
        if self.exception:
            entry["exception"] = self.exception
        return entry


def parse_line(process: str, line: str, previous_time: str) -> LogEvent:
    """One line of ``process``'s log as an event (``previous_time``: of the line before)."""
    text = line.rstrip("\r")
    if text.startswith("{"):
        try:
            entry = json.loads(text)
        except ValueError:
            entry = None
        if isinstance(entry, dict) and isinstance(entry.get("message"), str):
            time = entry.get("time")
            level = entry.get("level")
            return LogEvent(
                time=time if isinstance(time, str) else previous_time,
                process=process,
                level=level if isinstance(level, str) and level in LEVELS else "",
                message=entry["message"],
                logger=str(entry.get("logger", "")),
                node=str(entry.get("node", "")),
                exception=str(entry.get("exception", "")),
            )
    match = _TEXT_LINE.match(text)
    if match:
        day, clock, millis, level, name, message = match.groups()
        return LogEvent(f"{day}T{clock}.{millis}", process, level, message, logger=name)
    return LogEvent(previous_time, process, "", text)


def parse_lines(process: str, lines: Iterable[str], previous_time: str = "") -> list[LogEvent]:
    events = []
    for line in lines:
        if not line.strip():
            continue
        event = parse_line(process, line, previous_time)
        previous_time = event.time
        events.append(event)
    return events


def tail(path: Path, max_bytes: int = MAX_TAIL_BYTES) -> tuple[list[str], int]:
    """The complete lines in the last ``max_bytes`` of ``path`` and its size (raises
    ``FileNotFoundError``)."""
    with open(path, "rb") as handle:
        size = handle.seek(0, os.SEEK_END)
        start = max(0, size - max_bytes)
        handle.seek(start)
        data = handle.read(size - start)
    lines = data.decode(errors="replace").split("\n")
    if start > 0:
        lines = lines[1:]  # cut in the middle of a line
    return lines, size


def merge(streams: Iterable[list[LogEvent]]) -> Iterator[LogEvent]:
    """Every stream's events in one order by time (each stream is in its file's order,
    which is kept; equal times keep the streams' order)."""
    return heapq.merge(*streams, key=lambda e: e.time)


def short_message(event: LogEvent) -> str:
    """The message without the node id it starts with (the process is named anyway)."""
    for prefix in (event.node, event.process):
        if prefix and event.message.startswith(prefix + ": "):
            return event.message[len(prefix) + 2 :]
    return event.message
