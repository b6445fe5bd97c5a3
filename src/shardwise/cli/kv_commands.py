"""``shardwise kv``: read and write keys; ``shardwise bench``: a quick workload."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click
from rich.table import Table

from shardwise.cli.common import cluster_options, err, out, with_client
from shardwise.cli.exits import ExitCode
from shardwise.cli.workload import BenchOptions, run_bench
from shardwise.client import DEFAULT_DEADLINE_S, DEFAULT_SCAN_LIMIT
from shardwise.model.config import DEFAULT_KEYSPACE

F = TypeVar("F", bound=Callable[..., Any])


@click.group()
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
    value = with_client(
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
    with_client(
        cluster_dir, config, lambda c: c.put(key, value), keyspace=keyspace, deadline_s=timeout
    )


@kv.command("del")
@click.argument("key")
@kv_options
def kv_del(
    key: str, cluster_dir: str | None, config: str | None, keyspace: str, timeout: float
) -> None:
    """Delete KEY (nothing happens if it is absent)."""
    with_client(cluster_dir, config, lambda c: c.delete(key), keyspace=keyspace, deadline_s=timeout)


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
    items = with_client(
        cluster_dir,
        config,
        lambda c: c.scan(prefix, start=start, end=end, limit=limit),
        keyspace=keyspace,
        deadline_s=timeout,
    )
    for key, value in items:
        click.echo(f"{key}\t{value}")


@click.command()
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
    result = with_client(cluster_dir, config, lambda c: run_bench(c, options))
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
