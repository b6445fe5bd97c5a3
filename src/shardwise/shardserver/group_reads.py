"""A shard server's ``shard.sql_group_read``: one read fragment on the shards of a scatter
read that this group serves, behind one ReadIndex round.

A scatter read over 64 shards used to be 64 requests, each with its own round of
heartbeats at its group's leader before its fragment ran; a group serving a third of
them now gets one request, checked at the door once (the fragment, its parameters, its
shipped rows, the caller's grants: the same for every shard of a keyspace), and runs
the fragment on each shard in turn between two applies, exactly as that many lone reads
would at that point. Each shard is answered as a lone read would be (rows, a failure,
``wrong_group``, ``locked``, a schema verdict). Bounds: the shards' rows together fit
one reply frame and their fragments together one read's time
(``sqlshard.MAX_SQL_REPLY_BYTES``, ``sqlshard.MAX_SQL_READ_S``): a shard that would pass
either is answered ``retry`` and the client reads it on its own, with a whole frame and
a whole time of its own.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from shardwise.model.config import ShardId
from shardwise.net.rpc import CallContext
from shardwise.service import REQUEST_TIMEOUT_S, through_host
from shardwise.shardserver.protocol import (
    MAX_GROUP_READ_SHARDS,
    SqlGroupReadReply,
    SqlGroupReadRequest,
    SqlReply,
)
from shardwise.shardserver.sql_checks import check_params
from shardwise.shardserver.sql_serving import bounded_read
from shardwise.shardserver.sqlshard import (
    MAX_SQL_READ_S,
    MAX_SQL_REPLY_BYTES,
    shipped_of,
    shipped_refusal,
)

if TYPE_CHECKING:
    from shardwise.shardserver.server import ShardServer
    from shardwise.shardserver.statemachine import ShardGroupStateMachine


async def serve_group_read(
    server: ShardServer, request: SqlGroupReadRequest, context: CallContext
) -> SqlGroupReadReply:
    r = request
    count = len(r.shards)
    problem = (
        check_params(r.params)
        or shipped_refusal(r.shipped)
        or ("" if 0 < count <= MAX_GROUP_READ_SHARDS else f"{count} shards, not 1 to "
            f"{MAX_GROUP_READ_SHARDS}")
        or ("" if len(set(r.shards)) == count else "a shard named twice")
        or ("" if r.max_rows >= 0 else f"max_rows {r.max_rows} is negative")
    )  # fmt: skip
    if problem:
        return SqlGroupReadReply("ok", error=problem)
    shipped = shipped_of(r.shipped)  # (checked: the access check makes them too)
    first = ShardId(r.keyspace, r.shards[0])  # (grants are by keyspace and table)
    if denied := server.sql_denied(context, first, [(r.sql, r.params)], shipped=shipped):
        return SqlGroupReadReply("ok", error=denied.error, denied=True)

    def run(sm: ShardGroupStateMachine) -> list[SqlReply]:
        deadline = time.monotonic() + MAX_SQL_READ_S
        room = MAX_SQL_REPLY_BYTES
        replies: list[SqlReply] = []
        for index in r.shards:
            shard = ShardId(r.keyspace, index)
            left = deadline - time.monotonic()
            if left <= 0 or room <= 0:
                replies.append(SqlReply("retry"))
                continue
            reply, size = bounded_read(server, sm, shard, r, shipped=shipped, bounds=(room, left))
            room -= size
            replies.append(reply)
        return replies

    read = server.host.read(run, timeout_s=REQUEST_TIMEOUT_S)
    outcome = await through_host(server.host, read)
    if outcome.value is None:
        return SqlGroupReadReply(outcome.status, leader=outcome.leader)
    return SqlGroupReadReply("ok", replies=outcome.value)
