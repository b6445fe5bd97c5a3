"""Calling a replicated service: find its leader, follow hints, retry, give up on time.

:class:`LeaderRouter` sends a call to the leader it last heard of, follows a
``not_leader`` hint at once, moves to the next server when one fails or asks for a retry,
pauses briefly only when a whole round found no leader (an election is running), and
raises :class:`~shardwise.errors.ClientTimeoutError` at the call's total deadline.
Services use it to reach other replica groups and clients to reach every service.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any, Final, TypeVar

from shardwise.errors import ClientTimeoutError, NetError
from shardwise.model.replies import ServiceReply
from shardwise.net.endpoint import Endpoint
from shardwise.net.rpc import RpcMethod

ATTEMPT_TIMEOUT_S: Final = 2.0
"""One attempt at one server; past it the call tries the next one."""

RETRY_PAUSE_S: Final = 0.02
"""Pause after a full round of servers failed, so a leaderless service is not hammered."""

R = TypeVar("R", bound=ServiceReply)


class LeaderRouter:
    def __init__(self, transport: Endpoint, servers: Iterable[str]) -> None:
        self.transport = transport
        self.servers = sorted(servers)
        self.leader: str | None = None

    def _order(self) -> list[str]:
        ids = list(self.servers)
        if self.leader in ids:
            ids.remove(self.leader)
            ids.insert(0, self.leader)
        return ids

    async def call(self, method: RpcMethod[Any, R], request: object, deadline_s: float) -> R:
        loop = asyncio.get_running_loop()  # loop time: virtual in simulations
        deadline = loop.time() + deadline_s
        while True:
            for node in self._order():
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise ClientTimeoutError(
                        f"{method.name} did not complete within {deadline_s} s"
                    )
                try:
                    reply = await self.transport.call(
                        node, method, request, timeout_s=min(ATTEMPT_TIMEOUT_S, remaining)
                    )
                except NetError:
                    continue  # down, slow or unreachable: the next server
                if reply.status == "ok":
                    # A follower may serve some calls (a read through ReadIndex); its
                    # hint names the leader to try first next time.
                    hint = reply.leader
                    self.leader = hint if hint in self.servers else node
                    return reply
                hint = reply.leader
                if reply.status == "not_leader" and hint in self.servers and hint != self.leader:
                    self.leader = hint
                    break  # a new hint: the next round starts at once, at that leader
            else:
                await asyncio.sleep(RETRY_PAUSE_S)
