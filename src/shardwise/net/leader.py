"""Calling a replicated service: find its leader, follow hints, retry, give up on time.

The codebase has one leader-following loop, :func:`follow_leader`: one round over a
replica set's servers, the leader it last heard of first. A ``not_leader`` reply with a
hint sends it straight to the hinted server (a bounded number of times per round, so two
servers naming each other cannot keep it from pausing); a server that fails or asks for a
retry makes it move on to the next one. The round ends with the first reply its caller
says settles the call, or with ``None`` once every server was tried (or the deadline
passed); what went wrong last is in :attr:`CallDeadline.why`.

Two callers build on it. :class:`LeaderRouter` calls one service (the controller, another
replica group): rounds until a server answers ``ok``, a short pause
(:data:`RETRY_PAUSE_S`) after each round that found no leader, and
:class:`~shardwise.errors.ClientTimeoutError` at the call's total deadline. The sharded
client (``shardwise.client.router``) runs one round per attempt at the group that owns a
shard, between looks at the controller's configuration.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Final, TypeVar

from shardwise.errors import (
    AuthenticationError,
    ClientTimeoutError,
    FrameTooLargeError,
    NetError,
    RemoteCallError,
    RpcTimeoutError,
)
from shardwise.model.replies import ServiceReply
from shardwise.net.endpoint import Endpoint
from shardwise.net.rpc import RpcMethod

__all__ = [
    "ATTEMPT_TIMEOUT_S",
    "RETRY_PAUSE_S",
    "CallDeadline",
    "LeaderRouter",
    "ReplicaSet",
    "answered_ok",
    "cannot_succeed",
    "follow_leader",
    "loop_time",
]

ATTEMPT_TIMEOUT_S: Final = 2.0
"""One attempt at one server; past it the call tries the next one."""

RETRY_PAUSE_S: Final = 0.02
"""Pause after a full round of servers failed, so a leaderless service is not hammered."""

R = TypeVar("R", bound=ServiceReply)


def loop_time() -> float:
    # Loop time, not time.monotonic(): deadlines then run on virtual time in simulations.
    return asyncio.get_running_loop().time()


@dataclass(slots=True)
class CallDeadline:
    """One call's total deadline (loop time), and what to say when it passes."""

    what: str
    deadline: float
    budget_s: float
    why: str = ""
    """The last reason the call has not completed, for the timeout message."""

    @classmethod
    def starting_now(cls, what: str, deadline: float) -> CallDeadline:
        return cls(what, deadline, round(deadline - loop_time(), 3))

    def remaining(self) -> float:
        return self.deadline - loop_time()

    def timed_out(self) -> ClientTimeoutError:
        if not self.why:
            return ClientTimeoutError(f"{self.what} did not complete within {self.budget_s} s")
        return ClientTimeoutError(
            f"{self.what} did not complete within {self.budget_s} s: {self.why}"
        )


class ReplicaSet:
    """One replicated service's servers and the one we last heard leads it."""

    __slots__ = ("leader", "servers")

    def __init__(self, servers: Iterable[str], leader: str | None = None) -> None:
        self.servers = sorted(servers)
        self.leader = leader if leader in self.servers else None

    def order(self) -> list[str]:
        """The leader first (if known), then the rest in a fixed order."""
        if self.leader is None:
            return list(self.servers)
        return [self.leader, *(s for s in self.servers if s != self.leader)]


def answered_ok(reply: ServiceReply) -> bool:
    return reply.status == "ok"


def cannot_succeed(exc: NetError) -> bool:
    """Whether no server can ever take this request, so trying the next one (or waiting
    until the deadline) is pointless: it is too large for a frame (refused before it was
    sent), or the server could not read it (``bad_request``: a request this server's
    version does not know, e.g. bytes keys sent to an older server), or a server refused
    the user's login (a wrong password is wrong everywhere)."""
    if isinstance(exc, FrameTooLargeError | AuthenticationError):
        return True
    return isinstance(exc, RemoteCallError) and exc.code == "bad_request"


async def follow_leader(
    replicas: ReplicaSet,
    send: Callable[[str, float], Awaitable[R]],
    deadline: CallDeadline,
    attempt_timeout_s: float,
    settles: Callable[[R], bool] = answered_ok,
) -> R | None:
    """One round: ``send(server, timeout_s)`` to ``replicas``' servers, leader first,
    following new leader hints, until a reply ``settles`` the call (returned). ``None``
    when no server settled it or the deadline passed (``deadline.why`` says why). A
    :class:`~shardwise.errors.NetError` from ``send`` is one failed attempt, unless it
    says the request :func:`cannot_succeed` (raised at once); anything else it raises
    ends the round."""
    hints = 0
    order = replicas.order()
    position = 0
    while position < len(order):
        node = order[position]
        position += 1
        remaining = deadline.remaining()
        if remaining <= 0:
            return None
        try:
            reply = await send(node, min(attempt_timeout_s, remaining))
        except NetError as exc:
            if cannot_succeed(exc):
                raise
            cut_short = isinstance(exc, RpcTimeoutError) and remaining < attempt_timeout_s
            if not cut_short or not deadline.why:
                # (An attempt the deadline cut short says less than the reason before.)
                deadline.why = f"{node} failed: {exc}"
            if replicas.leader == node:
                replicas.leader = None  # do not make the next call wait on it first
            continue
        if settles(reply):
            if reply.status == "ok":
                # A follower may serve some calls (a read through ReadIndex) and names its
                # leader: ask the leader next time, which saves the follower's extra trip.
                hint = reply.leader
                replicas.leader = hint if hint in replicas.servers else node
            return reply
        deadline.why = f"{node} answered {reply.status}"
        hint = reply.leader
        # A hint to follow at once; bounded, so two servers naming each other do not keep
        # the caller from pausing.
        if (
            reply.status == "not_leader"
            and hint is not None
            and hint in replicas.servers
            and hint != node
            and hints < len(replicas.servers)
        ):
            hints += 1
            replicas.leader = hint
            order = replicas.order()
            position = 0
    return None


class LeaderRouter:
    """Calls to one replicated service through ``transport``, retried at its servers
    until one answers ``ok`` or the call's deadline passes."""

    def __init__(self, transport: Endpoint, servers: Iterable[str]) -> None:
        self.transport = transport
        self.replicas = ReplicaSet(servers)

    @property
    def servers(self) -> list[str]:
        return self.replicas.servers

    @property
    def leader(self) -> str | None:
        return self.replicas.leader

    async def call(
        self,
        method: RpcMethod[Any, R],
        request: object,
        deadline_s: float,
        *,
        attempt_timeout_s: float = ATTEMPT_TIMEOUT_S,
    ) -> R:
        """``attempt_timeout_s``: how long one server may take (a long poll, which the
        server holds on purpose, needs more than :data:`ATTEMPT_TIMEOUT_S`)."""
        deadline = CallDeadline(method.name, loop_time() + deadline_s, deadline_s)

        def send(node: str, timeout_s: float) -> Awaitable[R]:
            return self.transport.call(node, method, request, timeout_s=timeout_s)

        while True:
            reply = await follow_leader(self.replicas, send, deadline, attempt_timeout_s)
            if reply is not None:
                return reply
            if deadline.remaining() <= 0:
                raise ClientTimeoutError(f"{method.name} did not complete within {deadline_s} s")
            await asyncio.sleep(RETRY_PAUSE_S)
