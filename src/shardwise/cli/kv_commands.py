"""``shardwise kv``: read and write keys; ``shardwise bench``: a quick workload."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click
from rich.table import Table

from shardwise.cli.common import cluster_options, err, out, with_client
from shardwise.cli.exits import ExitCode
from shardwise.cli.workload import BenchOptions, run_bench
from shardwise.client import DEFAULT_DEADLINE_S, DEFAULT_SCAN_LIMIT
from shardwise.errors import RequestRefusedError
from shardwise.model.config import DEFAULT_KEYSPACE
from shardwise.model.kv import MAX_VALUE_BYTES, Value

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
@click.option(
    "--raw/--escaped",
    default=None,
    help="Write a bytes value as its raw bytes, or escaped (\\xNN). Default: raw to a "
    "pipe or file, escaped on a terminal.",
)
@kv_options
@click.pass_context
def kv_get(
    ctx: click.Context,
    *,
    key: str,
    raw: bool | None,
    cluster_dir: str | None,
    config: str | None,
    keyspace: str,
    timeout: float,
) -> None:
    """Print KEY's value (exit code 8 if it is absent).

    A text value is printed with a newline. A bytes value (one written from a file or
    stdin, or as bytes from Python) goes out as its exact bytes, without a newline, when
    the output is a pipe or a file ('kv get KEY > file' and 'kv put KEY @file' round
    trip), and escaped (\\x00\\xff, as in a Python bytes literal) on a terminal.
    """
    value = with_client(
        cluster_dir, config, lambda c: c.get(key), keyspace=keyspace, deadline_s=timeout
    )
    if value is None:
        err.print(f"{key!r} is absent")
        ctx.exit(ExitCode.NOT_FOUND)
    if isinstance(value, str):
        click.echo(value)
        return
    if raw if raw is not None else not _is_terminal():
        stdout = sys.stdout.buffer
        stdout.write(value)
        stdout.flush()
    else:
        click.echo(escaped(value))


@kv.command("put")
@click.argument("key")
@click.argument("value")
@click.option(
    "--literal",
    is_flag=True,
    help="Store VALUE as written, even if it is '-' or starts with '@'.",
)
@click.option(
    "--text",
    is_flag=True,
    help="Store a value read from stdin or a file as text (it must be UTF-8), not bytes.",
)
@kv_options
def kv_put(
    *,
    key: str,
    value: str,
    literal: bool,
    text: bool,
    cluster_dir: str | None,
    config: str | None,
    keyspace: str,
    timeout: float,
) -> None:
    """Set KEY to VALUE.

    VALUE is stored as text, except: '-' reads the value from stdin and '@FILE' from
    FILE, each stored as its exact bytes (with --text: as UTF-8 text). Up to the value
    limit of 1 MiB; a larger value is refused before anything is sent (exit code 11).
    --literal stores '-' or '@...' as written.
    """
    data: Value = value
    if not literal and (value == "-" or value.startswith("@")):
        data = read_value(value, text=text)
    with_client(
        cluster_dir, config, lambda c: c.put(key, data), keyspace=keyspace, deadline_s=timeout
    )


def read_value(source: str, *, text: bool) -> Value:
    """The value ``-`` (stdin) or ``@FILE`` names, read up to one byte past the limit so
    that a larger one is refused without reading it all."""
    data: bytes
    try:
        if source == "-":
            data = sys.stdin.buffer.read(MAX_VALUE_BYTES + 1)
        else:
            with open(source[1:], "rb") as file:
                data = file.read(MAX_VALUE_BYTES + 1)
    except OSError as exc:
        raise click.BadParameter(f"cannot read {source[1:]!r}: {exc.strerror}") from None
    if len(data) > MAX_VALUE_BYTES:
        where = "stdin" if source == "-" else repr(source[1:])
        raise RequestRefusedError(
            f"the value from {where} is over the limit of {MAX_VALUE_BYTES} bytes"
        )
    if not text:
        return data
    try:
        return data.decode()
    except UnicodeDecodeError as exc:
        raise click.BadParameter(f"--text: the value is not UTF-8 ({exc.reason})") from None


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
    """Print KEY<TAB>VALUE lines in key order (keys starting with PREFIX, if given).

    Keys are ordered by their bytes. Bytes keys and values, and text with a tab, a newline
    or another unprintable character, are printed escaped (\\x00, \\t, \\n, as in a
    Python literal), so every pair stays on one line.
    """
    items = with_client(
        cluster_dir,
        config,
        lambda c: c.scan(prefix, start=start, end=end, limit=limit),
        keyspace=keyspace,
        deadline_s=timeout,
    )
    for key, value in items:
        click.echo(f"{printable(key)}\t{printable(value)}")


def escaped(data: bytes) -> str:
    """``data`` as in a Python bytes literal, without ``b''``: ``\\x00``, ``\\n``..."""
    return repr(data)[2:-1]


def printable(data: Value) -> str:
    """``data`` on one line: text as is when it is printable, else escaped."""
    if isinstance(data, bytes):
        return escaped(data)
    return data if data.isprintable() else repr(data)[1:-1]


def _is_terminal() -> bool:
    return sys.stdout.isatty()


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
