"""``shardwise group``, ``shard`` and ``rebalance``: change which group owns which shard."""

from __future__ import annotations

from collections.abc import Sequence

import click

from shardwise.cli.common import (
    change_and_follow,
    cluster_options,
    parse_shard,
    timeout_option,
    wait_option,
    with_admin,
)
from shardwise.clusterfile import ClusterLayout, find_layout
from shardwise.errors import UnknownGroupError
from shardwise.model.config import STRATEGIES, Join, Leave, Move, Rebalance


@click.group()
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
    with_admin(cluster_dir, config, lambda admin: change_and_follow(admin, op, what, wait, timeout))


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
    with_admin(cluster_dir, config, lambda admin: change_and_follow(admin, op, what, wait, timeout))


@click.group()
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
    op = Move(parse_shard(shard_name), gid)
    what = f"{op.shard} to group {gid}"
    with_admin(cluster_dir, config, lambda admin: change_and_follow(admin, op, what, wait, timeout))


@click.command()
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
    with_admin(cluster_dir, config, lambda admin: change_and_follow(admin, op, what, wait, timeout))
