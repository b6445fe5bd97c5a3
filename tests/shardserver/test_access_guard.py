"""The shard server's access checks: which tables SQLite says a statement touches, and
whether the logged-in user's grants cover them."""

from __future__ import annotations

import pytest

from shardwise.model.access import AccessCatalog, Privilege, Role, User, parse_grant
from shardwise.model.config import Column, Table
from shardwise.model.scram import make_verifier
from shardwise.net.rpc import CallContext
from shardwise.net.wire import PeerRole
from shardwise.shardserver.access import AccessGuard
from shardwise.sql.shipped import ShippedTable

TABLES = {
    "orders": Table("orders", "shop", "id", (Column("id", "INTEGER"), Column("total", "REAL"))),
    "users": Table("users", "shop", "id", (Column("id", "INTEGER"), Column("name", "TEXT"))),
    "other": Table("other", "elsewhere", "id", (Column("id", "INTEGER"),)),
}
VERIFIER = make_verifier("pw", salt=b"s" * 16)


def guard_with(*grants: str) -> AccessGuard:
    guard = AccessGuard()
    role = Role("r", tuple(parse_grant(g) for g in grants))
    guard.update(AccessCatalog(1, {"alice": User("alice", VERIFIER, ("r",))}, {"r": role}))
    return guard


def as_user(user: str | None) -> CallContext:
    return CallContext("client-1", PeerRole.CLIENT, 0.0, user)


def denied(guard: AccessGuard, user: str | None, *sql: str) -> str:
    return guard.sql_denied(as_user(user), "shop", TABLES, 1, [(s, {}) for s in sql])


def test_a_table_grant_covers_that_table_only() -> None:
    guard = guard_with("write:shop.orders")
    assert denied(guard, "alice", "UPDATE sql_orders SET total = total + 1 WHERE id = 3") == ""
    assert denied(guard, "alice", "SELECT * FROM sql_orders") == ""
    assert "may not read table 'users'" in denied(guard, "alice", "SELECT * FROM sql_users")
    sneaky = "UPDATE sql_orders SET total = (SELECT count(*) FROM sql_users)"
    assert "'users'" in denied(guard, "alice", sneaky), "a subquery's table counts too"
    assert "'users'" in denied(guard, "alice", "INSERT INTO sql_users VALUES (1, 'x')")


def test_the_same_statement_is_checked_every_time() -> None:
    """SQLite authorizes a statement as it compiles it; a cached statement would not be
    compiled (or checked) again."""
    guard = guard_with("read:shop.orders")
    for _ in range(3):
        assert "'users'" in denied(guard, "alice", "DELETE FROM sql_users")


def test_read_does_not_give_write() -> None:
    guard = guard_with("read:shop")
    assert denied(guard, "alice", "SELECT o.id FROM sql_orders o JOIN sql_users u ON 1") == ""
    assert "may not write table 'orders'" in denied(guard, "alice", "DELETE FROM sql_orders")


def test_internal_tables_and_uncompilable_statements_are_refused() -> None:
    guard = guard_with("write:shop")
    assert "kv" in denied(guard, "alice", "SELECT * FROM kv")
    assert "cannot be checked" in denied(guard, "alice", "SELEKT 1")


def test_a_secret_holder_is_not_checked_and_a_stranger_gets_nothing() -> None:
    guard = guard_with()
    assert denied(guard, None, "DELETE FROM sql_orders") == ""
    assert denied(guard, "mallory", "SELECT 1 FROM sql_orders") != ""
    assert guard.kv_denied(as_user("mallory"), Privilege.READ, "shop") != ""
    assert guard.kv_denied(as_user(None), Privilege.WRITE, "shop") == ""


@pytest.mark.parametrize(("grant", "allowed"), [("read:shop", True), ("read:elsewhere", False)])
def test_kv_needs_a_keyspace_grant(grant: str, allowed: bool) -> None:
    guard = guard_with(grant)
    assert (guard.kv_denied(as_user("alice"), Privilege.READ, "shop") == "") is allowed
    assert guard.kv_denied(as_user("alice"), Privilege.WRITE, "shop") != ""


def test_an_older_catalog_never_replaces_a_newer_one() -> None:
    guard = guard_with("read")
    guard.update(AccessCatalog(0))
    assert guard.catalog.version == 1 and guard.find_user("alice") == VERIFIER
    assert guard.find_user("nobody") is None


def test_a_broadcast_fragment_reads_its_shipped_rows_with_the_grants_of_its_tables() -> None:
    """A broadcast join's fragment reads the rows sent along with it (no grant names
    them: the caller sent them) and the shard's tables (each needs its grant)."""
    guard = guard_with("read:shop.orders")
    shipped = [ShippedTable("_sw_t1", (("id", "INTEGER"), ("name", "TEXT")), ((1, "a"),))]
    join = "SELECT o.id, u.name FROM sql_orders o JOIN _sw_t1 u ON u.id = o.id"
    cross = "SELECT o.id FROM sql_orders o CROSS JOIN _sw_t1"  # (no column of _sw_t1)
    for sql in (join, cross):
        assert (
            guard.sql_denied(as_user("alice"), "shop", TABLES, 1, [(sql, {})], shipped=shipped)
            == ""
        )
    sneaky = "SELECT u.name FROM sql_users u JOIN _sw_t1 s ON s.id = u.id"
    assert "'users'" in guard.sql_denied(
        as_user("alice"), "shop", TABLES, 1, [(sneaky, {})], shipped=shipped
    )
    # Without the shipped table the statement does not compile: refused, not run.
    assert "no such table" in denied(guard, "alice", join)
    # Nothing of the shipped tables stays in the scratch schema for the next check.
    assert "no such table" in guard.sql_denied(as_user("alice"), "shop", TABLES, 1, [(join, {})])
