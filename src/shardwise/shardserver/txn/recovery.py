"""A group leader's recovery of transactions whose client went away.

A client resolves its transaction a round trip after its last prepare. One prepared here
for longer than :data:`RECOVER_AFTER_S` (counted from when this leader first saw it, so a
new leader waits as long again) is settled and resolved by the leader itself, exactly as
its client would have (``client.py``): the other participants are asked, those that
recorded nothing are fenced, and the outcome is the one the recorded states imply. A
client that was only slow finds its transaction settled the same way.

The leader reaches other groups through its own configuration, and the controller's
newer one when a shard is not where it thought (:class:`ConfigParticipants`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Final, Protocol, TypeVar

from shardwise.errors import ShardwiseError
from shardwise.model.config import Configuration, ShardId
from shardwise.model.txn import TxnId
from shardwise.net.endpoint import Endpoint
from shardwise.net.leader import CallDeadline, LeaderRouter, loop_time
from shardwise.net.rpc import RpcMethod
from shardwise.shardserver.protocol import TxnReply, server_address
from shardwise.shardserver.txn.client import TxnResolver

if TYPE_CHECKING:
    from shardwise.controller.client import ControllerClient
    from shardwise.raft.host import RaftHost
    from shardwise.shardserver.statemachine import ShardGroupStateMachine

logger = logging.getLogger(__name__)

RECOVER_AFTER_S: Final = 2.0
"""How long a transaction may stay prepared here before the leader settles it: many
round trips, and past an election (a client retrying through one is not cut short)."""

RECOVERY_POLL_S: Final = 0.5
"""How often the leader looks for transactions to recover."""

MAX_RECOVERING: Final = 16
"""Transactions one leader recovers at once (the rest wait for the next look)."""

RECOVERY_DEADLINE_S: Final = 30.0
"""One recovery's time to settle; past it, the next look tries again."""

CONFIG_FETCH_S: Final = 5.0

Req = TypeVar("Req")


class LocalCall(Protocol):
    async def __call__(
        self, method: RpcMethod[Req, TxnReply], request: Req, call: CallDeadline
    ) -> TxnReply: ...


class ConfigParticipants:
    """A server reaches a transaction's participants through the configuration its
    group is at (``current``), and the controller's latest once a shard is not where it
    thought (``txn/client.Participants``)."""

    def __init__(
        self,
        transport: Endpoint,
        current: Callable[[], Configuration],
        controller: ControllerClient,
        *,
        gid: int,
        local: LocalCall,
    ) -> None:
        """``local``: how this server calls its own group (``gid``): its own handlers,
        which propose through its host (a transport does not call itself)."""
        self._transport = transport
        self._current = current
        self._controller = controller
        self._gid = gid
        self._local = local
        self._fetched: Configuration | None = None
        self._routers: dict[tuple[str, ...], LeaderRouter] = {}

    def _config(self) -> Configuration:
        current = self._current()
        fetched = self._fetched
        return fetched if fetched is not None and fetched.num > current.num else current

    async def call_shard(
        self, shard: ShardId, method: RpcMethod[Req, TxnReply], request: Req, call: CallDeadline
    ) -> TxnReply:
        config = self._config()
        gid = config.owner(shard)
        if gid == self._gid:
            return await self._local(method, request, call)
        servers = tuple(sorted(config.groups.get(gid, ())))
        router = self._routers.get(servers)
        if router is None:
            for server in servers:
                self._transport.set_peer(server, server_address(server))
            router = self._routers[servers] = LeaderRouter(self._transport, servers)
        return await router.call(method, request, max(0.001, call.remaining()))

    async def by_group(self, shards: Iterable[ShardId], call: CallDeadline) -> list[list[ShardId]]:
        config = self._config()
        groups: dict[int, list[ShardId]] = {}
        for shard in sorted(shards):
            groups.setdefault(config.owner(shard), []).append(shard)
        return list(groups.values())

    async def newer_configuration(self, call: CallDeadline) -> None:
        try:
            fetched = await self._controller.query(deadline_s=min(CONFIG_FETCH_S, call.remaining()))
        except ShardwiseError as exc:
            call.why = f"the controller did not answer: {exc}"
            await asyncio.sleep(min(RECOVERY_POLL_S, max(0.0, call.remaining())))
            return
        if fetched.num <= self._config().num:
            await asyncio.sleep(min(RECOVERY_POLL_S, max(0.0, call.remaining())))
        self._fetched = fetched


class TxnRecovery:
    """The leader's task (see the module docstring)."""

    def __init__(
        self,
        host: RaftHost[ShardGroupStateMachine],
        participants: ConfigParticipants,
    ) -> None:
        self.host = host
        self.resolver = TxnResolver(participants)
        self._first_seen: dict[TxnId, float] = {}
        self._running: dict[TxnId, asyncio.Task[None]] = {}
        self.recovered = 0
        """Transactions this replica settled for a client that did not (for status)."""

    async def run_forever(self) -> None:
        try:
            while True:
                await asyncio.sleep(RECOVERY_POLL_S)
                try:
                    self._look()
                except ShardwiseError as exc:  # (a store closed under us: look again later)
                    logger.debug("looking for transactions to recover: %r", exc)
        finally:
            for task in self._running.values():
                task.cancel()
            await asyncio.gather(*self._running.values(), return_exceptions=True)

    def _look(self) -> None:
        if not self.host.node.is_leader():
            self._first_seen.clear()
            return
        now = loop_time()
        prepared = self.host.state_machine.prepared_txns()
        self._first_seen = {t: self._first_seen.get(t, now) for t in prepared}
        for txn, participants in prepared.items():
            if len(self._running) >= MAX_RECOVERING:
                return
            if txn in self._running or now - self._first_seen[txn] < RECOVER_AFTER_S:
                continue
            task = asyncio.create_task(self._recover(txn, participants), name=f"recover {txn}")
            self._running[txn] = task

    def _done(self, txn: TxnId) -> None:
        self._running.pop(txn, None)

    async def _recover(self, txn: TxnId, participants: tuple[ShardId, ...]) -> None:
        call = CallDeadline.starting_now(
            f"recovery of transaction {txn}", loop_time() + RECOVERY_DEADLINE_S
        )
        try:
            committed = await self.resolver.settle(txn, participants, {}, call)
            logger.info(
                "transaction %s was left prepared: %s by recovery",
                txn,
                "committed" if committed else "aborted",
            )
            self.recovered += 1
            await self.resolver.finish(txn, participants, committed)
        except (ShardwiseError, TimeoutError) as exc:
            logger.info("recovery of transaction %s will be tried again: %r", txn, exc)
        except Exception:  # a bug: say so loudly, and try again at the next look
            logger.exception("recovery of transaction %s failed", txn)
        finally:
            self._done(txn)
