"""A client of the shard controller: changes with exactly-once retries, queries, watches.

A refused change raises the matching :class:`~shardwise.errors.ControllerError` subclass
(unknown group, unknown shard, ...); the configuration is then unchanged.
"""

from __future__ import annotations

import itertools
import secrets
from collections.abc import Mapping
from typing import Final

from shardwise import errors
from shardwise.controller.protocol import (
    ACCESS,
    CHANGE,
    QUERY,
    AccessRequest,
    ChangeRequest,
    QueryRequest,
)
from shardwise.model.access import AccessCatalog
from shardwise.model.config import (
    ChangeResult,
    Configuration,
    CreateKeyspace,
    Join,
    Keyspace,
    Leave,
    Move,
    Op,
    Rebalance,
    ShardId,
    Strategy,
)
from shardwise.net.auth import Credentials
from shardwise.net.endpoint import Endpoint
from shardwise.net.leader import ATTEMPT_TIMEOUT_S, LeaderRouter
from shardwise.net.links import Address
from shardwise.net.transport import Transport
from shardwise.net.wire import PeerRole

DEFAULT_DEADLINE_S: Final = 10.0


def raise_for(code: str, message: str) -> None:
    """Raise the controller's refusal ``code`` (empty: none) as its error class."""
    if code:
        raise (errors.error_for(code, errors.ControllerError) or errors.ControllerError)(message)


class ControllerClient:
    """Calls to the shard controller's replicas, through :class:`LeaderRouter`."""

    def __init__(
        self,
        servers: Mapping[str, Address],
        secret: Credentials,
        client_id: str | None = None,
        *,
        transport: Endpoint | None = None,
    ) -> None:
        """With ``transport`` (a server's own endpoint), calls go through it and the
        caller starts and closes it; otherwise the client has a transport of its own."""
        self.client_id = client_id or f"ctl-client-{secrets.token_hex(6)}"
        self._owns_transport = transport is None
        if transport is None:
            transport = Transport(self.client_id, secret, role=PeerRole.CLIENT)
        for server, address in servers.items():
            transport.set_peer(server, address)
        self._transport: Endpoint = transport
        self._router = LeaderRouter(self._transport, servers)
        self._seq = itertools.count(1)

    async def __aenter__(self) -> ControllerClient:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def start(self) -> None:
        if self._owns_transport:
            await self._transport.start()

    async def close(self) -> None:
        if self._owns_transport:
            await self._transport.close()

    async def change(self, op: Op, deadline_s: float = DEFAULT_DEADLINE_S) -> ChangeResult:
        request = ChangeRequest(self.client_id, next(self._seq), op)
        reply = await self._router.call(CHANGE, request, deadline_s)
        assert reply.result is not None
        raise_for(reply.result.error, reply.result.message)
        return reply.result

    async def join(self, groups: Mapping[int, list[str] | tuple[str, ...]]) -> ChangeResult:
        return await self.change(Join({g: tuple(s) for g, s in groups.items()}))

    async def leave(self, gids: list[int]) -> ChangeResult:
        return await self.change(Leave(tuple(gids)))

    async def move(self, shard: ShardId, gid: int) -> ChangeResult:
        return await self.change(Move(shard, gid))

    async def rebalance(self, strategy: Strategy, keyspace: str = "") -> ChangeResult:
        return await self.change(Rebalance(strategy, keyspace))

    async def create_keyspace(self, keyspace: Keyspace) -> ChangeResult:
        return await self.change(CreateKeyspace(keyspace))

    async def query(self, num: int = -1, deadline_s: float = DEFAULT_DEADLINE_S) -> Configuration:
        reply = await self._router.call(QUERY, QueryRequest(num=num), deadline_s)
        raise_for(reply.error, reply.message)
        assert reply.config is not None
        return reply.config

    async def access(self, newer_than: int = -1, wait_s: float = 0.0) -> AccessCatalog:
        """The users and roles (with ``wait_s``: once newer than ``newer_than``, or the
        latest after ``wait_s``). Password verifiers only reach nodes; a cluster admin
        gets them blanked, and anyone else ``PermissionDeniedError``."""
        reply = await self._router.call(
            ACCESS,
            AccessRequest(newer_than=newer_than, wait_s=wait_s),
            wait_s + DEFAULT_DEADLINE_S,
            attempt_timeout_s=wait_s + ATTEMPT_TIMEOUT_S,
        )
        raise_for(reply.error, reply.message)
        assert reply.catalog is not None
        return reply.catalog

    async def watch(self, newer_than: int, wait_s: float = 10.0) -> Configuration:
        """The latest configuration once one numbered above ``newer_than`` exists, or the
        latest after ``wait_s`` if none came."""
        request = QueryRequest(newer_than=newer_than, wait_s=wait_s)
        # The server holds the call up to wait_s on purpose: an attempt that waits no
        # longer than that would time out on every idle watch and try the next server.
        reply = await self._router.call(
            QUERY,
            request,
            wait_s + DEFAULT_DEADLINE_S,
            attempt_timeout_s=wait_s + ATTEMPT_TIMEOUT_S,
        )
        raise_for(reply.error, reply.message)
        assert reply.config is not None
        return reply.config
