"""``shardwise stop``, ``start``, ``restart`` (one process of a running ``shardwise up``)
and ``down`` (the whole cluster; ``--purge`` deletes it)."""

from __future__ import annotations

import contextlib
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Final

import click

from shardwise.cli.common import cluster_options, out
from shardwise.cli.control import CONTROL_SOCKET, send_control
from shardwise.cli.supervisor import (
    LOCK_FILE,
    READY_TIMEOUT_S,
    RUN_FILE,
    STOP_TIMEOUT_S,
    ClusterLock,
    running_elsewhere,
)
from shardwise.clusterfile import DESCRIPTION_FILE, ClusterLayout, find_layout
from shardwise.errors import CliError, ClusterInUseError

REQUEST_TIMEOUT_S: Final = 2 * STOP_TIMEOUT_S + READY_TIMEOUT_S + 5.0
"""The longest a stop, start or restart takes in ``shardwise up`` (a stop that needs
SIGKILL, then a start), and a little."""

DOWN_TIMEOUT_S: Final = 2 * STOP_TIMEOUT_S + 10.0
"""``shardwise down``: every process's clean stop (then SIGKILL), and a little."""

POLL_S: Final = 0.1

SQL_HISTORY_FILE: Final = "sql_history"
"""``sqlshell.HISTORY_FILE`` (not imported from there: that loads the SQL layer)."""


def _checked(cluster_dir: str | None, config: str | None, names: Sequence[str]) -> ClusterLayout:
    layout = find_layout(cluster_dir, config)
    for name in names:
        layout.process(name)  # an unknown name fails here, with the known ones listed
    return layout


kill_option = click.option(
    "--kill", is_flag=True, help="SIGKILL (a crash) instead of SIGTERM (a clean stop)."
)


@click.command()
@click.argument("names", nargs=-1, required=True)
@cluster_options
@kill_option
def stop(names: tuple[str, ...], cluster_dir: str | None, config: str | None, kill: bool) -> None:
    """Stop NAMES (e.g. g1-2) in the running `shardwise up`; they stay down until
    `shardwise start` (or the next `shardwise up`)."""
    layout = _checked(cluster_dir, config, names)
    out.print(
        send_control(layout.root, "stop", list(names), kill=kill, timeout_s=REQUEST_TIMEOUT_S)
    )


@click.command()
@click.argument("names", nargs=-1, required=True)
@cluster_options
def start(names: tuple[str, ...], cluster_dir: str | None, config: str | None) -> None:
    """Start NAMES again in the running `shardwise up` (after `shardwise stop`, or after
    it gave up restarting them); returns once they listen."""
    layout = _checked(cluster_dir, config, names)
    out.print(send_control(layout.root, "start", list(names), timeout_s=REQUEST_TIMEOUT_S))


@click.command()
@click.argument("names", nargs=-1, required=True)
@cluster_options
@kill_option
def restart(
    names: tuple[str, ...], cluster_dir: str | None, config: str | None, kill: bool
) -> None:
    """Stop NAMES and start them again on their data (in the running `shardwise up`);
    returns once they listen again."""
    layout = _checked(cluster_dir, config, names)
    message = send_control(
        layout.root, "restart", list(names), kill=kill, timeout_s=REQUEST_TIMEOUT_S
    )
    out.print(message)


@click.command()
@cluster_options
@click.option(
    "--purge",
    is_flag=True,
    help="Delete the cluster: every process's data and logs (and, for a cluster directory "
    "`shardwise up` made, its description and secret), so the next `shardwise up` starts "
    "a new one.",
)
@click.option("--force", is_flag=True, help="With --purge: stop the cluster first if it runs.")
def down(cluster_dir: str | None, config: str | None, purge: bool, force: bool) -> None:
    """Stop the cluster `shardwise up` runs in this directory (as Ctrl-C in its terminal)."""
    layout = find_layout(cluster_dir, config)
    lock = ClusterLock(layout.root)
    holder = lock.holder()
    if holder is not None and purge and not force:
        raise ClusterInUseError(
            f"the cluster in {layout.root} is running (`shardwise up`, pid {holder}): "
            "`shardwise down --purge` refuses to delete it while it runs. Add --force to "
            "stop it first, or stop it with `shardwise down`."
        )
    if holder is not None:
        out.print(send_control(layout.root, "down", [], timeout_s=REQUEST_TIMEOUT_S))
        deadline = time.monotonic() + DOWN_TIMEOUT_S
        while lock.holder() is not None:
            if time.monotonic() >= deadline:
                raise CliError(
                    f"the cluster in {layout.root} still runs after {DOWN_TIMEOUT_S:.0f} s"
                )
            time.sleep(POLL_S)
        out.print(f"Stopped the cluster in {layout.root}.")
    elif not purge:
        out.print(f"No `shardwise up` runs the cluster in {layout.root}; nothing to stop.")
    if purge:
        _purge(layout, mine=config is None)


def _purge(layout: ClusterLayout, mine: bool) -> None:
    elsewhere = running_elsewhere(layout)
    if elsewhere:
        raise ClusterInUseError(
            f"{', '.join(elsewhere)} still run on the data in {layout.data_dir} (started by "
            "`shardwise node` or a service manager): stop them first"
        )
    removed: list[str] = []
    # Only what the processes wrote: each one's data directory and log. ``data_dir`` and
    # ``log_dir`` are the operator's to choose (``.``, a shared disk): never the whole.
    for process in layout.processes:
        _remove_tree(layout.data_dir / process.name, removed)
        with contextlib.suppress(FileNotFoundError):
            layout.log_file(process.name).unlink()
            removed.append(str(layout.log_file(process.name)))
    for directory in (layout.data_dir, layout.log_dir):
        if directory != layout.root:
            with contextlib.suppress(OSError):
                directory.rmdir()  # only if nothing else is in it
    names = [RUN_FILE, LOCK_FILE, CONTROL_SOCKET, SQL_HISTORY_FILE]
    if mine:  # what `shardwise up` wrote; a description given with --config is the operator's
        names += [DESCRIPTION_FILE]
        if layout.secret_file.parent == layout.root:
            names.append(layout.secret_file.name)
    for name in names:
        with contextlib.suppress(FileNotFoundError):
            (layout.root / name).unlink()
            removed.append(name)
    if mine:
        with contextlib.suppress(OSError):
            layout.root.rmdir()  # only if nothing else is in it
    out.print(f"Deleted the cluster in {layout.root}: {', '.join(removed) or 'nothing there'}.")


def _remove_tree(path: Path, removed: list[str]) -> None:
    """Delete a process's data directory; a symbolic link in its place is removed, not
    followed (what it points at is not the cluster's to delete)."""
    if path.is_symlink():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)
    else:
        return
    removed.append(str(path))
