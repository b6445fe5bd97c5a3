"""``shardwise logs``: print and follow the processes' logs."""

from __future__ import annotations

import os
import time
from typing import Final

import click
from rich.text import Text

from shardwise.cli.common import cluster_options, out
from shardwise.clusterfile import find_layout

LOG_POLL_S: Final = 0.2
DEFAULT_LOG_LINES: Final = 20
MAX_LOG_LINES: Final = 100_000
MAX_TAIL_BYTES: Final = 4 << 20
"""The most of each log read to find its last lines."""
LOG_COLORS: Final = ("cyan", "magenta", "green", "yellow", "blue", "red")


@click.command()
@click.argument("names", nargs=-1)
@cluster_options
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines until Ctrl-C.")
@click.option("-n", "--lines", default=DEFAULT_LOG_LINES, show_default=True)
def logs(
    names: tuple[str, ...], cluster_dir: str | None, config: str | None, follow: bool, lines: int
) -> None:
    """Print (and follow) the logs of NAMES (default: every process)."""
    layout = find_layout(cluster_dir, config)
    if not 0 <= lines <= MAX_LOG_LINES:
        raise click.BadParameter(f"--lines must be in [0, {MAX_LOG_LINES}]")
    chosen = list(names) or [p.name for p in layout.processes]
    for name in chosen:
        layout.process(name)  # an unknown name fails here, with the known ones listed
    width = max(len(n) for n in chosen)
    colors = {n: LOG_COLORS[i % len(LOG_COLORS)] for i, n in enumerate(chosen)}

    def show(name: str, line: str) -> None:
        out.print(Text.assemble((name.ljust(width), colors[name]), " | ", line), soft_wrap=True)

    offsets: dict[str, int] = {}
    for name in chosen:
        path = layout.log_file(name)
        try:
            with open(path, "rb") as handle:
                size = handle.seek(0, os.SEEK_END)
                handle.seek(max(0, size - MAX_TAIL_BYTES))
                tail = handle.read().decode(errors="replace").splitlines()
        except FileNotFoundError:
            offsets[name] = 0
            continue
        offsets[name] = size
        for text in tail[-lines:] if lines else []:
            show(name, text)
    if not follow:
        return
    pending = dict.fromkeys(chosen, b"")
    try:
        while True:
            for name in chosen:
                path = layout.log_file(name)
                try:
                    size = path.stat().st_size
                except FileNotFoundError:
                    continue
                if size < offsets[name]:  # truncated or replaced: start over
                    offsets[name] = 0
                if size == offsets[name]:
                    continue
                with open(path, "rb") as handle:
                    handle.seek(offsets[name])
                    data = handle.read(size - offsets[name])
                offsets[name] += len(data)
                *complete, pending[name] = (pending[name] + data).split(b"\n")
                for raw in complete:
                    show(name, raw.decode(errors="replace"))
            time.sleep(LOG_POLL_S)
    except KeyboardInterrupt:
        return
