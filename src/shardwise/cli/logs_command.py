"""``shardwise logs``: the processes' logs as one story, merged by time, one line per
event (``--json``: one JSON object per event, for machines), and new events with
``--follow``."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Final

import click
from rich.text import Text

from shardwise.cli.common import cluster_options, err, out
from shardwise.cli.logreader import LEVELS, LogEvent, merge, parse_lines, short_message, tail
from shardwise.clusterfile import ClusterLayout, find_layout
from shardwise.errors import CliError

LOG_POLL_S: Final = 0.2
DEFAULT_LOG_LINES: Final = 20
MAX_LOG_LINES: Final = 100_000
PROCESS_COLORS: Final = ("cyan", "magenta", "green", "blue", "bright_cyan", "bright_magenta")
LEVEL_STYLES: Final = {
    "DEBUG": "dim",
    "INFO": "",
    "WARNING": "yellow",
    "ERROR": "bold red",
    "CRITICAL": "bold white on red",
    "": "dim",
}


def no_logs_here(layout: ClusterLayout, names: Sequence[str]) -> str:
    return (
        f"no log of {', '.join(names)} in {layout.log_dir}. `shardwise up` writes each "
        "process's log there; a process run with `shardwise node` logs to its stderr (under "
        "systemd: `journalctl -u shardwise@NAME`), unless it was started with `--log-file`, "
        "which appends to that directory on its own machine (docs/operations.md, Logs)."
    )


class Printer:
    """Draws events for people (or as JSON lines)."""

    def __init__(self, names: Sequence[str], as_json: bool) -> None:
        self._as_json = as_json
        self._width = max(len(n) for n in names)
        self._colors = {n: PROCESS_COLORS[i % len(PROCESS_COLORS)] for i, n in enumerate(names)}

    def show(self, event: LogEvent) -> None:
        if self._as_json:
            click.echo(json.dumps(event.to_json()))
            return
        clock = event.time[11:23] if len(event.time) >= 23 else event.time.ljust(12)
        style = LEVEL_STYLES.get(event.level, "")
        line = Text.assemble(
            (clock.ljust(12), "dim"),
            " ",
            (event.process.ljust(self._width), self._colors.get(event.process, "")),
            " ",
            ((event.level or "").ljust(8), style),
            (short_message(event), style if event.level not in ("", "INFO") else ""),
        )
        out.print(line, soft_wrap=True)
        if event.exception:
            for text in event.exception.splitlines():
                out.print(Text("    " + text, style="red"), soft_wrap=True)


@click.command()
@click.argument("names", nargs=-1)
@cluster_options
@click.option("-f", "--follow", is_flag=True, help="Keep printing new events until Ctrl-C.")
@click.option(
    "-n",
    "--lines",
    default=DEFAULT_LOG_LINES,
    show_default=True,
    help="How many of the last events to print (of all the processes together).",
)
@click.option(
    "--level",
    type=click.Choice(list(LEVELS), case_sensitive=False),
    default="DEBUG",
    show_default=True,
    help="Only events at this level or above.",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per event (for machines).")
def logs(
    *,
    names: tuple[str, ...],
    cluster_dir: str | None,
    config: str | None,
    follow: bool,
    lines: int,
    level: str,
    as_json: bool,
) -> None:
    """Print (and follow) the logs of NAMES (default: every process), merged by time.

    Each line: the time, the process, the level and the message. The files are in the
    cluster's log directory on this machine (`shardwise up` writes them)."""
    layout = find_layout(cluster_dir, config)
    if not 0 <= lines <= MAX_LOG_LINES:
        raise click.BadParameter(f"--lines must be in [0, {MAX_LOG_LINES}]")
    chosen = list(names) or [p.name for p in layout.processes]
    for name in chosen:
        layout.process(name)  # an unknown name fails here, with the known ones listed
    floor = LEVELS[level.upper()]
    printer = Printer(chosen, as_json)

    streams: list[list[LogEvent]] = []
    offsets: dict[str, int] = {}
    last_time: dict[str, str] = {}
    missing: list[str] = []
    for name in chosen:
        try:
            text, size = tail(layout.log_file(name))
        except FileNotFoundError:
            missing.append(name)
            offsets[name] = 0
            continue
        offsets[name] = size
        events = parse_lines(name, text)
        last_time[name] = events[-1].time if events else ""
        streams.append([e for e in events if e.severity >= floor])
    if len(missing) == len(chosen) and not follow:
        raise CliError(no_logs_here(layout, missing))
    if missing:
        err.print(f"[yellow]note:[/] {no_logs_here(layout, missing)}", soft_wrap=True)
    recent = list(merge(streams))
    for event in recent[-lines:] if lines else []:
        printer.show(event)
    if follow:
        _follow(
            layout=layout,
            chosen=chosen,
            offsets=offsets,
            last_time=last_time,
            floor=floor,
            printer=printer,
        )


def _follow(
    *,
    layout: ClusterLayout,
    chosen: Sequence[str],
    offsets: dict[str, int],
    last_time: dict[str, str],
    floor: int,
    printer: Printer,
) -> None:
    pending = dict.fromkeys(chosen, b"")
    try:
        while True:
            streams = []
            for name in chosen:
                path = layout.log_file(name)
                try:
                    size = path.stat().st_size
                except FileNotFoundError:
                    continue
                if size < offsets[name]:  # truncated or replaced: start over
                    offsets[name], pending[name] = 0, b""
                if size == offsets[name]:
                    continue
                with open(path, "rb") as handle:
                    handle.seek(offsets[name])
                    data = handle.read(size - offsets[name])
                offsets[name] += len(data)
                *complete, pending[name] = (pending[name] + data).split(b"\n")
                text = [raw.decode(errors="replace") for raw in complete]
                events = parse_lines(name, text, last_time.get(name, ""))
                if events:
                    last_time[name] = events[-1].time
                streams.append([e for e in events if e.severity >= floor])
            for event in merge(streams):
                printer.show(event)
            time.sleep(LOG_POLL_S)
    except KeyboardInterrupt:
        return
