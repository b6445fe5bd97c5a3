"""The ``shardwise`` command: run a cluster, look at it, use it, change it.

Each group of commands has its module (``kv_commands``, ``placement_commands``,
``sql_command``, ``logs_command``; what they share is in ``common``); this one holds the
top-level group, the commands that run processes (``up``, ``node``) or show the cluster
(``status``), and the entry point. Failures end with a message that says what to do and
an exit code from :mod:`shardwise.cli.exits`.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence

import click
from rich.text import Text

from shardwise import __version__
from shardwise.cli.access_commands import role, user
from shardwise.cli.admin import DEFAULT_RATE_INTERVAL_S
from shardwise.cli.cert_command import cert
from shardwise.cli.check_command import check
from shardwise.cli.common import cluster_options, err, out, recorded_pids, with_admin
from shardwise.cli.exits import ExitCode, exit_code_for
from shardwise.cli.kv_commands import bench, kv
from shardwise.cli.logs_command import logs
from shardwise.cli.placement_commands import group, rebalance, shard
from shardwise.cli.process_commands import down, restart, start, stop
from shardwise.cli.render import status_view
from shardwise.cli.sql_command import sql_shell
from shardwise.cli.up import UpOptions, run_up
from shardwise.clusterfile import DEFAULT_BASE_PORT, find_layout, read_secret
from shardwise.errors import ShardwiseError
from shardwise.service import DEFAULT_TICK_MS


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
    "--tls/--no-tls",
    default=False,
    show_default=True,
    help="A new cluster runs TLS: a CA and node certificates under its directory.",
)
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
    tls: bool,
) -> None:
    """Run a whole cluster on this machine until Ctrl-C.

    A controller of 3 replicas and 3 groups of 3 servers, each its own process on
    loopback, data under ./.shardwise. Running it again reuses the data.
    """
    sizing = ("controllers", "groups", "replicas", "spare_groups", "base_port", "tick_ms")
    given = frozenset(
        name
        for name in sizing
        if ctx.get_parameter_source(name) is not click.core.ParameterSource.DEFAULT
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
        tls=tls,
        given=given,
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
@click.option(
    "--log-file",
    is_flag=True,
    help="Append the process's output to LOG_DIR/NAME.log (as JSON lines, INFO and up), "
    "where `shardwise logs` on this machine reads it, instead of stderr.",
)
def node(config: str, name: str, print_command: bool, log_file: bool) -> None:
    """Run one process of a cluster (one per machine and process, e.g. under systemd).

    It logs to stderr (journald under systemd) unless --log-file is given."""
    layout = find_layout(None, config)
    command = layout.command(name)
    if print_command:
        click.echo(" ".join(command))
        return
    read_secret(layout.secret_file)  # fail here, clearly, rather than in the server
    (layout.data_dir / name).mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    if log_file:
        layout.log_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(layout.log_file(name), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
        os.environ.setdefault("SHARDWISE_LOG_FORMAT", "json")
        os.environ.setdefault("SHARDWISE_LOG", "INFO")
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
    snapshot = with_admin(cluster_dir, config, lambda admin: admin.sampled_snapshot(interval))
    pids = recorded_pids(layout)
    if as_json:
        click.echo(json.dumps(snapshot.to_json(pids), indent=2))
    else:
        out.print(status_view(snapshot, pids, out.width))


for command in (kv, bench, group, shard, rebalance, sql_shell, logs, stop, start, restart, down):
    cli.add_command(command)
cli.add_command(cert)
cli.add_command(check)
cli.add_command(user)
cli.add_command(role)


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
