"""``shardwise check``: compare every group's replicas now.

Each group's leader logs a check, collects every replica's digest of each shard at that
log index and compares them (``shardserver/checker.py``); this command asks every joined
group's leader at once, prints what each found, and exits with
``ExitCode.REPLICAS_DIFFER`` naming each shard whose replicas differ.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, Final

import click
import msgspec
from rich.table import Table
from rich.text import Text

from shardwise.cli.admin import Admin
from shardwise.cli.common import cluster_options, err, out, with_admin
from shardwise.cli.exits import ExitCode
from shardwise.errors import NetError
from shardwise.shardserver.checker import COLLECT_TIMEOUT_S
from shardwise.shardserver.protocol import CHECK, CheckOutcome, CheckRequest

CHECK_CALL_TIMEOUT_S: Final = COLLECT_TIMEOUT_S + 15.0
"""One group's check: the leader's collection and the logging of the entry before it."""

LEADER_TRIES: Final = 3
"""Servers asked in turn per group (a ``not_leader`` hint is followed)."""


class GroupCheck(msgspec.Struct, frozen=True):
    gid: int
    outcome: CheckOutcome | None
    error: str = ""


async def check_group(admin: Admin, gid: int, servers: list[str]) -> GroupCheck:
    """Ask the group's leader to check it (following hints; a halted one is skipped)."""
    leaders = await admin.leaders({gid: servers})
    leader = leaders[gid]
    order = ([leader.node_id] if leader is not None else []) + servers
    problem = "no leader answers"
    for node in list(dict.fromkeys(order))[:LEADER_TRIES]:
        await admin.status(node)  # (makes the transport know the address)
        try:
            reply = await admin.transport.call(
                node, CHECK, CheckRequest(), timeout_s=CHECK_CALL_TIMEOUT_S
            )
        except NetError as exc:
            problem = f"{node}: {exc}"
            continue
        if reply.status == "ok" and reply.outcome is not None:
            return GroupCheck(gid, reply.outcome)
        problem = f"{node} answered {reply.status}"
        if reply.status == "not_leader" and reply.leader:
            order.insert(0, reply.leader)
    return GroupCheck(gid, None, problem)


async def check_all(admin: Admin, only: tuple[int, ...]) -> list[GroupCheck]:
    config = await admin.configuration()
    groups = {
        gid: list(servers)
        for gid, servers in sorted(config.groups.items())
        if not only or gid in only
    }
    return list(await asyncio.gather(*(check_group(admin, g, s) for g, s in groups.items())))


def check_json(found: list[GroupCheck]) -> dict[str, Any]:
    return {
        "groups": {str(g.gid): msgspec.to_builtins(g) for g in found},
        "mismatches": [
            {
                "group": g.gid,
                "shard": str(m.shard),
                "differ": m.differ,
                "digests": m.digests,
            }
            for g in found
            if g.outcome is not None
            for m in g.outcome.mismatches
        ],
        "ok": all(g.outcome is not None and not g.outcome.mismatches for g in found),
    }


def check_table(found: list[GroupCheck]) -> Table:
    table = Table(title="Consistency check", title_justify="left")
    for column in ("group", "index", "shards", "replicas", "result"):
        table.add_column(column)
    for g in found:
        o = g.outcome
        if o is None:
            table.add_row(str(g.gid), "", "", "", Text(f"not checked: {g.error}", style="red"))
            continue
        replicas = ", ".join(f"{r.node_id} {r.state}" for r in o.replicas)
        if o.mismatches:
            result = Text(
                "; ".join(f"{m.shard} differs on {', '.join(m.differ)}" for m in o.mismatches),
                style="bold red",
            )
        else:
            result = Text("replicas agree", style="green")
        table.add_row(str(g.gid), str(o.index), str(o.shards), replicas, result)
    return table


@click.command(name="check")
@cluster_options
@click.option("--group", "groups", type=int, multiple=True, help="Only this group (repeat).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def check(
    cluster_dir: str | None, config: str | None, groups: tuple[int, ...], as_json: bool
) -> None:
    """Compare every group's replicas now: each replica digests each shard at the same
    log index, and the digests must agree. Exits 15 when replicas differ."""
    found = with_admin(cluster_dir, config, lambda admin: check_all(admin, groups))
    if as_json:
        click.echo(json.dumps(check_json(found), indent=2))
    else:
        out.print(check_table(found))
    differ = [(g.gid, m) for g in found if g.outcome for m in g.outcome.mismatches]
    for gid, m in differ:
        err.print(
            Text.assemble(
                ("replicas differ: ", "bold red"),
                f"group {gid}, shard {m.shard}: {', '.join(m.differ)} (of {', '.join(m.digests)})",
            ),
            soft_wrap=True,
        )
    if differ:
        raise click.exceptions.Exit(ExitCode.REPLICAS_DIFFER)
    if any(g.outcome is None for g in found):
        raise click.exceptions.Exit(ExitCode.ERROR)
