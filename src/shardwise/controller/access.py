"""Changing the access catalog (users and roles) through the controller's log.

Pure and deterministic like the rest of the controller's state machine: each command
makes the next catalog (version + 1, dicts in sorted order) or raises an
``AccessChangeError`` that every replica raises the same way.
"""

from __future__ import annotations

import msgspec

from shardwise.errors import AccessChangeError
from shardwise.model.access import (
    BUILTIN_ROLES,
    MAX_ROLES,
    MAX_ROLES_PER_USER,
    MAX_USERS,
    AccessCatalog,
    AccessOp,
    ChangeUserRoles,
    CreateUser,
    DropRole,
    DropUser,
    Privilege,
    PutRole,
    Role,
    SetPassword,
    User,
    check_name,
)
from shardwise.model.config import (
    AddColumn,
    Configuration,
    CreateIndex,
    CreateTable,
    DropIndex,
    DropTable,
    Op,
    SetIndexState,
    SetStats,
)


def change_access(catalog: AccessCatalog, op: AccessOp) -> AccessCatalog:
    """The catalog after ``op``."""
    users = dict(catalog.users)
    roles = dict(catalog.roles)
    if isinstance(op, CreateUser):
        user = op.user
        _valid(user.name, "user")
        if user.name in users:
            raise AccessChangeError(f"user {user.name!r} exists")
        if len(users) >= MAX_USERS:
            raise AccessChangeError(f"at most {MAX_USERS} users")
        users[user.name] = msgspec.structs.replace(user, roles=_roles(user.roles, (), roles))
    elif isinstance(op, DropUser):
        if users.pop(op.name, None) is None:
            raise AccessChangeError(f"there is no user {op.name!r}")
    elif isinstance(op, SetPassword):
        users[op.name] = msgspec.structs.replace(_user(users, op.name), verifier=op.verifier)
    elif isinstance(op, ChangeUserRoles):
        user = _user(users, op.name)
        kept = tuple(r for r in user.roles if r not in op.remove)
        users[op.name] = msgspec.structs.replace(user, roles=_roles(kept, op.add, roles))
    elif isinstance(op, PutRole):
        role = op.role
        _valid(role.name, "role")
        if role.name in BUILTIN_ROLES:
            raise AccessChangeError(f"role {role.name!r} is built in and cannot be changed")
        if role.name not in roles and len(roles) >= MAX_ROLES:
            raise AccessChangeError(f"at most {MAX_ROLES} roles")
        roles[role.name] = role
    else:
        _drop_role(op, users, roles)
    return AccessCatalog(
        version=catalog.version + 1,
        users=dict(sorted(users.items())),
        roles=dict(sorted(roles.items())),
    )


def _user(users: dict[str, User], name: str) -> User:
    user = users.get(name)
    if user is None:
        raise AccessChangeError(f"there is no user {name!r}")
    return user


def _roles(have: tuple[str, ...], add: tuple[str, ...], roles: dict[str, Role]) -> tuple[str, ...]:
    """``have`` and then ``add``, each once, in order; every one must exist."""
    merged = tuple(dict.fromkeys((*have, *add)))
    unknown = [r for r in merged if r not in BUILTIN_ROLES and r not in roles]
    if unknown:
        raise AccessChangeError(f"there is no role {unknown[0]!r}")
    if len(merged) > MAX_ROLES_PER_USER:
        raise AccessChangeError(f"a user has at most {MAX_ROLES_PER_USER} roles")
    return merged


def _drop_role(op: DropRole, users: dict[str, User], roles: dict[str, Role]) -> None:
    if op.name in BUILTIN_ROLES:
        raise AccessChangeError(f"role {op.name!r} is built in and cannot be dropped")
    if roles.pop(op.name, None) is None:
        raise AccessChangeError(f"there is no role {op.name!r}")
    holders = sorted(name for name, user in users.items() if op.name in user.roles)
    if holders:
        raise AccessChangeError(
            f"role {op.name!r} is held by {', '.join(holders[:5])}; take it from them first"
        )


def _valid(name: str, what: str) -> None:
    try:
        check_name(name, what)
    except ValueError as exc:
        raise AccessChangeError(str(exc)) from None


ACCESS_OPS = (CreateUser, DropUser, SetPassword, ChangeUserRoles, PutRole, DropRole)
"""The commands :func:`change_access` applies (the rest make configurations)."""


def change_denied(catalog: AccessCatalog, user: str | None, op: Op, config: Configuration) -> str:
    """Why ``user`` may not make the change ``op`` (empty: it may). ``None`` is a holder
    of the cluster secret, who may do anything. DDL needs admin on the table's keyspace;
    everything else (groups, moves, keyspaces, users and roles) needs admin on the whole
    cluster; recording ``ANALYZE``'s counts needs write on the tables' keyspaces."""
    if user is None or catalog.allows_cluster_admin(user):
        return ""
    if isinstance(op, SetStats):
        spaces = sorted({t.keyspace for n, t in config.tables.items() if n in op.rows})
        if all(catalog.allows(user, Privilege.WRITE, k) for k in spaces):
            return ""
        return f"user {user!r} may not ANALYZE: it needs write on keyspaces {spaces}"
    keyspace: str | None = None
    if isinstance(op, CreateTable):
        keyspace = op.table.keyspace
    elif isinstance(op, DropTable | AddColumn | CreateIndex | DropIndex | SetIndexState):
        name = op.name if isinstance(op, DropTable) else op.table
        table = config.tables.get(name)
        keyspace = table.keyspace if table is not None else None
    if keyspace is not None and catalog.allows(user, Privilege.ADMIN, keyspace):
        return ""
    what = f"admin on keyspace {keyspace!r}" if keyspace is not None else "cluster admin"
    return f"user {user!r} may not {type(op).__name__}: it needs {what}"
