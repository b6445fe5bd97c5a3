"""A client of one KV group: finds the leader, retries safely, gives up at a deadline.

Every write carries this client's id and a sequence number that stays the same across
retries, so a write retried after a timeout or a leader change is applied once. Routing
and retries are :class:`~shardwise.net.leader.LeaderRouter`'s.
"""

from __future__ import annotations

import itertools
import secrets
from collections.abc import Mapping
from typing import Final

from shardwise.kvgroup.protocol import (
    READ,
    STATUS,
    WRITE,
    ReadRequest,
    StatusReply,
    StatusRequest,
    WriteRequest,
)
from shardwise.model.kv import Append, Cas, Delete, KVOp, KVResult, Put
from shardwise.net.leader import LeaderRouter
from shardwise.net.links import Address
from shardwise.net.transport import Transport
from shardwise.net.wire import PeerRole

DEFAULT_DEADLINE_S: Final = 10.0


class KVGroupClient:
    def __init__(
        self, servers: Mapping[str, Address], secret: bytes, client_id: str | None = None
    ) -> None:
        self.client_id = client_id or f"client-{secrets.token_hex(6)}"
        self.servers = dict(servers)
        self._transport = Transport(self.client_id, secret, role=PeerRole.CLIENT, peers=servers)
        self._router = LeaderRouter(self._transport, servers)
        self._seq = itertools.count(1)

    async def __aenter__(self) -> KVGroupClient:
        await self._transport.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._transport.close()

    # --- the API -------------------------------------------------------------------------

    async def put(self, key: str, value: str, deadline_s: float = DEFAULT_DEADLINE_S) -> None:
        await self.write(Put(key, value), deadline_s)

    async def append(self, key: str, value: str, deadline_s: float = DEFAULT_DEADLINE_S) -> None:
        await self.write(Append(key, value), deadline_s)

    async def delete(self, key: str, deadline_s: float = DEFAULT_DEADLINE_S) -> None:
        await self.write(Delete(key), deadline_s)

    async def cas(
        self, key: str, expected: str | None, new: str, deadline_s: float = DEFAULT_DEADLINE_S
    ) -> bool:
        return (await self.write(Cas(key, expected, new), deadline_s)).ok

    async def get(self, key: str, deadline_s: float = DEFAULT_DEADLINE_S) -> str | None:
        reply = await self._router.call(READ, ReadRequest(key), deadline_s)
        return reply.value

    async def write(self, op: KVOp, deadline_s: float = DEFAULT_DEADLINE_S) -> KVResult:
        request = WriteRequest(self.client_id, next(self._seq), op)
        reply = await self._router.call(WRITE, request, deadline_s)
        assert reply.result is not None
        return reply.result

    async def status(self, node_id: str, timeout_s: float = 2.0) -> StatusReply:
        return await self._transport.call(node_id, STATUS, StatusRequest(), timeout_s=timeout_s)
