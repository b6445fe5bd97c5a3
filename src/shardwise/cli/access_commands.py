"""``shardwise user`` and ``shardwise role``: who may use the cluster, and for what.

A password is turned into its SCRAM verifier here, on the operator's machine; only the
verifier goes to the cluster. Grants are ``PRIVILEGE[:KEYSPACE[.TABLE]]`` (``read``,
``write:shop``, ``read:shop.orders``, ``admin``); see docs/security.md.
"""

from __future__ import annotations

import json
import sys

import click
from rich.table import Table as RichTable

from shardwise.cli.admin import Admin
from shardwise.cli.common import cluster_options, out, with_admin
from shardwise.model.access import (
    BUILTIN_ROLES,
    AccessCatalog,
    AccessOp,
    ChangeUserRoles,
    CreateUser,
    DropRole,
    DropUser,
    PutRole,
    Role,
    SetPassword,
    User,
    check_name,
    parse_grant,
)
from shardwise.model.scram import make_verifier

password_stdin_option = click.option(
    "--password-stdin",
    is_flag=True,
    help="Read the password from the first line of standard input instead of asking.",
)


def _password(from_stdin: bool) -> str:
    if from_stdin:
        line = sys.stdin.readline().rstrip("\r\n")
        if not line:
            raise click.BadParameter("no password on standard input", param_hint="--password-stdin")
        return line
    return str(click.prompt("Password", hide_input=True, confirmation_prompt=True))


def _name(value: str, what: str) -> str:
    try:
        return check_name(value, what)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _change(cluster_dir: str | None, config: str | None, op: AccessOp, done: str) -> None:
    async def work(admin: Admin) -> None:
        await admin.controller.change(op)

    with_admin(cluster_dir, config, work)
    out.print(done)


def _catalog(cluster_dir: str | None, config: str | None) -> AccessCatalog:
    async def work(admin: Admin) -> AccessCatalog:
        return await admin.controller.access()

    return with_admin(cluster_dir, config, work)


# --- users -------------------------------------------------------------------------------


@click.group()
def user() -> None:
    """Create users, set their passwords, give them roles."""


@user.command("create")
@click.argument("name")
@click.option("--role", "roles", multiple=True, help="A role to give (repeat).")
@password_stdin_option
@cluster_options
def user_create(
    name: str,
    roles: tuple[str, ...],
    password_stdin: bool,
    cluster_dir: str | None,
    config: str | None,
) -> None:
    """Create user NAME with a password (asked for, twice)."""
    verifier = make_verifier(_password(password_stdin))
    op = CreateUser(User(_name(name, "user"), verifier, roles))
    _change(cluster_dir, config, op, f"Created user {name}.")


@user.command("passwd")
@click.argument("name")
@password_stdin_option
@cluster_options
def user_passwd(
    name: str, password_stdin: bool, cluster_dir: str | None, config: str | None
) -> None:
    """Set user NAME's password."""
    op = SetPassword(_name(name, "user"), make_verifier(_password(password_stdin)))
    _change(cluster_dir, config, op, f"Set the password of {name}.")


@user.command("drop")
@click.argument("name")
@cluster_options
def user_drop(name: str, cluster_dir: str | None, config: str | None) -> None:
    """Remove user NAME (requests on its open connections are refused from then on)."""
    _change(cluster_dir, config, DropUser(_name(name, "user")), f"Dropped user {name}.")


@user.command("grant")
@click.argument("name")
@click.argument("roles", nargs=-1, required=True)
@cluster_options
def user_grant(
    name: str, roles: tuple[str, ...], cluster_dir: str | None, config: str | None
) -> None:
    """Give user NAME the ROLES."""
    op = ChangeUserRoles(_name(name, "user"), add=roles)
    _change(cluster_dir, config, op, f"{name} now has {', '.join(roles)}.")


@user.command("revoke")
@click.argument("name")
@click.argument("roles", nargs=-1, required=True)
@cluster_options
def user_revoke(
    name: str, roles: tuple[str, ...], cluster_dir: str | None, config: str | None
) -> None:
    """Take the ROLES from user NAME."""
    op = ChangeUserRoles(_name(name, "user"), remove=roles)
    _change(cluster_dir, config, op, f"{name} no longer has {', '.join(roles)}.")


@user.command("list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@cluster_options
def user_list(as_json: bool, cluster_dir: str | None, config: str | None) -> None:
    """The users and their roles (needs cluster admin)."""
    catalog = _catalog(cluster_dir, config)
    if as_json:
        users = {name: list(u.roles) for name, u in catalog.users.items()}
        click.echo(json.dumps({"version": catalog.version, "users": users}, indent=2))
        return
    table = RichTable("user", "roles", "grants")
    for name, found in catalog.users.items():
        grants = "; ".join(str(g) for g in catalog.grants_of(name)) or "-"
        table.add_row(name, ", ".join(found.roles) or "-", grants)
    out.print(table)


# --- roles -------------------------------------------------------------------------------


@click.group()
def role() -> None:
    """Define roles: named lists of grants."""


@role.command("set")
@click.argument("name")
@click.option(
    "--grant",
    "grants",
    multiple=True,
    required=True,
    help="PRIVILEGE[:KEYSPACE[.TABLE]], e.g. read, write:shop, read:shop.orders (repeat).",
)
@cluster_options
def role_set(
    name: str, grants: tuple[str, ...], cluster_dir: str | None, config: str | None
) -> None:
    """Create role NAME, or replace its grants."""
    try:
        parsed = tuple(parse_grant(g) for g in grants)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--grant") from None
    op = PutRole(Role(_name(name, "role"), parsed))
    _change(cluster_dir, config, op, f"Role {name}: {'; '.join(map(str, parsed))}.")


@role.command("drop")
@click.argument("name")
@cluster_options
def role_drop(name: str, cluster_dir: str | None, config: str | None) -> None:
    """Remove role NAME (no user may hold it)."""
    _change(cluster_dir, config, DropRole(_name(name, "role")), f"Dropped role {name}.")


@role.command("list")
@cluster_options
def role_list(cluster_dir: str | None, config: str | None) -> None:
    """The roles, built-in ones first, with their grants."""
    catalog = _catalog(cluster_dir, config)
    table = RichTable("role", "grants")
    for name, found in {**BUILTIN_ROLES, **catalog.roles}.items():
        suffix = " (built in)" if name in BUILTIN_ROLES else ""
        table.add_row(name + suffix, "; ".join(str(g) for g in found.grants) or "-")
    out.print(table)
