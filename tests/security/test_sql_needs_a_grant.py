"""A logged-in user with no grant may run no SQL on a shard: not a table-less read, and
nothing into a Raft log (found by a hostile review; each test failed before the fix)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from shardwise.errors import NetError
from shardwise.model.access import AccessCatalog, CreateUser, User
from shardwise.model.config import Column, ShardId, Table
from shardwise.model.scram import make_verifier
from shardwise.model.sql import SqlStatement
from shardwise.net.auth import Login
from shardwise.net.rpc import CallContext
from shardwise.net.transport import Transport
from shardwise.net.wire import PeerRole
from shardwise.shardserver.access import AccessGuard
from shardwise.shardserver.protocol import (
    SQL_SCHEMA,
    SQL_WRITE,
    SqlSchemaRequest,
    SqlWriteRequest,
)
from shardwise.testing.cluster import ProcessCluster

TABLES = {
    "orders": Table("orders", "shop", "id", (Column("id", "INTEGER"), Column("total", "REAL"))),
}


def test_a_user_without_any_grant_cannot_run_sql_on_a_shard() -> None:
    """A statement that touches no table is allowed for anyone logged in: sql_denied loops
    over the tables touched, and there are none. So a user with no role at all gets SQL
    write batches (``SELECT ...`` / ``VALUES ...``) into every group's Raft log, and runs
    arbitrary CPU-heavy table-less reads on any shard (test_big_value_work shows one that holds
    the event loop for seconds)."""
    guard = AccessGuard()
    nobody = User("nobody", make_verifier("pw", salt=b"s" * 16), ())
    guard.update(AccessCatalog(1, {"nobody": nobody}, {}))
    context = CallContext("c", PeerRole.CLIENT, 0.0, "nobody")
    for sql in ("SELECT 1", "VALUES (1)", "SELECT length(hex(zeroblob(8000000)))"):
        why = guard.sql_denied(context, "shop", TABLES, 1, [(sql, {})])
        assert why != "", f"a user with no grant may run {sql!r} on keyspace 'shop'"


async def test_a_user_without_any_grant_gets_nothing_into_a_raft_log(tmp_path: Path) -> None:
    """End to end on real processes: user 'nobody' (no role) logs in with its password
    and sends a raw shard.sql_write of a table-less statement; the leader proposes it and
    every replica applies it."""
    async with ProcessCluster(tmp_path, groups=1) as cluster:
        await cluster.join(1)
        await cluster.settled()
        await cluster.admin.change(CreateUser(User("nobody", make_verifier("pw"), ())))
        transport = Transport(
            "nobody-client", Login("nobody", "pw"), role=PeerRole.CLIENT, listen=None
        )
        for server in cluster.servers[1]:
            host, _, port = server.rpartition(":")
            transport.set_peer(server, (host, int(port)))
        await transport.start()
        try:
            reply = None
            for _ in range(300):  # the servers learn the user by watching the controller
                for server in cluster.servers[1]:
                    try:
                        schema = await transport.call(
                            server, SQL_SCHEMA, SqlSchemaRequest("default"), timeout_s=3.0
                        )
                    except NetError:
                        continue
                    if schema.status != "ok":
                        continue
                    request = SqlWriteRequest(
                        ShardId("default", 0), "nobody-1", 1,
                        (SqlStatement("SELECT 1"),), schema.config_num, schema.schema,
                    )  # fmt: skip
                    reply = await transport.call(server, SQL_WRITE, request, timeout_s=5.0)
                    if reply.status == "ok":
                        break
                if reply is not None and reply.status == "ok":
                    break
                await asyncio.sleep(0.1)
            assert reply is not None and reply.status == "ok", reply
            if not reply.denied:
                pytest.fail(f"user 'nobody' (no grant) had a SQL write applied: {reply}")
        finally:
            await transport.close()
