"""Users, passwords and grants on a real cluster: real processes, real TCP.

An operator (holding the cluster secret) makes roles and users; each user then connects
with its password alone and may do what its roles allow, and nothing else: not another
table, not a write with a read grant, not a change of the cluster. A wrong password and
a user who does not exist fail alike; a grant taken away stops the next request.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from shardwise.client import Client
from shardwise.errors import AuthenticationError, PermissionDeniedError, ShardwiseError
from shardwise.model.access import ChangeUserRoles, CreateUser, PutRole, Role, User, parse_grant
from shardwise.model.scram import make_verifier
from shardwise.net.auth import Login
from shardwise.testing.cluster import ProcessCluster, wait_until

pytestmark = pytest.mark.timeout(300)


async def expect_denied(work: Callable[[], Awaitable[object]]) -> None:
    with pytest.raises(PermissionDeniedError):
        await work()


async def test_users_may_do_what_their_roles_allow_and_nothing_more(tmp_path: Path) -> None:
    async with ProcessCluster(tmp_path, groups=1) as cluster:
        await cluster.join(1)
        await cluster.settled()
        admin = cluster.admin
        async with cluster.client(deadline_s=30.0) as root:
            await root.sql(
                "CREATE TABLE orders (id INTEGER, total REAL) WITH (distribution = 'id')"
            )
            await root.sql("CREATE TABLE secrets (id INTEGER, v TEXT) WITH (distribution = 'id')")
            await root.sql("INSERT INTO secrets VALUES (1, 'the plans')")
            await root.put("greeting", "hello")
        await admin.change(PutRole(Role("clerk", (parse_grant("write:default.orders"),))))
        for name, password, roles in (
            ("alice", "alice-pw", ("clerk",)),
            ("bob", "bob-pw", ("readonly",)),
        ):
            await admin.change(CreateUser(User(name, make_verifier(password), roles)))

        def login(user: str, password: str) -> Client:
            return Client(cluster.controllers, Login(user, password), deadline_s=15.0)

        async with login("alice", "alice-pw") as alice:
            # The servers learn of new users by watching the controller: wait for them.
            async def alice_can_write() -> bool:
                try:
                    await alice.sql("INSERT INTO orders VALUES (1, 9.5)")
                except ShardwiseError:
                    return False
                return True

            await wait_until(alice_can_write, 30.0, "alice's grant to reach the servers")
            rows = await alice.sql("SELECT id, total FROM orders")
            assert rows.rows == [(1, 9.5)]
            await expect_denied(lambda: alice.sql("SELECT * FROM secrets"))
            # A broadcast join (orders shipped to the shards of secrets) is checked
            # table by table on the shard, where the shipped rows need no grant.
            join = "SELECT s.v, o.total FROM secrets s JOIN orders o ON o.id = s.id + 0"
            plan = str((await alice.sql(f"EXPLAIN {join}")).rows[0][0])
            assert plan.startswith("Distributed broadcast read")
            await expect_denied(lambda: alice.sql(join))
            await expect_denied(lambda: alice.sql("DELETE FROM secrets"))
            await expect_denied(lambda: alice.get("greeting"))  # no grant on the keys
            await expect_denied(lambda: alice.put("greeting", "pwned"))
            await expect_denied(lambda: alice.sql("DROP TABLE orders"))

        async with login("bob", "bob-pw") as bob:
            assert await bob.get("greeting") == "hello"
            assert (await bob.sql("SELECT v FROM secrets")).rows == [("the plans",)]
            broadcast = "SELECT s.v, o.total FROM secrets s JOIN orders o ON o.id = s.id + 0"
            assert (await bob.sql(broadcast)).rows == [("the plans", 9.5)]
            cross = "SELECT count(*) FROM secrets s CROSS JOIN orders o"  # (no column read)
            assert (await bob.sql(cross)).rows == [(1,)]
            await expect_denied(lambda: bob.put("greeting", "pwned"))
            await expect_denied(lambda: bob.sql("UPDATE secrets SET v = 'gone'"))

        bob_admin = Client(cluster.controllers, Login("bob", "bob-pw"))
        async with bob_admin:
            with pytest.raises(PermissionDeniedError):
                await bob_admin._router.controller.join({9: ["127.0.0.1:1"]})
            with pytest.raises(PermissionDeniedError):
                await bob_admin._router.controller.access()

        await refused_and_revoked(cluster, login)


async def refused_and_revoked(cluster: ProcessCluster, login: Callable[[str, str], Client]) -> None:
    """A wrong password and a made-up user get nothing; a grant taken away stops the
    user's next request."""
    admin = cluster.admin
    for user, password in (("alice", "wrong"), ("mallory", "alice-pw")):
        async with login(user, password) as intruder:
            with pytest.raises(AuthenticationError) as refused:
                await intruder.get("greeting")
            assert "secret" not in str(refused.value)

    # Taking the grant away stops alice's next request, without a reconnect.
    async with login("alice", "alice-pw") as alice:
        await alice.sql("INSERT INTO orders VALUES (2, 1.0)")
        await admin.change(ChangeUserRoles("alice", remove=("clerk",)))

        async def alice_is_refused() -> bool:
            try:
                await alice.sql("INSERT INTO orders VALUES (3, 1.0)")
            except PermissionDeniedError:
                return True
            return False

        await wait_until(alice_is_refused, 30.0, "alice's revocation to reach the servers")
    async with cluster.client() as root:
        assert (await root.sql("SELECT v FROM secrets")).rows == [("the plans",)]
        assert await root.get("greeting") == "hello"
