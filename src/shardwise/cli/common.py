"""What the commands share: the consoles, finding the cluster, running work against it.

Every command but ``up`` and ``node`` finds the cluster through its description,
``cluster.toml``, in the cluster directory (``--cluster-dir``, else
``$SHARDWISE_CLUSTER_DIR``, else ``./.shardwise``) or named by ``--config``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final, TypeVar

import click
from rich.console import Console

from shardwise.cli.admin import DEFAULT_MOVE_TIMEOUT_S, Admin, probe
from shardwise.cli.render import MoveProgress
from shardwise.cli.supervisor import RUN_FILE
from shardwise.client import Client
from shardwise.clusterfile import (
    CLUSTER_DIR_ENV,
    ClusterLayout,
    find_layout,
    read_secret,
    secret_is_private,
)
from shardwise.model.config import DEFAULT_KEYSPACE, Op, ShardId
from shardwise.net.auth import Credentials, Login
from shardwise.net.loop import run

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

WIDE_OUTPUT_COLUMNS: Final = 120
"""Width of tables written to a file or a pipe (rich would assume 80 and squeeze them)."""


def _console(stderr: bool = False) -> Console:
    stream = sys.stderr if stderr else sys.stdout
    width = None if stream.isatty() or os.environ.get("COLUMNS") else WIDE_OUTPUT_COLUMNS
    return Console(stderr=stderr, highlight=False, width=width)


out = _console()
err = _console(stderr=True)


def cluster_options(command: F) -> F:
    """``--cluster-dir`` and ``--config`` on a command (after the subcommand, where people
    type them)."""
    command = click.option(
        "--config",
        "config",
        type=click.Path(dir_okay=False, path_type=str),
        help="The cluster description to use (instead of DIR/cluster.toml).",
    )(command)
    command = click.option(
        "--cluster-dir",
        "cluster_dir",
        envvar=CLUSTER_DIR_ENV,
        type=click.Path(file_okay=False, path_type=str),
        help=f"The cluster's directory [default: ./.shardwise; env: {CLUSTER_DIR_ENV}].",
    )(command)
    return command


USER_ENV: Final = "SHARDWISE_USER"
PASSWORD_ENV: Final = "SHARDWISE_PASSWORD"


def login_from_environment() -> Login | None:
    """The user to log in as, if ``SHARDWISE_USER`` names one: its password from
    ``SHARDWISE_PASSWORD``, else asked for on the terminal."""
    user = os.environ.get(USER_ENV)
    if not user:
        return None
    password = os.environ.get(PASSWORD_ENV)
    if password is None:
        password = str(click.prompt(f"Password for {user}", hide_input=True, err=True))
    return Login(user, password)


def layout_and_secret(
    cluster_dir: str | None, config: str | None
) -> tuple[ClusterLayout, Credentials]:
    """The cluster's description and what to prove to it: a user's login when
    ``SHARDWISE_USER`` is set, else the secret in the cluster's secret file."""
    layout = find_layout(cluster_dir, config)
    login = login_from_environment()
    if login is not None:
        return layout, login
    secret = read_secret(layout.secret_file)
    if not secret_is_private(layout.secret_file):
        err.print(
            f"[yellow]warning:[/] {layout.secret_file} is readable by other users "
            f"(chmod 600 {layout.secret_file})"
        )
    return layout, secret


def with_admin(
    cluster_dir: str | None, config: str | None, work: Callable[[Admin], Awaitable[T]]
) -> T:
    layout, secret = layout_and_secret(cluster_dir, config)

    async def main() -> T:
        async with Admin(layout, secret) as admin:
            return await work(admin)

    return run(main())


def with_client(
    cluster_dir: str | None,
    config: str | None,
    work: Callable[[Client], Awaitable[T]],
    **options: Any,
) -> T:
    layout, secret = layout_and_secret(cluster_dir, config)

    async def main() -> T:
        tls = layout.client_ssl()
        await probe(layout.controller_addresses, secret, layout.secret_file, ssl_context=tls)
        options.setdefault("client_ssl", tls)
        async with Client(layout.controller_addresses, secret, **options) as client:
            return await work(client)

    return run(main())


def recorded_pids(layout: ClusterLayout) -> dict[str, int]:
    """The pids ``shardwise up`` recorded, if it runs this cluster here."""
    try:
        data = json.loads((layout.root / RUN_FILE).read_text())
        return {str(k): int(v) for k, v in data.get("processes", {}).items()}
    except (OSError, ValueError, AttributeError):
        return {}


async def change_and_follow(admin: Admin, op: Op, what: str, wait: bool, timeout_s: float) -> None:
    started = time.monotonic()
    result = await admin.change(op)
    moves = len(result.moves)
    out.print(
        f"{what}: configuration {result.num}, "
        + (f"{moves} shard{'s' if moves != 1 else ''} to move" if moves else "nothing to move")
    )
    if not moves or not wait:
        return
    with MoveProgress(out, what, moves) as progress:
        await admin.follow(result, progress.update, timeout_s)
    out.print(f"Done: every move finished in {time.monotonic() - started:.1f} s.")


def parse_shard(text: str) -> ShardId:
    keyspace, sep, index = text.rpartition("/")
    if not sep:
        keyspace = DEFAULT_KEYSPACE
    if not index.isdigit():
        raise click.BadParameter(f"a shard is KEYSPACE/INDEX or INDEX, not {text!r}")
    return ShardId(keyspace, int(index))


wait_option = click.option(
    "--wait/--no-wait",
    default=True,
    show_default=True,
    help="Follow the shard moves with progress bars until they are done.",
)
timeout_option = click.option(
    "--timeout",
    type=float,
    default=DEFAULT_MOVE_TIMEOUT_S,
    show_default=True,
    help="Seconds to wait for the moves (they go on in the cluster after that).",
)
