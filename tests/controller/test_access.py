"""Users and roles in the controller's state machine, and what a catalog allows."""

from __future__ import annotations

import pytest

from shardwise.controller.statemachine import ControllerStateMachine, decode_result, encode_command
from shardwise.model.access import (
    AccessCatalog,
    ChangeUserRoles,
    CreateUser,
    DropRole,
    DropUser,
    Grant,
    Privilege,
    PutRole,
    Role,
    SetPassword,
    User,
    parse_grant,
)
from shardwise.model.scram import make_verifier

VERIFIER = make_verifier("pw", salt=b"x" * 16)


def apply(machine: ControllerStateMachine, op: object, index: list[int]) -> str:
    index[0] += 1
    result = decode_result(machine.apply(index[0], encode_command(op)))  # type: ignore[arg-type]
    return result.error


def test_users_and_roles_change_through_the_log_and_survive_a_snapshot() -> None:
    machine = ControllerStateMachine()
    n = [0]
    config_num = machine.latest().num
    assert apply(machine, PutRole(Role("orders_rw", (Grant("write", "shop", "orders"),))), n) == ""
    assert apply(machine, CreateUser(User("alice", VERIFIER)), n) == ""
    assert apply(machine, ChangeUserRoles("alice", add=("orders_rw", "orders_rw")), n) == ""
    assert apply(machine, CreateUser(User("alice", VERIFIER)), n) == "access"  # exists
    assert apply(machine, CreateUser(User("bob", VERIFIER, ("nope",))), n) == "access"
    assert apply(machine, ChangeUserRoles("alice", add=("nope",)), n) == "access"
    assert apply(machine, SetPassword("zed", VERIFIER), n) == "access"
    assert apply(machine, PutRole(Role("admin")), n) == "access"  # built in
    assert apply(machine, DropRole("orders_rw"), n) == "access"  # alice holds it
    assert apply(machine, DropUser("zed"), n) == "access"
    assert machine.latest().num == config_num, "access changes make no configuration"
    catalog = machine.access()
    assert catalog.version == 3
    assert catalog.users["alice"].roles == ("orders_rw",)
    assert catalog.allows("alice", Privilege.WRITE, "shop", "orders")
    assert not catalog.allows("alice", Privilege.WRITE, "shop", "users")
    assert not catalog.allows("alice", Privilege.READ, "shop")  # the keyspace's KV keys
    assert not catalog.allows_cluster_admin("alice")

    copy = ControllerStateMachine()
    copy.restore(machine.snapshot(), n[0])
    assert copy.access() == catalog
    new_verifier = make_verifier("new", salt=b"y" * 16)
    assert apply(copy, SetPassword("alice", new_verifier), n) == ""
    assert copy.access().users["alice"].verifier == new_verifier
    assert apply(copy, ChangeUserRoles("alice", remove=("orders_rw",)), n) == ""
    assert copy.access().users["alice"].roles == ()
    assert apply(copy, DropUser("alice"), n) == ""
    assert apply(copy, DropRole("orders_rw"), n) == ""
    assert copy.access().users == {} and copy.access().roles == {}


def test_a_retried_access_command_applies_once() -> None:
    machine = ControllerStateMachine()
    command = encode_command(CreateUser(User("alice", VERIFIER)), client_id="c", seq=1)
    first = decode_result(machine.apply(1, command))
    again = decode_result(machine.apply(2, command))
    assert first.error == "" and again == first
    assert machine.access().version == 1


@pytest.mark.parametrize(
    ("grant", "need", "keyspace", "table", "allowed"),
    [
        ("read", Privilege.READ, "shop", None, True),
        ("read", Privilege.WRITE, "shop", None, False),
        ("write", Privilege.READ, "shop", "orders", True),
        ("write:shop", Privilege.WRITE, "shop", "orders", True),
        ("write:shop", Privilege.WRITE, "default", None, False),
        ("read:shop.orders", Privilege.READ, "shop", "orders", True),
        ("read:shop.orders", Privilege.READ, "shop", None, False),
        ("admin:shop", Privilege.ADMIN, "shop", "t", True),
    ],
)
def test_what_a_grant_gives(
    grant: str, need: Privilege, keyspace: str, table: str | None, allowed: bool
) -> None:
    catalog = AccessCatalog(
        users={"u": User("u", VERIFIER, ("r",))}, roles={"r": Role("r", (parse_grant(grant),))}
    )
    assert catalog.allows("u", need, keyspace, table) is allowed
    assert not catalog.allows("nobody", Privilege.READ, keyspace, table)


@pytest.mark.parametrize("text", ["delete", "read:", "read:*.t", "read:a/b", "write:x.y.z!"])
def test_bad_grants_are_refused(text: str) -> None:
    if text == "read:":
        assert parse_grant(text) == Grant("read")
        return
    with pytest.raises(ValueError):
        parse_grant(text)


def test_the_builtin_admin_is_a_cluster_admin() -> None:
    catalog = AccessCatalog(users={"root": User("root", VERIFIER, ("admin",))})
    assert catalog.allows_cluster_admin("root")
    assert catalog.allows("root", Privilege.WRITE, "any", "table")
