"""The ``shardwise`` command: run a cluster, look at it, use it, change it.

Every command but ``up`` and ``node`` finds the cluster through its description,
``cluster.toml``, in the cluster directory (``--cluster-dir``, else
``$SHARDWISE_CLUSTER_DIR``, else ``./.shardwise``) or named by ``--config``. Failures end
with a message that says what to do and an exit code from :mod:`shardwise.cli.exits`.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final, TypeVar

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

from shardwise import __version__
from shardwise.cli.admin import DEFAULT_MOVE_TIMEOUT_S, DEFAULT_RATE_INTERVAL_S, Admin, probe
from shardwise.cli.exits import ExitCode, exit_code_for
from shardwise.cli.render import MoveProgress, status_view
from shardwise.cli.sqlshell import DEFAULT_MAX_ROWS, HISTORY_FILE, Shell
from shardwise.cli.supervisor import RUN_FILE
from shardwise.cli.up import UpOptions, run_up
from shardwise.cli.workload import BenchOptions, run_bench
from shardwise.client import DEFAULT_DEADLINE_S, DEFAULT_SCAN_LIMIT, Client, SyncClient
from shardwise.clusterfile import (
    CLUSTER_DIR_ENV,
    DEFAULT_BASE_PORT,
    ClusterLayout,
    find_layout,
    read_secret,
    secret_is_private,
)
from shardwise.errors import (
    ShardwiseError,
    UnknownGroupError,
)
from shardwise.model.config import (
    DEFAULT_KEYSPACE,
    STRATEGIES,
    Configuration,
    Join,
    Leave,
    Move,
    Op,
    Rebalance,
    ShardId,
)
from shardwise.net.loop import run
from shardwise.service import DEFAULT_TICK_MS

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

LOG_POLL_S: Final = 0.2
DEFAULT_LOG_LINES: Final = 20
MAX_LOG_LINES: Final = 100_000
MAX_TAIL_BYTES: Final = 4 << 20
"""The most of each log read to find its last lines."""
LOG_COLORS: Final = ("cyan", "magenta", "green", "yellow", "blue", "red")

WIDE_OUTPUT_COLUMNS: Final = 120
"""Width of tables written to a file or a pipe (rich would assume 80 and squeeze them)."""


def _console(stderr: bool = False) -> Console:
    stream = sys.stderr if stderr else sys.stdout
    width = None if stream.isatty() or os.environ.get("COLUMNS") else WIDE_OUTPUT_COLUMNS
    return Console(stderr=stderr, highlight=False, width=width)


out = _console()
err = _console(stderr=True)


# --- shared pieces -------------------------------------------------------------------


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


def _layout_and_secret(cluster_dir: str | None, config: str | None) -> tuple[ClusterLayout, bytes]:
    layout = find_layout(cluster_dir, config)
    secret = read_secret(layout.secret_file)
    if not secret_is_private(layout.secret_file):
        err.print(
            f"[yellow]warning:[/] {layout.secret_file} is readable by other users "
            f"(chmod 600 {layout.secret_file})"
        )
    return layout, secret


def _with_admin(
    cluster_dir: str | None, config: str | None, work: Callable[[Admin], Awaitable[T]]
) -> T:
    layout, secret = _layout_and_secret(cluster_dir, config)

    async def main() -> T:
        async with Admin(layout, secret) as admin:
            return await work(admin)

    return run(main())


def _with_client(
    cluster_dir: str | None,
    config: str | None,
    work: Callable[[Client], Awaitable[T]],
    **options: Any,
) -> T:
    layout, secret = _layout_and_secret(cluster_dir, config)

    async def main() -> T:
        await probe(layout.controller_addresses, secret, layout.secret_file)
        async with Client(layout.controller_addresses, secret, **options) as client:
            return await work(client)

    return run(main())


def _pids(layout: ClusterLayout) -> dict[str, int]:
    """The pids ``shardwise up`` recorded, if it runs this cluster here."""
    try:
        data = json.loads((layout.root / RUN_FILE).read_text())
        return {str(k): int(v) for k, v in data.get("processes", {}).items()}
    except (OSError, ValueError, AttributeError):
        return {}


async def _change_and_follow(admin: Admin, op: Op, what: str, wait: bool, timeout_s: float) -> None:
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


def _parse_shard(text: str) -> ShardId:
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


# --- the commands --------------------------------------------------------------------


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="shardwise")
def cli() -> None:
    """shardwise: a sharded, Raft-replicated key-value store.

    Start a local cluster with `shardwise up`, then use it from another terminal.
    """


@cli.command()
@cluster_options
@click.option("--controllers", default=3, show_default=True, help="Controller replicas.")
@click.option("--groups", default=3, show_default=True, help="Replica groups joined at start.")
@click.option("--replicas", default=3, show_default=True, help="Servers per group.")
@click.option(
    "--spare-groups",
    default=0,
    show_default=True,
    help="Groups started but not joined (for `shardwise group join`).",
)
@click.option(
    "--base-port",
    default=DEFAULT_BASE_PORT,
    show_default=True,
    help="First port (controllers); groups at +100 each; metrics +1000. 0: any free ports.",
)
@click.option("--tick-ms", default=DEFAULT_TICK_MS, show_default=True, help="Raft tick.")
@click.option("--metrics/--no-metrics", default=True, show_default=True)
@click.option(
    "--restart/--no-restart",
    default=True,
    show_default=True,
    help="Start a process again when it exits on its own.",
)
@click.pass_context
def up(
    ctx: click.Context,
    *,
    cluster_dir: str | None,
    config: str | None,
    controllers: int,
    groups: int,
    replicas: int,
    spare_groups: int,
    base_port: int,
    tick_ms: int,
    metrics: bool,
    restart: bool,
) -> None:
    """Run a whole cluster on this machine until Ctrl-C.

    A controller of 3 replicas and 3 groups of 3 servers, each its own process on
    loopback, data under ./.shardwise. Running it again reuses the data.
    """
    sizing = ("controllers", "groups", "replicas", "spare_groups", "base_port", "tick_ms")
    given = any(
        ctx.get_parameter_source(name) is not click.core.ParameterSource.DEFAULT for name in sizing
    )
    options = UpOptions(
        cluster_dir=cluster_dir,
        config=config,
        controllers=controllers,
        groups=groups,
        replicas=replicas,
        spare_groups=spare_groups,
        base_port=base_port,
        tick_ms=tick_ms,
        metrics=metrics,
        restart=restart,
        layout_flags_given=given,
    )
    run_up(options, out)


@cli.command()
@click.option(
    "--config",
    "config",
    required=True,
    type=click.Path(dir_okay=False, exists=True, path_type=str),
    help="The cluster description.",
)
@click.option("--id", "name", required=True, help="The process to run (its name there).")
@click.option("--print-command", is_flag=True, help="Print the command line instead.")
def node(config: str, name: str, print_command: bool) -> None:
    """Run one process of a cluster (one per machine and process, e.g. under systemd)."""
    layout = find_layout(None, config)
    command = layout.command(name)
    if print_command:
        click.echo(" ".join(command))
        return
    read_secret(layout.secret_file)  # fail here, clearly, rather than in the server
    (layout.data_dir / name).mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    # Become the server: signals, exit codes and the READY line are the server's own.
    os.execv(command[0], command)


@cli.command()
@cluster_options
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option(
    "--interval",
    type=click.FloatRange(min=0, max=60),
    default=DEFAULT_RATE_INTERVAL_S,
    show_default=True,
    help="Seconds between the two samples of the servers' counters that give each "
    "shard's operations per second (0: one sample, no rates).",
)
def status(cluster_dir: str | None, config: str | None, as_json: bool, interval: float) -> None:
    """The configuration, the groups and their leaders, the shard map with each shard's
    size and operation rate, moves in flight."""
    layout = find_layout(cluster_dir, config)
    snapshot = _with_admin(cluster_dir, config, lambda admin: admin.sampled_snapshot(interval))
    if as_json:
        click.echo(json.dumps(snapshot.to_json(), indent=2))
    else:
        out.print(status_view(snapshot, _pids(layout), out.width))


# --- kv ------------------------------------------------------------------------------


@cli.group()
def kv() -> None:
    """Read and write keys."""


def kv_options(command: F) -> F:
    command = cluster_options(command)
    command = click.option(
        "--keyspace", default=DEFAULT_KEYSPACE, show_default=True, help="The keyspace."
    )(command)
    command = click.option(
        "--timeout",
        type=float,
        default=DEFAULT_DEADLINE_S,
        show_default=True,
        help="Seconds the operation may take, retries included.",
    )(command)
    return command


@kv.command("get")
@click.argument("key")
@kv_options
@click.pass_context
def kv_get(
    ctx: click.Context,
    *,
    key: str,
    cluster_dir: str | None,
    config: str | None,
    keyspace: str,
    timeout: float,
) -> None:
    """Print KEY's value (exit code 8 if it is absent)."""
    value = _with_client(
        cluster_dir, config, lambda c: c.get(key), keyspace=keyspace, deadline_s=timeout
    )
    if value is None:
        err.print(f"{key!r} is absent")
        ctx.exit(ExitCode.NOT_FOUND)
    click.echo(value)


@kv.command("put")
@click.argument("key")
@click.argument("value")
@kv_options
def kv_put(
    *,
    key: str,
    value: str,
    cluster_dir: str | None,
    config: str | None,
    keyspace: str,
    timeout: float,
) -> None:
    """Set KEY to VALUE."""
    _with_client(
        cluster_dir, config, lambda c: c.put(key, value), keyspace=keyspace, deadline_s=timeout
    )


@kv.command("del")
@click.argument("key")
@kv_options
def kv_del(
    key: str, cluster_dir: str | None, config: str | None, keyspace: str, timeout: float
) -> None:
    """Delete KEY (nothing happens if it is absent)."""
    _with_client(
        cluster_dir, config, lambda c: c.delete(key), keyspace=keyspace, deadline_s=timeout
    )


@kv.command("scan")
@click.argument("prefix", required=False)
@click.option("--start", help="First key (inclusive).")
@click.option("--end", help="Last key (exclusive).")
@click.option("--limit", type=int, default=DEFAULT_SCAN_LIMIT, show_default=True)
@kv_options
def kv_scan(
    *,
    prefix: str | None,
    start: str | None,
    end: str | None,
    limit: int,
    cluster_dir: str | None,
    config: str | None,
    keyspace: str,
    timeout: float,
) -> None:
    """Print KEY<TAB>VALUE lines in key order (keys starting with PREFIX, if given)."""
    items = _with_client(
        cluster_dir,
        config,
        lambda c: c.scan(prefix, start=start, end=end, limit=limit),
        keyspace=keyspace,
        deadline_s=timeout,
    )
    for key, value in items:
        click.echo(f"{key}\t{value}")


# --- membership and placement ---------------------------------------------------------


@cli.group()
def group() -> None:
    """Add replica groups to the cluster or take them out."""


def _group_servers(layout: ClusterLayout, gids: Sequence[int], servers: Sequence[str]) -> Join:
    if servers:
        if len(gids) != 1:
            raise click.BadParameter("--server goes with exactly one group id")
        return Join({gids[0]: tuple(servers)})
    missing = [g for g in gids if g not in layout.groups]
    if missing:
        known = ", ".join(map(str, layout.groups)) or "none"
        raise UnknownGroupError(
            f"group {', '.join(map(str, missing))} is not in {layout.path} (it has {known}); "
            "add it there, or name its servers with --server HOST:PORT"
        )
    return Join({g: tuple(layout.groups[g].node_ids) for g in gids})


@group.command("join")
@click.argument("gids", nargs=-1, type=int, required=True)
@click.option(
    "--server",
    "servers",
    multiple=True,
    help="HOST:PORT of a server of a group the description does not list (repeat).",
)
@cluster_options
@wait_option
@timeout_option
def group_join(
    *,
    gids: tuple[int, ...],
    servers: tuple[str, ...],
    cluster_dir: str | None,
    config: str | None,
    wait: bool,
    timeout: float,
) -> None:
    """Give GIDS shards: the controller rebalances and the shards move to them."""
    layout = find_layout(cluster_dir, config)
    op = _group_servers(layout, gids, servers)
    what = f"group {', '.join(map(str, gids))} joining"
    _with_admin(
        cluster_dir, config, lambda admin: _change_and_follow(admin, op, what, wait, timeout)
    )


@group.command("leave")
@click.argument("gids", nargs=-1, type=int, required=True)
@cluster_options
@wait_option
@timeout_option
def group_leave(
    gids: tuple[int, ...], cluster_dir: str | None, config: str | None, wait: bool, timeout: float
) -> None:
    """Take GIDS out: their shards move to the groups that stay."""
    op = Leave(tuple(gids))
    what = f"group {', '.join(map(str, gids))} leaving"
    _with_admin(
        cluster_dir, config, lambda admin: _change_and_follow(admin, op, what, wait, timeout)
    )


@cli.group()
def shard() -> None:
    """Place single shards by hand."""


@shard.command("move")
@click.argument("shard_name", metavar="SHARD")
@click.argument("gid", type=int)
@cluster_options
@wait_option
@timeout_option
def shard_move(
    *,
    shard_name: str,
    gid: int,
    cluster_dir: str | None,
    config: str | None,
    wait: bool,
    timeout: float,
) -> None:
    """Give SHARD (KEYSPACE/INDEX, or INDEX of the default keyspace) to group GID."""
    op = Move(_parse_shard(shard_name), gid)
    what = f"{op.shard} to group {gid}"
    _with_admin(
        cluster_dir, config, lambda admin: _change_and_follow(admin, op, what, wait, timeout)
    )


@cli.command()
@click.option("--strategy", type=click.Choice(STRATEGIES), required=True)
@click.option("--keyspace", default="", help="One keyspace (default: every keyspace).")
@cluster_options
@wait_option
@timeout_option
def rebalance(
    *,
    strategy: str,
    keyspace: str,
    cluster_dir: str | None,
    config: str | None,
    wait: bool,
    timeout: float,
) -> None:
    """Set the assignment strategy and move shards to match it."""
    op = Rebalance(strategy, keyspace)  # type: ignore[arg-type]  # click.Choice checked it
    what = f"rebalance ({strategy})"
    _with_admin(
        cluster_dir, config, lambda admin: _change_and_follow(admin, op, what, wait, timeout)
    )


# --- sql -----------------------------------------------------------------------------


@cli.command("sql")
@cluster_options
@click.option(
    "-c",
    "--command",
    "command",
    metavar="SQL",
    help="Run SQL (statements separated by ;) or one \\ command, then exit: the exit "
    "code is the first failure's (12 for a SQL error).",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=DEFAULT_DEADLINE_S,
    show_default=True,
    help="Seconds each statement may take, retries included.",
)
@click.option(
    "--max-rows",
    type=click.IntRange(min=0),
    default=DEFAULT_MAX_ROWS,
    show_default=True,
    help="Rows of a result printed (the rest are counted).",
)
@click.pass_context
def sql_shell(
    ctx: click.Context,
    *,
    cluster_dir: str | None,
    config: str | None,
    command: str | None,
    timeout: float,
    max_rows: int,
) -> None:
    """A SQL shell on the cluster: statements end with ;, \\d describes tables.

    Interactive on a terminal (line editing, history kept in the cluster directory);
    with -c or from a pipe it runs the statements and exits. docs/sql.md has the SQL.
    """
    layout, secret = _layout_and_secret(cluster_dir, config)
    # Fail now, clearly, if the cluster is down or the secret is wrong: the client
    # itself would only time out on the first statement.
    run(probe(layout.controller_addresses, secret, layout.secret_file))

    def latest() -> Configuration:
        # \d shows the catalog as the controller has it now, which may be newer than the
        # client's cached one (another client's DDL).
        async def fetch() -> Configuration:
            async with Admin(layout, secret) as admin:
                return await admin.configuration()

        return run(fetch())

    with SyncClient(layout.controller_addresses, secret, deadline_s=timeout) as client:
        shell = Shell(client, out, err, catalog=latest, max_rows=max_rows)
        if command is not None:
            code = shell.run_text(command)
        elif sys.stdin.isatty():
            code = shell.interactive(layout.root / HISTORY_FILE, where=str(layout.root))
        else:
            code = shell.run_lines(sys.stdin)
    ctx.exit(code)


# --- bench ---------------------------------------------------------------------------


@cli.command()
@cluster_options
@click.option("--ops", default=2000, show_default=True, help="Operations in all.")
@click.option("--concurrency", default=16, show_default=True, help="Operations in flight.")
@click.option("--read-ratio", default=0.5, show_default=True, help="Share of gets.")
@click.option("--keys", default=1000, show_default=True, help="Distinct keys.")
@click.option("--value-size", default=100, show_default=True, help="Bytes per value.")
@click.option("--prefix", default="bench:", show_default=True, help="Key prefix.")
def bench(
    *,
    cluster_dir: str | None,
    config: str | None,
    ops: int,
    concurrency: int,
    read_ratio: float,
    keys: int,
    value_size: int,
    prefix: str,
) -> None:
    """A quick mixed get/put workload against the running cluster."""
    options = BenchOptions(ops, concurrency, read_ratio, keys, value_size, prefix)
    options.check()
    result = _with_client(cluster_dir, config, lambda c: run_bench(c, options))
    table = Table(
        title=f"{result.total} operations, {concurrency} in flight, "
        f"{result.total / max(result.seconds, 1e-9):,.0f} ops/s",
        title_justify="left",
    )
    for column in ("op", "count", "p50 ms", "p95 ms", "p99 ms", "max ms"):
        table.add_column(column, justify="right")
    for op_name, values in result.latencies.items():
        if not values:
            continue
        table.add_row(
            op_name,
            str(len(values)),
            *(f"{result.percentile(op_name, q) * 1000:.2f}" for q in (0.5, 0.95, 0.99)),
            f"{max(values) * 1000:.2f}",
        )
    out.print(table)


# --- logs ----------------------------------------------------------------------------


@cli.command()
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


# --- the entry point -----------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; the exit code (see :mod:`shardwise.cli.exits`)."""
    try:
        code = cli.main(args=argv, prog_name="shardwise", standalone_mode=False)
    except click.exceptions.Abort:
        err.print("interrupted")
        return ExitCode.INTERRUPTED
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except KeyboardInterrupt:
        err.print("interrupted")
        return ExitCode.INTERRUPTED
    except ShardwiseError as exc:
        code = exit_code_for(exc)
        err.print(Text.assemble(("error: ", "bold red"), str(exc)), soft_wrap=True)
        return code
    return code if isinstance(code, int) else ExitCode.OK


def entry() -> None:
    """The console script."""
    sys.exit(main())
