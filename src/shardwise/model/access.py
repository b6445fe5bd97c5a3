"""Users, roles and what they may do: the access catalog the controller replicates.

A **user** has a password verifier (``scram.py``) and roles. A **role** is a list of
grants; a **grant** gives one privilege on a scope:

* ``read``: KV gets and scans, SQL SELECT;
* ``write``: ``read``, and KV puts, deletes and compare-and-sets, SQL INSERT / UPDATE /
  DELETE;
* ``admin``: ``write``, and DDL; on the whole cluster (keyspace ``*``), also joins,
  leaves, moves, new keyspaces and users.

A scope is a keyspace (``*``: every keyspace) and optionally one table of it (``*``:
every table and the keyspace's KV keys). So ``write`` on ``shop.orders`` lets a user
change that table and nothing else; ``read`` on ``shop`` lets it read every table of
keyspace ``shop`` and its keys.

Three roles are built in and cannot be changed: ``admin`` (admin on everything),
``readwrite`` (write on everything) and ``readonly`` (read on everything). Whoever holds
the cluster's peer secret (the servers, and an operator on a server's machine) is not a
user at all and may do everything: see docs/security.md.

The catalog is plain data with a version that every change bumps; the controller keeps
it, servers watch it and check each client request against the copy they hold.
"""

from __future__ import annotations

import enum
import re
from typing import Annotated, Final, Literal, TypeAlias

import msgspec

from shardwise.model.bounds import Int64
from shardwise.model.scram import KEY_BYTES, MIN_ITERATIONS, ScramVerifier

MAX_USERS: Final = 10_000
MAX_ROLES: Final = 1_000
MAX_GRANTS_PER_ROLE: Final = 256
MAX_ROLES_PER_USER: Final = 64
MAX_ACCESS_NAME: Final = 63
"""Longest user, role, keyspace or table name in a grant (PostgreSQL's identifier
length)."""

ANY: Final = "*"
"""A grant's keyspace or table that matches every one."""

NAME_PATTERN: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_.@-]*")
"""User and role names: what a shell and a connection string take without quoting."""


class Privilege(enum.IntEnum):
    """Ordered: each includes the ones below it."""

    READ = 1
    WRITE = 2
    ADMIN = 3


PrivilegeName: TypeAlias = Literal["read", "write", "admin"]

Name = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_ACCESS_NAME)]


class Grant(msgspec.Struct, frozen=True, array_like=True):
    privilege: PrivilegeName
    keyspace: Name = ANY
    table: Name = ANY

    def __str__(self) -> str:
        scope = self.keyspace if self.table == ANY else f"{self.keyspace}.{self.table}"
        return f"{self.privilege} on {scope}"

    def gives(self, need: Privilege, keyspace: str, table: str | None) -> bool:
        if Privilege[self.privilege.upper()] < need:
            return False
        if self.keyspace not in (ANY, keyspace):
            return False
        return self.table == ANY or (table is not None and self.table == table)


class Role(msgspec.Struct, frozen=True, array_like=True):
    name: Name
    grants: Annotated[tuple[Grant, ...], msgspec.Meta(max_length=MAX_GRANTS_PER_ROLE)] = ()


class User(msgspec.Struct, frozen=True, array_like=True):
    name: Name
    verifier: ScramVerifier
    roles: Annotated[tuple[Name, ...], msgspec.Meta(max_length=MAX_ROLES_PER_USER)] = ()


REDACTED: Final = ScramVerifier(b"-", MIN_ITERATIONS, bytes(KEY_BYTES), bytes(KEY_BYTES))
"""What a listed user's verifier reads as: a verifier is not a password, but it allows an
offline guessing attack, so only servers get the real ones."""

BUILTIN_ROLES: Final[dict[str, Role]] = {
    "admin": Role("admin", (Grant("admin"),)),
    "readwrite": Role("readwrite", (Grant("write"),)),
    "readonly": Role("readonly", (Grant("read"),)),
}


class AccessCatalog(msgspec.Struct, frozen=True, array_like=True):
    version: Int64 = 0
    users: dict[str, User] = {}
    roles: dict[str, Role] = {}
    """Roles defined by the operator (the built-in ones are not stored)."""

    def user(self, name: str) -> User | None:
        return self.users.get(name)

    def role(self, name: str) -> Role | None:
        return BUILTIN_ROLES.get(name) or self.roles.get(name)

    def grants_of(self, user: str) -> list[Grant]:
        found = self.users.get(user)
        if found is None:
            return []
        grants: list[Grant] = []
        for role_name in found.roles:
            role = self.role(role_name)
            if role is not None:
                grants.extend(role.grants)
        return grants

    def allows(self, user: str, need: Privilege, keyspace: str, table: str | None = None) -> bool:
        """Whether ``user`` may do what needs ``need`` on ``keyspace`` (and ``table``;
        ``None``: the keyspace's KV keys, or the whole keyspace)."""
        return any(g.gives(need, keyspace, table) for g in self.grants_of(user))

    def redacted(self) -> AccessCatalog:
        """The catalog with every password verifier blanked: what an admin may list."""
        return AccessCatalog(
            self.version,
            {n: msgspec.structs.replace(u, verifier=REDACTED) for n, u in self.users.items()},
            self.roles,
        )

    def allows_cluster_admin(self, user: str) -> bool:
        return any(
            g.privilege == "admin" and g.keyspace == ANY and g.table == ANY
            for g in self.grants_of(user)
        )


def check_name(name: str, what: str) -> str:
    """``name`` if it is a valid user or role name, else ``ValueError``."""
    if len(name) > MAX_ACCESS_NAME or not NAME_PATTERN.fullmatch(name):
        raise ValueError(
            f"a {what} name is 1-{MAX_ACCESS_NAME} characters: a letter or _, then letters, "
            f"digits, or _ . @ -; not {name!r}"
        )
    return name


def parse_grant(text: str) -> Grant:
    """``PRIVILEGE[:KEYSPACE[.TABLE]]``, e.g. ``read``, ``write:shop``,
    ``read:shop.orders``; ``ValueError`` otherwise."""
    privilege, _, scope = text.partition(":")
    privilege = privilege.strip().lower()
    if privilege not in ("read", "write", "admin"):
        raise ValueError(f"a privilege is read, write or admin, not {privilege!r}")
    keyspace, _, table = (scope.strip() or ANY).partition(".")
    for part in (keyspace, table or ANY):
        if part != ANY and (len(part) > MAX_ACCESS_NAME or not NAME_PATTERN.fullmatch(part)):
            raise ValueError(f"not a keyspace or table name: {part!r}")
    if keyspace == ANY and table not in ("", ANY):
        raise ValueError("a table grant names its keyspace: write:KEYSPACE.TABLE")
    if privilege == "read":
        return Grant("read", keyspace, table or ANY)
    if privilege == "write":
        return Grant("write", keyspace, table or ANY)
    return Grant("admin", keyspace, table or ANY)


# --- controller commands that change the catalog ----------------------------------------


class CreateUser(msgspec.Struct, frozen=True, tag="create_user"):
    """Refused if the user exists."""

    user: User


class DropUser(msgspec.Struct, frozen=True, tag="drop_user"):
    name: Name


class SetPassword(msgspec.Struct, frozen=True, tag="set_password"):
    """A user's new password, as its verifier (the password never leaves the client)."""

    name: Name
    verifier: ScramVerifier


class ChangeUserRoles(msgspec.Struct, frozen=True, tag="change_user_roles"):
    """Give a user roles and take others away, in one step (no lost update between two
    operators)."""

    name: Name
    add: Annotated[tuple[Name, ...], msgspec.Meta(max_length=MAX_ROLES_PER_USER)] = ()
    remove: Annotated[tuple[Name, ...], msgspec.Meta(max_length=MAX_ROLES_PER_USER)] = ()


class PutRole(msgspec.Struct, frozen=True, tag="put_role"):
    """Create or replace a role (not a built-in one)."""

    role: Role


class DropRole(msgspec.Struct, frozen=True, tag="drop_role"):
    name: Name


AccessOp: TypeAlias = CreateUser | DropUser | SetPassword | ChangeUserRoles | PutRole | DropRole
