"""``shardwise sql``: the SQL shell on a cluster."""

from __future__ import annotations

import sys

import click

from shardwise.cli.admin import Admin, probe
from shardwise.cli.common import cluster_options, err, layout_and_secret, out
from shardwise.cli.sqlshell import DEFAULT_MAX_ROWS, HISTORY_FILE, Shell
from shardwise.client import DEFAULT_DEADLINE_S, SyncClient
from shardwise.model.config import Configuration
from shardwise.net.loop import run


@click.command("sql")
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
    layout, secret = layout_and_secret(cluster_dir, config)
    # Fail now, clearly, if the cluster is down or the secret is wrong: the client
    # itself would only time out on the first statement.
    tls = layout.client_ssl()
    run(probe(layout.controller_addresses, secret, layout.secret_file, ssl_context=tls))

    def latest() -> Configuration:
        # \d shows the catalog as the controller has it now, which may be newer than the
        # client's cached one (another client's DDL).
        async def fetch() -> Configuration:
            async with Admin(layout, secret) as admin:
                return await admin.configuration()

        return run(fetch())

    with SyncClient(
        layout.controller_addresses, secret, deadline_s=timeout, client_ssl=tls
    ) as client:
        shell = Shell(client, out, err, catalog=latest, max_rows=max_rows)
        if command is not None:
            code = shell.run_text(command)
        elif sys.stdin.isatty():
            code = shell.interactive(layout.root / HISTORY_FILE, where=str(layout.root))
        else:
            code = shell.run_lines(sys.stdin)
    ctx.exit(code)
