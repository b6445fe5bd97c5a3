"""The client's router: key or shard -> replica group -> leader, refreshed and retried.

A key maps to a shard by its keyspace's scheme (``shard_map``), a shard to a replica
group by the cached :class:`~shardwise.model.config.Configuration` (fetched from the
controller on first use, and again whenever a group says it no longer serves a shard),
and a group to its leader by a cached hint per group (a
:class:`~shardwise.net.leader.ReplicaSet`). A group server's node id is its
``HOST:PORT`` address, so a configuration names every server the client can call.

Each attempt at a group is one round of :func:`~shardwise.net.leader.follow_leader` (the
codebase's one leader-following loop). ``not_leader`` with a hint: straight to the hinted
server. ``retry``, ``halted``, a timeout or a network error: the next server of the group.
A whole round of the group failed: a short pause (``RETRY_PAUSE_S``), and now and then a
look at the controller in case the group lost the shard. ``wrong_group``: wait briefly
for a newer configuration, then re-route. No group owns the shard (the cluster has no
groups yet): wait for a configuration that gives it one. Each call has one total
deadline; past it, :class:`~shardwise.errors.ClientTimeoutError` names the call, the
shard and the last reason.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from typing import Final, Protocol, TypeVar

from shardwise.client.batching import CallBatcher
from shardwise.client.turns import ShardTurns
from shardwise.controller.client import ControllerClient
from shardwise.errors import (
    AuthenticationError,
    ClientTimeoutError,
    NetError,
    PermissionDeniedError,
    RequestRefusedError,
    ShardwiseError,
    UnknownKeyspaceError,
)
from shardwise.model.config import NO_GROUP, Configuration, Keyspace, ShardId
from shardwise.model.kv import Key
from shardwise.model.replies import ServiceReply
from shardwise.model.schemes import shard_map
from shardwise.net.auth import Credentials
from shardwise.net.endpoint import Endpoint
from shardwise.net.leader import (
    RETRY_PAUSE_S,
    CallDeadline,
    ReplicaSet,
    cannot_succeed,
    follow_leader,
    loop_time,
)
from shardwise.net.links import Address
from shardwise.net.rpc import RpcMethod
from shardwise.shardserver.protocol import server_address
from shardwise.storage.space import DiskFullError

logger = logging.getLogger(__name__)

CONFIG_WATCH_WAIT_S: Final = 0.1
"""How long the controller may hold a watch for a configuration newer than the one a
group refused us with. A new configuration answers at once; when none comes (the group
is still pulling the shard), this is the pause before the group is asked again."""

CONFIG_FETCH_DEADLINE_S: Final = 5.0
"""One configuration fetch, all controllers tried; callers with less time left stop
waiting for it sooner (the fetch goes on for the others)."""

LOCKED_PAUSE_S: Final = 0.005
"""First pause before asking again for a key a prepared transaction holds (doubling up to
:data:`MAX_LOCKED_PAUSE_S`): a transaction resolves a round trip after it prepares, and
one whose client died is recovered by its participants (``shardserver/txnrecovery.py``)."""

MAX_LOCKED_PAUSE_S: Final = 0.2

CONFIG_RECHECK_S: Final = 1.0
"""While a group fails whole rounds, look at the controller at most this often: the group
may have left, or lost the shard, in a configuration we have not seen."""


class ShardReply(ServiceReply, Protocol):
    """What routing reads in a shard server's reply (KV and SQL replies alike)."""

    @property
    def config_num(self) -> int: ...

    @property
    def error(self) -> str: ...

    @property
    def denied(self) -> bool: ...


Req = TypeVar("Req")
Rep = TypeVar("Rep", bound=ShardReply)


def _settles(reply: ShardReply) -> bool:
    """A shard server's reply that ends a round: ok, wrong_group, locked, or a refusal."""
    return reply.status in ("ok", "wrong_group", "disk_full", "locked") or bool(reply.error)


class ShardRouter:
    """Routes one client's requests to the groups that serve their shards.

    Calls go through ``transport`` (shared with the controller client), batched per
    server (``batching.py``). ``check_running`` raises
    :class:`~shardwise.errors.ClientClosedError` when the owning client is not running;
    it is asked before every attempt and after every failed one."""

    def __init__(
        self,
        transport: Endpoint,
        controllers: Mapping[str, Address],
        secret: Credentials,
        *,
        client_id: str,
        attempt_timeout_s: float,
        check_running: Callable[[], None],
    ) -> None:
        self.client_id = client_id
        self.attempt_timeout_s = attempt_timeout_s
        self.check_running = check_running
        self._transport = transport
        self.batcher = CallBatcher(transport)
        self.controller = ControllerClient(
            controllers, secret, client_id=f"{client_id}/ctl", transport=transport
        )
        self._config: Configuration | None = None
        self._fetched_at = 0.0
        self.turns = ShardTurns()
        """Turns on shards for this client's writes over several shards (turns.py)."""
        """When the controller last answered (loop time)."""
        self._fetching: asyncio.Task[None] | None = None
        """The one configuration fetch in flight, shared by every call that needs it."""
        self._groups: dict[int, ReplicaSet] = {}
        self._peers: set[str] = set()

    async def close(self) -> None:
        """Stop the configuration fetch and what the batcher is sending."""
        if self._fetching is not None:
            self._fetching.cancel()
            await asyncio.gather(self._fetching, return_exceptions=True)
        await self.batcher.close()

    @property
    def configuration(self) -> Configuration | None:
        """The latest configuration this router has seen (``None`` before the first)."""
        return self._config

    # --- keys and shards -----------------------------------------------------------------

    async def keyspace(self, name: str, call: CallDeadline) -> Keyspace:
        """Keyspace ``name`` as the latest configuration describes it."""
        config = await self.configuration_at_least(-1, call)
        keyspace = config.keyspaces.get(name)
        if keyspace is None:
            # Perhaps created after the configuration we hold: ask once before giving up.
            latest = await self.refresh(config.num, call, wait=False)
            keyspace = latest.keyspaces.get(name) if latest else None
            if keyspace is None:
                raise UnknownKeyspaceError(f"keyspace {name!r} does not exist")
        return keyspace

    async def shard_of(self, keyspace: str, key: Key, call: CallDeadline) -> ShardId:
        """The shard of ``key``; ``call``'s description names it from here on."""
        # A keyspace's scheme never changes, so the shard is fixed for the whole call.
        shard = shard_map(await self.keyspace(keyspace, call)).shard(key)
        call.what = f"{call.what} (shard {shard})"
        return shard

    # --- calls ---------------------------------------------------------------------------

    async def call(
        self,
        shard: ShardId,
        method: RpcMethod[Req, Rep],
        request: Req,
        call: CallDeadline,
        *,
        attempt_s: float | None = None,
    ) -> Rep:
        """Send ``request`` to the group serving ``shard`` until one answers ``ok``.
        ``attempt_s``: one attempt's bound, if not the client's (a SQL fragment may run
        longer than a key's read)."""
        locked_pause = LOCKED_PAUSE_S
        while True:
            self.check_running()
            if call.remaining() <= 0:
                raise call.timed_out()
            config = self._config
            if config is None:
                await self.refresh(-1, call, wait=False)
                continue
            gid = config.owner(shard)
            if gid == NO_GROUP or gid not in self._groups:
                call.why = f"no group serves the shard in configuration {config.num}"
                await self.refresh(config.num, call, wait=True)
                continue
            outcome = await self.call_group(gid, method, request, call, attempt_s=attempt_s)
            if outcome is not None:
                if outcome.error:
                    refused = PermissionDeniedError if outcome.denied else RequestRefusedError
                    raise refused(f"{call.what} was refused: {outcome.error}")
                if outcome.status == "ok":
                    return outcome
                if outcome.status == "locked":
                    # A prepared transaction holds the key: nothing was done; ask again.
                    call.why = f"a transaction held the key ({getattr(outcome, 'locked_by', '')})"
                    await asyncio.sleep(max(0.0, min(locked_pause, call.remaining())))
                    locked_pause = min(MAX_LOCKED_PAUSE_S, 2 * locked_pause)
                    continue
                if outcome.status == "disk_full":
                    raise DiskFullError(
                        f"{call.what} was refused: the servers' disks are full "
                        "(writes resume once there is room)"
                    )
                # wrong_group: the group is at configuration N and does not serve the shard.
                # If we hold an older one, N itself tells us where the shard went; if not,
                # the group has yet to catch up or to pull the shard: wait for a newer one.
                call.why = (
                    f"group {gid} does not serve the shard (it is at configuration "
                    f"{outcome.config_num}, we at {config.num})"
                )
                await self.refresh(max(config.num, outcome.config_num - 1), call, wait=True)
                continue
            # Nobody in the group could answer (an election, a restart): pause, and now and
            # then ask the controller whether the shard is still this group's.
            await asyncio.sleep(max(0.0, min(RETRY_PAUSE_S, call.remaining())))
            if loop_time() - self._fetched_at >= CONFIG_RECHECK_S:
                await self.refresh(config.num, call, wait=False)

    def knows_group(self, gid: int) -> bool:
        """Whether the latest configuration has group ``gid``."""
        return gid in self._groups

    async def call_group(
        self,
        gid: int,
        method: RpcMethod[Req, Rep],
        request: Req,
        call: CallDeadline,
        *,
        attempt_s: float | None = None,
    ) -> Rep | None:
        """One round at group ``gid``'s servers, leader first: the reply that settles the
        call (ok, wrong_group, refused), or None (``call.why`` says why; also when the
        group is not in the latest configuration)."""
        replicas = self._groups.get(gid)
        if replicas is None:
            return None
        if not replicas.servers:
            call.why = f"group {gid} has no servers"
        attempt_timeout_s = self.attempt_timeout_s if attempt_s is None else attempt_s

        async def send(node: str, timeout_s: float) -> Rep:
            try:
                # (Through the batcher: reads and writes for the same server that
                # coincide with others travel together.)
                return await self.batcher.call(node, method, request, timeout_s)
            except NetError as exc:
                self.check_running()  # closed meanwhile: that, not the network, is why
                if cannot_succeed(exc):  # no server will ever take it: say so now
                    raise RequestRefusedError(f"{call.what} cannot succeed: {exc}") from exc
                raise

        return await follow_leader(replicas, send, call, attempt_timeout_s, _settles)

    # --- configurations ------------------------------------------------------------------

    async def configuration_at_least(self, num: int, call: CallDeadline) -> Configuration:
        """The cached configuration, fetched if there is none or it is older than
        ``num``."""
        config = self._config
        while config is None or config.num < num:
            self.check_running()
            config = await self.refresh(-1, call, wait=False)
        return config

    async def refresh(
        self, newer_than: int, call: CallDeadline, *, wait: bool
    ) -> Configuration | None:
        """Ask the controller for a configuration numbered above ``newer_than`` (holding
        the request up to CONFIG_WATCH_WAIT_S for one if ``wait``), install it if it is
        newer than ours and return the latest we hold. Concurrent callers share one fetch;
        a failed fetch is logged and leaves the caller to retry within its deadline."""
        task = self._fetching
        if task is None:
            task = asyncio.create_task(self._fetch(newer_than, wait))
            task.add_done_callback(self._fetch_done)
            self._fetching = task
        remaining = call.remaining()
        if remaining <= 0:
            raise call.timed_out()
        try:
            # Shielded: a caller out of time stops waiting, the fetch goes on for the rest.
            await asyncio.wait_for(asyncio.shield(task), remaining)
        except AuthenticationError:
            raise  # the login was refused: waiting will not change the password
        except ShardwiseError as exc:  # before TimeoutError: ClientTimeoutError is one
            call.why = f"the controller did not answer: {exc}"
            await asyncio.sleep(max(0.0, min(RETRY_PAUSE_S, call.remaining())))
        except TimeoutError:
            call.why = call.why or "no configuration came from the controller"
            raise call.timed_out() from None
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is None or not current.cancelling():
                self.check_running()  # the fetch, not this call, was cancelled: by close()
            raise
        return self._config

    async def _fetch(self, newer_than: int, wait: bool) -> None:
        try:
            if wait:
                # The controller's own deadline for a watch is long; ours is the fetch's.
                async with asyncio.timeout(CONFIG_FETCH_DEADLINE_S + CONFIG_WATCH_WAIT_S):
                    config = await self.controller.watch(newer_than, wait_s=CONFIG_WATCH_WAIT_S)
            else:
                config = await self.controller.query(deadline_s=CONFIG_FETCH_DEADLINE_S)
        except ClientTimeoutError:
            raise
        except TimeoutError as exc:
            raise ClientTimeoutError(
                f"no controller answered within {CONFIG_FETCH_DEADLINE_S} s"
            ) from exc
        self._install(config)

    def _fetch_done(self, task: asyncio.Task[None]) -> None:
        if self._fetching is task:
            self._fetching = None
        if not task.cancelled() and (exc := task.exception()) is not None:
            logger.debug("%s: fetching a configuration failed: %r", self.client_id, exc)

    def _install(self, config: Configuration) -> None:
        self._fetched_at = loop_time()
        if self._config is not None and config.num <= self._config.num:
            return  # configurations only move forward; an older answer teaches nothing
        self._config = config
        groups: dict[int, ReplicaSet] = {}
        for gid, names in config.groups.items():
            servers = [s for s in names if self._learn_server(s)]
            old = self._groups.get(gid)
            if old is not None and old.servers == sorted(servers):
                groups[gid] = old
            else:
                groups[gid] = ReplicaSet(servers, old.leader if old else None)
        self._groups = groups
        logger.debug("%s: now at configuration %d", self.client_id, config.num)

    def _learn_server(self, server: str) -> bool:
        """Make ``server`` callable; False if its name is not ``HOST:PORT``."""
        if server in self._peers:
            return True
        try:
            address = server_address(server)
        except ValueError:
            logger.warning("%s: ignoring group server %r: not HOST:PORT", self.client_id, server)
            return False
        self._transport.set_peer(server, address)
        self._peers.add(server)
        return True
