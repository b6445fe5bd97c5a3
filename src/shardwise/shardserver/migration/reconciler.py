"""The reconciler: the one background task of a group server that moves shards. It acts
only while its replica leads the group (the others stay idle), and only through the log:

1. pull every shard the group is gaining from the group that loses it: a *base* (a copy
   the source takes while it still serves the shard, or its frozen copy) into the log in
   pieces (``transfer.py``), then, once the source has frozen it, the *delta* since the
   base, and the install (each replica rebuilds the same bytes, checks them, and serves
   the shard at once);
2. tell each source group that its frozen copy was installed, so it deletes it, and log
   that the source heard;
3. when nothing is being pulled, fetch configuration n+1 from the controller, pre-copy
   the bases of the shards it gains (so no two groups wait for each other), wait (see
   ``ShardSource.may_freeze``) until every group gaining a shard from this one holds a
   base of it, and log it.

The pre-copy is what keeps a moving shard's write pause short: the shard refuses writes
from the source's freeze to the target's install, and in between only the delta moves.

Every command it logs is checked again when it applies, so a stale leader, a repeat or a
crash between steps does no harm: the next leader sees the same state and carries on.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Final, Protocol

from shardwise.errors import NetError, ShardwiseError
from shardwise.model.config import NO_GROUP, Configuration, ShardId
from shardwise.net.endpoint import Endpoint
from shardwise.net.leader import LeaderRouter
from shardwise.raft.host import RaftHost
from shardwise.raft.ready import Role
from shardwise.service import REQUEST_TIMEOUT_S
from shardwise.shardserver.commands import (
    AckDelivered,
    Command,
    InstallBase,
    InstallDelta,
    Reconfigure,
    decode_result,
    encode,
)
from shardwise.shardserver.migration.owners import OwnerChange, owner_changes
from shardwise.shardserver.migration.source import (
    PRECOPY_PROGRESS_S,
    BaseTooOldError,
    ShardSource,
)
from shardwise.shardserver.migration.transfer import FIRST_PULL_TIMEOUT_S, ImagePuller
from shardwise.shardserver.protocol import (
    HANDED_OFF,
    HandedOffRequest,
    PullReply,
    PullRequest,
    server_address,
)
from shardwise.shardserver.statemachine import Pull, ShardGroupStateMachine

logger = logging.getLogger(__name__)

IDLE_POLL_S: Final = 0.1
"""How often a follower checks whether it leads now, and a leader retries failed work."""

WATCH_S: Final = 2.0
"""How long one watch on the controller waits for a new configuration."""

DELTA_POLL_S: Final = 0.05
"""How often a group holding a base asks each server of the source whether it has frozen
the shard: the longest this adds to a move's write pause."""

PROBE_TIMEOUT_S: Final = 1.0
"""One pre-copy probe (telling a source server that this group holds a base)."""

DELTA_WAIT_S: Final = 5.0
"""One round of asking for a delta; then the reconciler starts over (nothing is lost)."""


LOGGED_SHARDS: Final = 4
"""Shards named in a log line about a configuration change; the rest are counted."""


def _first(items: Sequence[str]) -> str:
    shown = ", ".join(items[:LOGGED_SHARDS])
    more = len(items) - LOGGED_SHARDS
    return shown + (f", and {more} more" if more > 0 else "")


class Configurations(Protocol):
    """Where the reconciler learns of new configurations (the controller's client)."""

    async def query(self, num: int = -1) -> Configuration: ...

    async def watch(self, newer_than: int, wait_s: float = 10.0) -> Configuration: ...


class Reconciler:
    """Moves the shards of group ``gid`` for the replica ``host`` (see the module's
    docstring); ``source`` is the same server's giving side."""

    def __init__(
        self,
        gid: int,
        node_id: str,
        *,
        host: RaftHost[ShardGroupStateMachine],
        transport: Endpoint,
        controller: Configurations,
        source: ShardSource,
    ) -> None:
        self.gid = gid
        self._node_id = node_id
        self._host = host
        self._sm = host.state_machine
        self._transport = transport
        self._controller = controller
        self._source = source
        self._puller = ImagePuller(transport, self.propose)
        self._precopy_tried = 0
        """The configuration this server last tried to pre-copy bases for."""
        self._stale_bases: dict[tuple[ShardId, int], int] = {}
        """Bases the source could not make a delta from, by shard and configuration."""
        self._routers: dict[tuple[str, ...], LeaderRouter] = {}
        self._image_sizes: dict[tuple[ShardId, int], int] = {}
        """The size of the image (base or delta) being pulled, by shard and configuration,
        for the status's progress (see ``image_size``)."""

    async def run_forever(self) -> None:
        await asyncio.gather(
            self._while_leader(self._advance, "advance"),
            self._while_leader(self._confirm_hand_offs, "confirm hand-offs"),
        )

    def image_size(self, shard: ShardId, config_num: int) -> int:
        """The size of the image of ``shard`` this replica pulls for ``config_num`` (0: it
        pulls none; the status reports how much of it is in the log)."""
        return self._image_sizes.get((shard, config_num), 0)

    async def propose(self, command: Command) -> bool:
        """Log ``command``; whether it applied (False: every replica ignored it)."""
        result = decode_result(await self._host.propose(encode(command), REQUEST_TIMEOUT_S))
        return result.outcome == "ok"

    async def _while_leader(self, step: Callable[[], Awaitable[bool]], what: str) -> None:
        """Run ``step`` over and over while this replica leads; pause when it did nothing
        or failed. A failure is logged and retried: every step is safe to repeat."""
        while True:
            busy = False
            try:
                if self._host.status().role is Role.LEADER:
                    busy = await step()
            except asyncio.CancelledError:
                raise
            except (ShardwiseError, NetError) as exc:
                logger.info("%s: %s: %s", self._node_id, what, exc)
            except Exception:
                logger.exception("%s: %s crashed", self._node_id, what)
            if not busy:
                await asyncio.sleep(IDLE_POLL_S)

    # --- gaining shards and moving on ------------------------------------------------------

    async def _advance(self) -> bool:
        """Pull what the group is gaining; once it has it all, log the next
        configuration. Whether there may be more to do at once."""
        sm = self._sm
        if self._stale_bases:  # only the configuration being pulled matters
            old = [key for key in self._stale_bases if key[1] < sm.config.num]
            for key in old:
                del self._stale_bases[key]
        if self._image_sizes:
            for key in [k for k in self._image_sizes if k[1] < sm.config.num]:
                del self._image_sizes[key]
        pulls = sm.pulls()
        if pulls:
            results = await asyncio.gather(
                *(self._fetch_and_install(p) for p in pulls), return_exceptions=True
            )
            self._log_failures(results)
            return sm.finished()
        num = sm.config.num
        latest = await self._controller.watch(newer_than=num, wait_s=WATCH_S)
        if latest.num <= num or self._host.status().role is not Role.LEADER:
            sm.writes.ddl_waiting = set()  # (nothing waits here)
            return latest.num > num
        following = latest if latest.num == num + 1 else await self._controller.query(num + 1)
        if following.num == num + 1:
            await self._precopy(following)
            if not self._source.may_freeze(following):
                return False
            held = sm.writes.tables_held(sm.config, following)
            sm.writes.ddl_waiting = held
            if held:  # prepared transactions must resolve first (``writes.tables_held``)
                return False
            changes = owner_changes(sm.config, following, self.gid)
            if await self.propose(Reconfigure(following)):
                self._log_reconfigured(num, following.num, changes)
        return True

    def _log_reconfigured(self, old: int, new: int, changes: Sequence[OwnerChange]) -> None:
        """Once per group and configuration (only the leader whose proposal applied)."""
        gains = [f"{c.shard} from group {c.previous}" for c in changes if c.owner == self.gid]
        losses = [f"{c.shard} to group {c.owner}" for c in changes if c.owner != self.gid]
        moves = "; ".join(
            part
            for part in (
                f"gains {len(gains)} ({_first(gains)})" if gains else "",
                f"gives {len(losses)} ({_first(losses)})" if losses else "",
            )
            if part
        )
        logger.info(
            "%s: group %d goes from configuration %d to %d: %s",
            self._node_id,
            self.gid,
            old,
            new,
            moves or "no shard changes hands here",
        )

    async def _precopy(self, new: Configuration) -> None:
        """Before the group moves to ``new``: take a base of every shard it gains there
        from another group, and tell that group it has one. (Before, not after: two
        groups that swap shards would otherwise each wait for the other to move first.)
        A failure is only logged: the pull after ``new`` takes a base anyway."""
        sm = self._sm
        gains = [
            (c.shard, sm.config.groups.get(c.previous, ()))
            for c in owner_changes(sm.config, new, self.gid)
            if c.owner == self.gid and c.previous != NO_GROUP
        ]
        missing = [(s, g) for s, g in gains if self._base(s, new.num) is None]
        if self._precopy_tried != new.num:  # once: a source that is down costs one try
            self._precopy_tried = new.num
            copies = [self._copy_base(shard, new.num, servers) for shard, servers in missing]
            self._log_failures(await asyncio.gather(*copies, return_exceptions=True), "pre-copy: ")
        probes: list[Awaitable[PullReply | None]] = []
        for shard, servers in gains:
            base = self._base(shard, new.num)
            if base is not None:
                request = PullRequest(shard, new.num, max_bytes=1, mode="delta", since=base)
                probes.extend(self._puller.ask(s, request, PROBE_TIMEOUT_S) for s in servers)
        await asyncio.gather(*probes)

    def _base(self, shard: ShardId, config_num: int) -> int | None:
        """The write version of the group's usable base of ``shard`` for ``config_num``."""
        base = self._sm.base_version(shard, config_num)
        if base is None or self._stale_bases.get((shard, config_num)) == base:
            return None
        return base

    async def _fetch_and_install(self, pull: Pull) -> None:
        """Bring in a shard the group is pulling: a base unless it holds one, then, once
        the source has frozen the shard, the delta since the base, and the install."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        shard, num = pull.shard, pull.config_num
        base = self._base(shard, num)
        if base is None:
            base = await self._copy_base(shard, num, pull.servers)
        based = loop.time()
        server, first = await self._await_delta(pull, base)
        frozen = loop.time()
        request = PullRequest(shard, num, mode="delta", since=base)
        self._image_sizes[shard, num] = first.total
        await self._puller.stream_in(shard, num, server, first, request)
        if not await self.propose(InstallDelta(shard, num, first.total, first.crc, base)):
            self._stale_bases[(shard, num)] = base
            raise ShardwiseError(f"the delta for {shard} was refused; pulling a new base")
        logger.info(
            "%s: installed %s from %s: base %.2f s, waited for the freeze %.2f s, "
            "delta of %d bytes installed %.2f s after it",
            self._node_id,
            shard,
            server,
            based - started,
            frozen - based,
            first.total,
            loop.time() - frozen,
        )

    async def _copy_base(self, shard: ShardId, config_num: int, servers: Sequence[str]) -> int:
        """Log a base of ``shard`` (gained in ``config_num``) from ``servers``; its write
        version."""
        request = PullRequest(shard, config_num, mode="base")
        server, first = await self._puller.first_piece(shard, config_num, servers, request)
        self._image_sizes[shard, config_num] = first.total
        progress = asyncio.create_task(self._tell_copying(shard, config_num, servers))
        try:
            await self._puller.stream_in(shard, config_num, server, first, request)
        finally:
            progress.cancel()
        command = InstallBase(shard, config_num, first.total, first.crc, first.version)
        if not await self.propose(command):
            raise ShardwiseError(f"the base of {shard} was refused")
        self._stale_bases.pop((shard, config_num), None)
        return first.version

    async def _tell_copying(self, shard: ShardId, config_num: int, servers: Sequence[str]) -> None:
        """While a base is being copied: tell every server of the source, every
        :data:`PRECOPY_PROGRESS_S`, so it keeps waiting for it (see ``may_freeze``)."""
        request = PullRequest(shard, config_num, mode="delta", since=-1)
        while True:
            await asyncio.gather(*(self._puller.ask(s, request, PROBE_TIMEOUT_S) for s in servers))
            await asyncio.sleep(PRECOPY_PROGRESS_S)

    async def _await_delta(self, pull: Pull, since: int) -> tuple[str, PullReply]:
        """The first piece of the delta since ``since`` and the server that gave it: asks
        every server of the source every :data:`DELTA_POLL_S` until one has frozen the
        shard (for at most :data:`DELTA_WAIT_S`)."""
        request = PullRequest(pull.shard, pull.config_num, mode="delta", since=since)
        found: asyncio.Future[tuple[str, PullReply]] = asyncio.get_running_loop().create_future()

        async def poll(server: str) -> None:
            while not found.done():
                reply = await self._puller.ask(server, request, FIRST_PULL_TIMEOUT_S)
                if found.done():
                    return
                if reply is not None and reply.status == "ok":
                    found.set_result((server, reply))
                elif reply is not None and reply.status == "too_old":
                    self._stale_bases[(pull.shard, pull.config_num)] = since
                    found.set_exception(BaseTooOldError(f"{server} has no delta of {pull.shard}"))
                else:
                    await asyncio.sleep(DELTA_POLL_S)

        polls = [asyncio.create_task(poll(server)) for server in pull.servers]
        try:
            async with asyncio.timeout(DELTA_WAIT_S):
                return await found
        except TimeoutError:
            raise ShardwiseError(
                f"{pull.shard} is not frozen for configuration {pull.config_num} yet"
            ) from None
        finally:
            for task in polls:
                task.cancel()

    # --- confirming hand-offs --------------------------------------------------------------

    async def _confirm_hand_offs(self) -> bool:
        """Tell each source group its frozen copy was installed here. Separate from
        :meth:`_advance`: a source that is down must not hold up new configurations."""
        owed = self._sm.owed_acks()
        results = await asyncio.gather(
            *(self._confirm(o.shard, o.config_num, o.servers) for o in owed),
            return_exceptions=True,
        )
        self._log_failures(results)
        return False

    async def _confirm(self, shard: ShardId, config_num: int, servers: tuple[str, ...]) -> None:
        router = self._routers.get(servers)
        if router is None:
            for server in servers:
                self._transport.set_peer(server, server_address(server))
            router = self._routers[servers] = LeaderRouter(self._transport, servers)
        await router.call(HANDED_OFF, HandedOffRequest(shard, config_num), REQUEST_TIMEOUT_S)
        await self.propose(AckDelivered(shard, config_num))

    def _log_failures(self, results: Sequence[object], what: str = "") -> None:
        """Log the exceptions among ``results`` (of a gather that returned them); anything
        but an ``Exception`` (a cancellation) is raised again."""
        for failure in results:
            if isinstance(failure, BaseException):
                if not isinstance(failure, Exception):
                    raise failure
                logger.info("%s: %s%s", self._node_id, what, failure)
