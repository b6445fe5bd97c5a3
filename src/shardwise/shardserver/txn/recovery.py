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
from shardwise.model.txn import TxnId, txn_tag, wall_ms
from shardwise.net.endpoint import Endpoint
from shardwise.net.leader import CallDeadline, LeaderRouter, loop_time
from shardwise.net.rpc import RpcMethod
from shardwise.shardserver.commands import TxnExpire, encode
from shardwise.shardserver.protocol import TxnReply, server_address
from shardwise.shardserver.txn.client import TxnResolver, split_by_group

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

RECOVERY_DEADLINE_S: Final = 5.0
"""One recovery attempt's time to settle and resolve; past it, it is tried again after a
back-off (:data:`RETRY_BACKOFF_S`), so a slot is not held long by one that cannot finish."""

RETRY_BACKOFF_S: Final = (1.0, 30.0)
"""After a recovery that could not finish, the same transaction waits this long before the
next (doubling from the first to the second): one that cannot be settled yet (its
participants unreachable) does not keep the others waiting for a slot."""

EXPIRE_EVERY_S: Final = 10.0
"""How often the leader logs a ``TxnExpire`` while its shards hold final records (they go
once ``MAX_TXN_AGE_MS`` old)."""

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
        gid = config.owner(shard)  # (a shard of the cluster: see split_by_group)
        if gid == self._gid:
            return await self._local(method, request, call)
        servers = tuple(sorted(config.groups.get(gid, ())))
        router = self._routers.get(servers)
        if router is None:
            for server in servers:
                self._transport.set_peer(server, server_address(server))
            router = self._routers[servers] = LeaderRouter(self._transport, servers)
        return await router.call(method, request, max(0.001, call.remaining()))

    async def by_group(
        self, shards: Iterable[ShardId], call: CallDeadline
    ) -> tuple[list[list[ShardId]], list[ShardId]]:
        return split_by_group(self._config(), shards)

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
        self._retry: dict[TxnId, tuple[float, float]] = {}
        """After a failed recovery: when to try again, and the back-off used."""
        self._last_expire = 0.0
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
            self._retry.clear()
            return
        now = loop_time()
        stores = self.host.state_machine.serving_stores()
        prepared = {t.txn: t.participants for store in stores for t in store.prepared_txns()}
        self._first_seen = {t: self._first_seen.get(t, now) for t in prepared}
        self._retry = {t: r for t, r in self._retry.items() if t in prepared}
        due = sorted(
            (self._retry.get(t, (self._first_seen[t] + RECOVER_AFTER_S, 0.0))[0], t)
            for t in prepared
            if t not in self._running
        )
        for when, txn in due:
            if when > now or len(self._running) >= MAX_RECOVERING:
                break
            task = asyncio.create_task(self._recover(txn, prepared[txn]), name=f"recover {txn}")
            self._running[txn] = task
        if now - self._last_expire >= EXPIRE_EVERY_S and any(s.has_final_txns() for s in stores):
            self._last_expire = now
            self._running["expire"] = asyncio.create_task(self._expire(), name="expire txns")

    def _done(self, txn: TxnId, *, failed: bool = False) -> None:
        self._running.pop(txn, None)
        if failed:
            _, backoff = self._retry.get(txn, (0.0, 0.0))
            backoff = min(RETRY_BACKOFF_S[1], max(RETRY_BACKOFF_S[0], 2 * backoff))
            self._retry[txn] = (loop_time() + backoff, backoff)

    async def _expire(self) -> None:
        """Log the clean-up of old final records (``TxnExpire``, with this leader's time)."""
        try:
            command = encode(TxnExpire(wall_ms()))
            await self.host.propose(command, RECOVERY_DEADLINE_S)
        except (ShardwiseError, TimeoutError) as exc:
            logger.debug("the clean-up of old transaction records failed: %r", exc)
        finally:
            self._running.pop("expire", None)

    async def _recover(self, txn: TxnId, participants: tuple[ShardId, ...]) -> None:
        call = CallDeadline.starting_now(
            f"recovery of transaction {txn}", loop_time() + RECOVERY_DEADLINE_S
        )
        failed = True
        try:
            committed = await self.resolver.settle(txn, participants, {}, call)
            logger.info(
                "transaction %s was left prepared: %s by recovery",
                txn_tag(txn),
                "committed" if committed else "aborted",
            )
            self.recovered += 1
            await self.resolver.finish(
                txn, participants, committed, deadline_s=max(0.001, call.remaining())
            )
            failed = False
        except (ShardwiseError, TimeoutError) as exc:
            logger.info("recovery of transaction %s will be tried again: %r", txn_tag(txn), exc)
        except Exception:  # a bug: say so loudly, and try again later
            logger.exception("recovery of transaction %s failed", txn_tag(txn))
        finally:
            self._done(txn, failed=failed)
