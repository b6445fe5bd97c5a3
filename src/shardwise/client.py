"""The shardwise client: key-value operations on a sharded, replicated cluster.

::

    async with Client({"ctl-1": ("10.0.0.1", 7000)}, secret) as client:
        await client.put("user:1", "ada")
        assert await client.get("user:1") == "ada"

    with SyncClient({"ctl-1": ("10.0.0.1", 7000)}, secret) as client:  # blocking
        client.put("user:1", "ada")

**Routing.** A key maps to a shard by its keyspace's scheme (``shard_map``), a shard to a
replica group by the cached :class:`~shardwise.model.config.Configuration` (fetched
from the controller on first use, and again whenever a group says it no longer serves a
shard), and a group to its leader by a cached hint per group. A group server's node id is
its ``HOST:PORT`` address, so a configuration names every server the client can call.

**Retries.** ``not_leader`` with a hint: straight to the hinted server. ``retry``,
``halted``, a timeout or a network error: the next server of the group. A whole round of
the group failed: a short pause (:data:`~shardwise.net.leader.RETRY_PAUSE_S`), and now and
then a look at the controller in case the group lost the shard. ``wrong_group``: wait
briefly for a newer configuration, then re-route. No group owns the shard (the cluster
has no groups yet): wait for a configuration that gives it one. Each call has one total
deadline; past it, :class:`~shardwise.errors.ClientTimeoutError` names the key, the shard
and the last reason.

**Exactly once.** A write carries a client id and a sequence number that stay the same
across its retries, so the servers apply it once. Servers remember only the latest
sequence number per client id, so two writes of one id in flight at once could make the
older one *stale* (not applied). Each write in flight therefore holds a client id of its
own from a bounded pool (``<client_id>/0``, ``<client_id>/1``, ...), and each pooled id
numbers its writes in increasing order: many writes may be in flight on one client and
none is ever stale.

**Consistency.** Every single-key operation is linearizable. ``mget`` and ``mput`` are
one independent operation per key, run in parallel: each key is linearizable on its
own, but a multi-key write is *not* atomic across shards (on an error some keys may be
written and others not), and ``mget`` is not a snapshot. Likewise ``scan`` reads each
shard page by page: every page is a linearizable read, the whole scan is not a snapshot.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import heapq
import logging
import secrets
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Protocol, TypeVar

from shardwise.batching import CallBatcher
from shardwise.controller.client import ControllerClient
from shardwise.errors import (
    ClientClosedError,
    ClientError,
    ClientTimeoutError,
    NetError,
    RequestRefusedError,
    RpcTimeoutError,
    ShardwiseError,
    StaleWriteError,
    UnknownKeyspaceError,
)
from shardwise.model.config import NO_GROUP, Configuration, Keyspace, ShardId
from shardwise.model.kv import MAX_SCAN_ROWS, Append, Cas, Delete, KVOp, KVResult, Put
from shardwise.model.replies import ServiceReply
from shardwise.model.schemes import shard_map
from shardwise.net.endpoint import Endpoint
from shardwise.net.leader import ATTEMPT_TIMEOUT_S, RETRY_PAUSE_S
from shardwise.net.links import Address
from shardwise.net.loop import loop_factory
from shardwise.net.rpc import RpcMethod
from shardwise.net.transport import Transport
from shardwise.net.wire import MAX_NODE_ID_CHARS, MAX_RPC_TIMEOUT_MS, Role
from shardwise.placement import KeyRangePartition
from shardwise.shardserver.protocol import (
    READ,
    SCAN,
    WRITE,
    ReadRequest,
    ScanRequest,
    WriteRequest,
    server_address,
)

if TYPE_CHECKING:  # shardwise.sql (and sqlglot) load on the first SQL call only
    from shardwise.sql import Result
    from shardwise.sql.params import Params

__all__ = [
    "DEFAULT_DEADLINE_S",
    "DEFAULT_SCAN_LIMIT",
    "MAX_FANOUT",
    "MAX_SCAN_LIMIT",
    "MAX_WRITES_IN_FLIGHT",
    "SCAN_PAGE_ROWS",
    "Client",
    "SyncClient",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")
Req = TypeVar("Req")


class _ShardReply(ServiceReply, Protocol):
    """What routing reads in a shard server's reply (KV and SQL replies alike)."""

    @property
    def config_num(self) -> int: ...

    @property
    def error(self) -> str: ...


Rep = TypeVar("Rep", bound=_ShardReply)

DEFAULT_DEADLINE_S: Final = 10.0
"""Total time one call may take, all retries and configuration fetches included."""

MAX_WRITES_IN_FLIGHT: Final = 128
"""Writes one client runs at once, each under a pooled client id of its own. Bounds the
de-duplication sessions a client costs every shard it writes to (servers keep a bounded
number, see ``raft/sessions.py``) and stays under a server's handlers per connection."""

MAX_FANOUT: Final = 64
"""Requests one ``mget``/``mput``/``scan`` keeps in flight at once."""

DEFAULT_SCAN_LIMIT: Final = 1000
MAX_SCAN_LIMIT: Final = 100_000
"""Most pairs one ``scan`` returns: the result is held in memory whole."""

SCAN_PAGE_ROWS: Final = 256
"""Pairs asked of one shard per scan request. A hash-scheme scan asks every shard for a
page up front, so this times the shard count is what it may read beyond ``limit``."""

CONFIG_WATCH_WAIT_S: Final = 0.1
"""How long the controller may hold a watch for a configuration newer than the one a
group refused us with. A new configuration answers at once; when none comes (the group
is still pulling the shard), this is the pause before the group is asked again."""

CONFIG_FETCH_DEADLINE_S: Final = 5.0
"""One configuration fetch, all controllers tried; callers with less time left stop
waiting for it sooner (the fetch goes on for the others)."""

CONFIG_RECHECK_S: Final = 1.0
"""While a group fails whole rounds, look at the controller at most this often: the group
may have left, or lost the shard, in a configuration we have not seen."""

MAX_CLIENT_ID_CHARS: Final = MAX_NODE_ID_CHARS - 8
"""The client id is the transport's node id; pooled writer ids add ``/N`` to it."""


# --- routing state -------------------------------------------------------------------


class _GroupRoute:
    """One replica group's servers and the one we last heard leads it."""

    __slots__ = ("gid", "leader", "servers")

    def __init__(self, gid: int, servers: Iterable[str], leader: str | None = None) -> None:
        self.gid = gid
        self.servers = sorted(servers)
        self.leader = leader if leader in self.servers else None

    def order(self) -> list[str]:
        """The leader first (if known), then the rest in a fixed order."""
        if self.leader is None:
            return list(self.servers)
        return [self.leader, *(s for s in self.servers if s != self.leader)]


class _Writer:
    """A pooled client id and its sequence numbers."""

    __slots__ = ("client_id", "seq")

    def __init__(self, client_id: str, first_seq: int) -> None:
        self.client_id = client_id
        self.seq = first_seq

    def next_seq(self) -> int:
        self.seq += 1
        return self.seq


class _WriterPool:
    """Client ids for writes in flight: each write holds one for all its retries, so no
    two writes in flight share an id. Ids are made on demand up to ``size`` and reused
    most-recently-released first, so a client that writes one at a time uses one id."""

    def __init__(self, base_id: str, size: int, first_seq: int) -> None:
        self._base_id = base_id
        self._first_seq = first_seq
        self._free: list[_Writer] = []
        self._made = 0
        self._slots = asyncio.Semaphore(size)

    @property
    def ids_made(self) -> int:
        return self._made

    async def acquire(self) -> _Writer:
        await self._slots.acquire()
        if self._free:
            return self._free.pop()
        writer = _Writer(f"{self._base_id}/{self._made}", self._first_seq)
        self._made += 1
        return writer

    def release(self, writer: _Writer) -> None:
        self._free.append(writer)
        self._slots.release()


@dataclass(slots=True)
class _Call:
    """One public call: what it is (for error messages) and its total deadline."""

    what: str
    deadline: float
    budget_s: float
    why: str = ""
    """The last reason it has not completed, for the timeout message."""

    def remaining(self) -> float:
        return self.deadline - _now()

    def timed_out(self) -> ClientTimeoutError:
        if not self.why:
            return ClientTimeoutError(f"{self.what} did not complete within {self.budget_s} s")
        return ClientTimeoutError(
            f"{self.what} did not complete within {self.budget_s} s: {self.why}"
        )


@dataclass(frozen=True, slots=True)
class _Scan:
    """What one scan asks for."""

    keyspace: Keyspace
    prefix: str | None
    start: str | None
    end: str | None
    limit: int
    page_rows: int
    deadline: float


@dataclass(slots=True)
class _ScanCursor:
    """One shard's part of a scan: the pairs read and not yet merged, and where to go on."""

    shard: ShardId
    start: str | None
    rows: deque[tuple[str, str]] = field(default_factory=deque)
    done: bool = False


# --- the client ----------------------------------------------------------------------


class Client:
    """An asyncio client of a shardwise cluster, for one keyspace.

    ``controllers`` names the shard controller's servers (id -> address); the groups are
    found through it. Every call takes an optional ``deadline_s`` (default: the client's)
    that bounds it whole, retries included; one attempt at one server is bounded by
    ``attempt_timeout_s``. At most ``max_writes_in_flight`` writes run at once (more wait
    for a slot, within their deadline). Writes are numbered above ``first_seq`` (default:
    the wall clock in microseconds). ``transport``: an endpoint to call through (e.g. a
    simulator's), which its owner starts and closes; by default the client has its own.
    """

    def __init__(
        self,
        controllers: Mapping[str, Address],
        secret: bytes,
        *,
        client_id: str | None = None,
        keyspace: str = "default",
        deadline_s: float = DEFAULT_DEADLINE_S,
        attempt_timeout_s: float = ATTEMPT_TIMEOUT_S,
        max_writes_in_flight: int = MAX_WRITES_IN_FLIGHT,
        first_seq: int | None = None,
        transport: Endpoint | None = None,
    ) -> None:
        self.client_id = client_id or f"client-{secrets.token_hex(8)}"
        if not 0 < len(self.client_id) <= MAX_CLIENT_ID_CHARS:
            raise ValueError(f"a client id has 1 to {MAX_CLIENT_ID_CHARS} characters")
        if deadline_s <= 0:
            raise ValueError("deadline_s must be positive")
        if not 0 < attempt_timeout_s * 1000 <= MAX_RPC_TIMEOUT_MS:
            raise ValueError(f"attempt_timeout_s must be in (0, {MAX_RPC_TIMEOUT_MS // 1000}]")
        if max_writes_in_flight < 1:
            raise ValueError("max_writes_in_flight must be at least 1")
        self.keyspace = keyspace
        self.deadline_s = deadline_s
        self.attempt_timeout_s = attempt_timeout_s
        # One endpoint for the controller and every group. An injected one (a simulator's)
        # is started and closed by its owner.
        self._owns_transport = transport is None
        self._transport: Endpoint = transport or Transport(self.client_id, secret, role=Role.CLIENT)
        self._batcher = CallBatcher(self._transport)
        self._controller = ControllerClient(
            controllers, secret, client_id=f"{self.client_id}/ctl", transport=self._transport
        )
        if first_seq is None:
            # The wall clock in microseconds rather than 0: a process that reuses a fixed
            # client id after a restart then numbers its writes above those of its previous
            # life instead of seeing them refused as stale (nobody writes a million a second).
            first_seq = time.time_ns() // 1000
        self._writers = _WriterPool(self.client_id, max_writes_in_flight, first_seq)
        self._config: Configuration | None = None
        self._fetched_at = 0.0
        """When the controller last answered (loop time)."""
        self._fetching: asyncio.Task[None] | None = None
        """The one configuration fetch in flight, shared by every call that needs it."""
        self._routes: dict[int, _GroupRoute] = {}
        self._peers: set[str] = set()
        self._state = "new"
        self.last_rows_shipped: dict[int, int] = {}
        """Rows each shard sent for the last SQL read to finish, by shard index."""

    # --- life cycle --------------------------------------------------------------------

    async def start(self) -> None:
        if self._state != "new":
            raise RuntimeError("a client starts once")
        self._state = "starting"
        if self._owns_transport:
            try:
                await self._transport.start()
            except BaseException:
                self._state = "closed"
                raise
        self._state = "running"

    async def close(self) -> None:
        if self._state == "closed":
            return
        owned_and_started = self._owns_transport and self._state == "running"
        self._state = "closed"
        if self._fetching is not None:
            self._fetching.cancel()
            await asyncio.gather(self._fetching, return_exceptions=True)
        await self._batcher.close()
        if owned_and_started:
            await self._transport.close()

    async def __aenter__(self) -> Client:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @property
    def configuration(self) -> Configuration | None:
        """The latest configuration this client has seen (``None`` before the first call)."""
        return self._config

    @property
    def batches_sent(self) -> int:
        """Calls that carried several reads or writes at once (see ``shardwise.batching``)."""
        return self._batcher.batches_sent

    @property
    def writer_ids_made(self) -> int:
        """How many pooled client ids writes have needed so far (at most the pool size)."""
        return self._writers.ids_made

    # --- single keys -------------------------------------------------------------------

    async def get(self, key: str, *, deadline_s: float | None = None) -> str | None:
        """The key's value, ``None`` if it is absent (a linearizable read)."""
        return await self._get(key, self._deadline(deadline_s))

    async def put(self, key: str, value: str, *, deadline_s: float | None = None) -> None:
        await self._write("put", key, Put(key, value), self._deadline(deadline_s))

    async def append(self, key: str, value: str, *, deadline_s: float | None = None) -> None:
        """Add ``value`` to the end of the key's value (set it if the key is absent)."""
        await self._write("append", key, Append(key, value), self._deadline(deadline_s))

    async def delete(self, key: str, *, deadline_s: float | None = None) -> None:
        await self._write("delete", key, Delete(key), self._deadline(deadline_s))

    async def cas(
        self, key: str, expected: str | None, new: str, *, deadline_s: float | None = None
    ) -> bool:
        """Set ``key`` to ``new`` if it holds ``expected`` (``None``: if it is absent);
        whether it did."""
        cas = Cas(key, expected, new)
        result = await self._write("cas", key, cas, self._deadline(deadline_s))
        return result.ok

    # --- many keys ---------------------------------------------------------------------

    async def mget(
        self, keys: Iterable[str], *, deadline_s: float | None = None
    ) -> dict[str, str | None]:
        """The value of each key (``None``: absent), read in parallel under one deadline.
        Each read is linearizable; together they are not a snapshot."""
        deadline = self._deadline(deadline_s)
        unique = list(dict.fromkeys(keys))
        values = await self._fan_out([_bind(self._get, key, deadline) for key in unique])
        return dict(zip(unique, values, strict=True))

    async def mput(self, items: Mapping[str, str], *, deadline_s: float | None = None) -> None:
        """Put every pair, in parallel under one deadline. Each put is exactly-once and
        linearizable, but the whole is not atomic: if one fails (the first error is
        raised once all have finished), the others may still have been applied."""
        deadline = self._deadline(deadline_s)
        await self._fan_out(
            [_bind(self._write, "put", k, Put(k, v), deadline) for k, v in items.items()]
        )

    async def scan(
        self,
        prefix: str | None = None,
        *,
        start: str | None = None,
        end: str | None = None,
        limit: int = DEFAULT_SCAN_LIMIT,
        page_rows: int = SCAN_PAGE_ROWS,
        deadline_s: float | None = None,
    ) -> list[tuple[str, str]]:
        """Up to ``limit`` ``(key, value)`` pairs of the keyspace in key order, with
        ``start <= key < end`` and starting with ``prefix``.

        A hash or ring keyspace scatters keys over all its shards, so every shard is read
        and the pages merged; a range keyspace reads only the shards the range spans, in
        order. Shards are read a page (``page_rows``) at a time.
        """
        if not 0 <= limit <= MAX_SCAN_LIMIT:
            raise RequestRefusedError(f"scan limit {limit} is not in [0, {MAX_SCAN_LIMIT}]")
        if not 1 <= page_rows <= MAX_SCAN_ROWS:
            raise RequestRefusedError(f"page_rows {page_rows} is not in [1, {MAX_SCAN_ROWS}]")
        deadline = self._deadline(deadline_s)
        call = self._call_info(f"scan of keyspace {self.keyspace!r}", deadline)
        keyspace = await self._keyspace(call)
        if limit == 0:
            return []
        scan = _Scan(keyspace, prefix, start, end, limit, page_rows, deadline)
        if keyspace.scheme.kind == "range":
            return await self._scan_ranges(scan)
        return await self._scan_merge(scan)

    # --- SQL -------------------------------------------------------------------------

    async def sql(
        self, query: str, params: Params | None = None, *, deadline_s: float | None = None
    ) -> Result:
        """Run one SQL statement over the cluster (``docs/sql.md``): its columns and rows
        (reads), or the rows it changed (``rowcount``, writes).

        Each shard's part runs on that shard's group (reads through ReadIndex, writes as
        one log entry per shard, exactly once), routed and retried like a key. DDL
        returns once every group holding a shard of the keyspace has applied it. One
        deadline bounds the whole statement. Errors are :class:`~shardwise.errors.SqlError`
        subclasses, or :class:`~shardwise.errors.ClientTimeoutError`."""
        from shardwise import sqlclient  # noqa: PLC0415 - loads sqlglot: SQL users only

        return await sqlclient.execute(self, query, params, self._deadline(deadline_s))

    # --- operations --------------------------------------------------------------------

    def _deadline(self, deadline_s: float | None) -> float:
        budget = self.deadline_s if deadline_s is None else deadline_s
        if budget <= 0:
            raise ValueError("deadline_s must be positive")
        return _now() + budget

    def _call_info(self, what: str, deadline: float) -> _Call:
        return _Call(what, deadline, round(deadline - _now(), 3))

    async def _get(self, key: str, deadline: float) -> str | None:
        call = self._call_info(f"get of key {key!r}", deadline)
        shard = await self._shard_of(key, call)
        reply = await self._call(shard, READ, ReadRequest(shard, key), call)
        return reply.value

    async def _write(self, verb: str, key: str, op: KVOp, deadline: float) -> KVResult:
        call = self._call_info(f"{verb} of key {key!r}", deadline)
        shard = await self._shard_of(key, call)
        writer = await self._acquire_writer(call)
        try:
            # One sequence number for all the retries of this write: applied once.
            request = WriteRequest(shard, writer.client_id, writer.next_seq(), op)
            reply = await self._call(shard, WRITE, request, call)
        finally:
            self._writers.release(writer)
        result = reply.result
        if result is None:
            raise ClientError(f"{call.what}: the server answered ok without a result")
        if result.stale:
            raise StaleWriteError(
                f"{call.what} was not applied: client id {request.client_id!r} already had "
                f"a write numbered above {request.seq} applied (is another live client "
                f"using client id {self.client_id!r}?)"
            )
        return result

    async def _acquire_writer(self, call: _Call) -> _Writer:
        remaining = call.remaining()
        if remaining <= 0:
            raise call.timed_out()
        try:
            async with asyncio.timeout(remaining):
                return await self._writers.acquire()
        except TimeoutError:
            call.why = "every writer slot stayed busy"
            raise call.timed_out() from None

    async def _fan_out(self, jobs: list[Callable[[], Awaitable[T]]]) -> list[T]:
        """Run every job, at most MAX_FANOUT at once; the first error (in job order) is
        raised once all have finished, so none is left running unwatched."""
        slots = asyncio.Semaphore(MAX_FANOUT)

        async def run(job: Callable[[], Awaitable[T]]) -> T:
            async with slots:
                return await job()

        outcomes = await asyncio.gather(*(run(job) for job in jobs), return_exceptions=True)
        results: list[T] = []
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
            results.append(outcome)
        return results

    # --- scans -------------------------------------------------------------------------

    async def _scan_page(self, scan: _Scan, cursor: _ScanCursor, rows: int) -> None:
        call = self._call_info(f"scan of shard {cursor.shard}", scan.deadline)
        request = ScanRequest(
            cursor.shard, prefix=scan.prefix, start=cursor.start, end=scan.end, limit=rows
        )
        items = (await self._call(cursor.shard, SCAN, request, call)).items
        cursor.rows.extend(items)
        if len(items) < rows:
            cursor.done = True
        else:
            # The smallest key above the last one: the next page starts right after it.
            cursor.start = items[-1][0] + "\x00"

    async def _scan_merge(self, scan: _Scan) -> list[tuple[str, str]]:
        name, shards = scan.keyspace.name, scan.keyspace.scheme.shards
        cursors = [_ScanCursor(ShardId(name, i), scan.start) for i in range(shards)]
        first = min(scan.page_rows, scan.limit)
        await self._fan_out([_bind(self._scan_page, scan, c, first) for c in cursors])
        # A k-way merge: each shard's pairs come in key order, and a key lives in one shard.
        heap = [(c.rows[0][0], i) for i, c in enumerate(cursors) if c.rows]
        heapq.heapify(heap)
        out: list[tuple[str, str]] = []
        while heap and len(out) < scan.limit:
            _, i = heapq.heappop(heap)
            cursor = cursors[i]
            out.append(cursor.rows.popleft())
            if not cursor.rows and not cursor.done and len(out) < scan.limit:
                await self._scan_page(scan, cursor, min(scan.page_rows, scan.limit - len(out)))
            if cursor.rows:
                heapq.heappush(heap, (cursor.rows[0][0], i))
        return out

    async def _scan_ranges(self, scan: _Scan) -> list[tuple[str, str]]:
        splits = scan.keyspace.scheme.split_points
        prefix = scan.prefix
        low = max(scan.start or "", prefix or "") or None
        out: list[tuple[str, str]] = []
        for index in KeyRangePartition(list(splits)).partitions_for_range(low, scan.end):
            lower = splits[index - 1] if index > 0 else ""
            if prefix is not None and lower >= prefix and not lower.startswith(prefix):
                break  # this shard and every later one start above all keys with the prefix
            cursor = _ScanCursor(ShardId(scan.keyspace.name, index), scan.start)
            while not cursor.done and len(out) < scan.limit:
                await self._scan_page(scan, cursor, min(scan.page_rows, scan.limit - len(out)))
                out.extend(cursor.rows)
                cursor.rows.clear()
            if len(out) >= scan.limit:
                break
        return out

    # --- routing -----------------------------------------------------------------------

    async def _keyspace(self, call: _Call) -> Keyspace:
        config = self._config
        while config is None:
            self._check_running()
            config = await self._refresh(-1, call, wait=False)
        keyspace = config.keyspaces.get(self.keyspace)
        if keyspace is None:
            # Perhaps created after the configuration we hold: ask once before giving up.
            config = await self._refresh(config.num, call, wait=False)
            keyspace = config.keyspaces.get(self.keyspace) if config else None
            if keyspace is None:
                raise UnknownKeyspaceError(f"keyspace {self.keyspace!r} does not exist")
        return keyspace

    async def _shard_of(self, key: str, call: _Call) -> ShardId:
        # A keyspace's scheme never changes, so the shard is fixed for the whole call.
        shard = shard_map(await self._keyspace(call)).shard(key)
        call.what = f"{call.what} (shard {shard})"
        return shard

    async def _call(
        self,
        shard: ShardId,
        method: RpcMethod[Req, Rep],
        request: Req,
        call: _Call,
        *,
        attempt_s: float | None = None,
    ) -> Rep:
        """Send ``request`` to the group serving ``shard`` until one answers ``ok``.
        ``attempt_s``: one attempt's bound, if not the client's (a SQL fragment may run
        longer than a key's read)."""
        while True:
            self._check_running()
            if call.remaining() <= 0:
                raise call.timed_out()
            config = self._config
            if config is None:
                await self._refresh(-1, call, wait=False)
                continue
            gid = config.owner(shard)
            route = self._routes.get(gid) if gid != NO_GROUP else None
            if route is None:
                call.why = f"no group serves the shard in configuration {config.num}"
                await self._refresh(config.num, call, wait=True)
                continue
            outcome = await self._round(route, method, request, call, attempt_s=attempt_s)
            if outcome is not None:
                if outcome.error:
                    raise RequestRefusedError(f"{call.what} was refused: {outcome.error}")
                if outcome.status == "ok":
                    return outcome
                # wrong_group: the group is at configuration N and does not serve the shard.
                # If we hold an older one, N itself tells us where the shard went; if not,
                # the group has yet to catch up or to pull the shard: wait for a newer one.
                call.why = (
                    f"group {gid} does not serve the shard (it is at configuration "
                    f"{outcome.config_num}, we at {config.num})"
                )
                await self._refresh(max(config.num, outcome.config_num - 1), call, wait=True)
                continue
            # Nobody in the group could answer (an election, a restart): pause, and now and
            # then ask the controller whether the shard is still this group's.
            await asyncio.sleep(max(0.0, min(RETRY_PAUSE_S, call.remaining())))
            if _now() - self._fetched_at >= CONFIG_RECHECK_S:
                await self._refresh(config.num, call, wait=False)

    async def _round(
        self,
        route: _GroupRoute,
        method: RpcMethod[Req, Rep],
        request: Req,
        call: _Call,
        *,
        attempt_s: float | None = None,
    ) -> Rep | None:
        """Try the group's servers, leader first, following new leader hints. The reply
        that settles the call (ok, wrong_group, refused), or None (``call.why`` says why)."""
        if not route.servers:
            call.why = f"group {route.gid} has no servers"
        attempt_timeout_s = self.attempt_timeout_s if attempt_s is None else attempt_s
        hints = 0
        order = route.order()
        position = 0
        while position < len(order):
            node = order[position]
            position += 1
            remaining = call.remaining()
            if remaining <= 0:
                return None
            try:
                # (Through the batcher: reads and writes for the same server that
                # coincide with others travel together.)
                timeout_s = min(attempt_timeout_s, remaining)
                reply = await self._batcher.call(node, method, request, timeout_s)
            except NetError as exc:
                self._check_running()
                cut_short = isinstance(exc, RpcTimeoutError) and remaining < attempt_timeout_s
                if not cut_short or not call.why:
                    # (An attempt the deadline cut short says less than the reason before.)
                    call.why = f"{node} failed: {exc}"
                if route.leader == node:
                    route.leader = None  # do not make the next call wait on it first
                continue
            if reply.status in ("ok", "wrong_group") or reply.error:
                if reply.status == "ok":
                    # A follower serves reads (ReadIndex) and names its leader: ask the
                    # leader next time, which saves the follower's extra round trip.
                    hint = reply.leader
                    route.leader = hint if hint in route.servers else node
                return reply
            call.why = f"{node} answered {reply.status}"
            hint = reply.leader
            # A hint to follow at once; bounded, so two servers naming each other do not
            # keep us from pausing.
            if (
                reply.status == "not_leader"
                and hint is not None
                and hint in route.servers
                and hint != node
                and hints < len(route.servers)
            ):
                hints += 1
                route.leader = hint
                order = route.order()
                position = 0
        return None

    def _check_running(self) -> None:
        if self._state != "running":
            raise ClientClosedError(f"client {self.client_id!r} is not running ({self._state})")

    # --- configurations ----------------------------------------------------------------

    async def _refresh(self, newer_than: int, call: _Call, *, wait: bool) -> Configuration | None:
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
        except ShardwiseError as exc:  # before TimeoutError: ClientTimeoutError is one
            call.why = f"the controller did not answer: {exc}"
            await asyncio.sleep(max(0.0, min(RETRY_PAUSE_S, call.remaining())))
        except TimeoutError:
            call.why = call.why or "no configuration came from the controller"
            raise call.timed_out() from None
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is None or not current.cancelling():
                self._check_running()  # the fetch, not this call, was cancelled: by close()
            raise
        return self._config

    async def _fetch(self, newer_than: int, wait: bool) -> None:
        try:
            if wait:
                # The controller's own deadline for a watch is long; ours is the fetch's.
                async with asyncio.timeout(CONFIG_FETCH_DEADLINE_S + CONFIG_WATCH_WAIT_S):
                    config = await self._controller.watch(newer_than, wait_s=CONFIG_WATCH_WAIT_S)
            else:
                config = await self._controller.query(deadline_s=CONFIG_FETCH_DEADLINE_S)
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
        self._fetched_at = _now()
        if self._config is not None and config.num <= self._config.num:
            return  # configurations only move forward; an older answer teaches nothing
        self._config = config
        routes: dict[int, _GroupRoute] = {}
        for gid, names in config.groups.items():
            servers = [s for s in names if self._learn_server(s)]
            old = self._routes.get(gid)
            if old is not None and old.servers == sorted(servers):
                routes[gid] = old
            else:
                routes[gid] = _GroupRoute(gid, servers, old.leader if old else None)
        self._routes = routes
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


def _now() -> float:
    # Loop time, not time.monotonic(): deadlines then run on virtual time in simulations.
    return asyncio.get_running_loop().time()


def _bind(fn: Callable[..., Awaitable[T]], *args: Any) -> Callable[[], Awaitable[T]]:
    """``fn`` with its arguments, called later (a coroutine is made only when it runs)."""
    return lambda: fn(*args)


# --- the blocking client -------------------------------------------------------------


class SyncClient:
    """A blocking :class:`Client`: the same calls, for code that does not use asyncio.

    The async client runs on an event loop of its own in a background thread; each call
    is handed to that loop and waited for. A thread rather than ``asyncio.Runner`` because
    (1) the loop keeps running between calls, so connections keep being read and kept
    alive while the caller does other things; (2) any number of threads may call one
    SyncClient at once (their calls run concurrently on the loop); (3) it works even when
    the calling thread already runs an event loop, where ``Runner`` refuses.
    """

    def __init__(
        self,
        controllers: Mapping[str, Address],
        secret: bytes,
        *,
        client_id: str | None = None,
        keyspace: str = "default",
        deadline_s: float = DEFAULT_DEADLINE_S,
        attempt_timeout_s: float = ATTEMPT_TIMEOUT_S,
        max_writes_in_flight: int = MAX_WRITES_IN_FLIGHT,
        first_seq: int | None = None,
    ) -> None:
        self._options: dict[str, Any] = {
            "client_id": client_id,
            "keyspace": keyspace,
            "deadline_s": deadline_s,
            "attempt_timeout_s": attempt_timeout_s,
            "max_writes_in_flight": max_writes_in_flight,
            "first_seq": first_seq,
        }
        self._controllers = dict(controllers)
        self._secret = secret
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._client: Client | None = None

    # --- life cycle --------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("a client starts once")
        loop = loop_factory()()
        self._loop = loop
        self._thread = threading.Thread(
            target=self._run_loop, args=(loop,), name="shardwise-client", daemon=True
        )
        self._thread.start()
        try:
            self._run(self._start_client())
        except BaseException:
            self._stop_loop()
            raise

    def close(self) -> None:
        if self._loop is None or self._thread is None or not self._thread.is_alive():
            return
        try:
            if self._client is not None:
                self._run(self._client.close())
        finally:
            self._stop_loop()

    def __enter__(self) -> SyncClient:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def client_id(self) -> str:
        return self._async_client().client_id

    @property
    def configuration(self) -> Configuration | None:
        return self._async_client().configuration

    # --- the calls ---------------------------------------------------------------------

    def get(self, key: str, *, deadline_s: float | None = None) -> str | None:
        return self._run(self._async_client().get(key, deadline_s=deadline_s))

    def put(self, key: str, value: str, *, deadline_s: float | None = None) -> None:
        self._run(self._async_client().put(key, value, deadline_s=deadline_s))

    def append(self, key: str, value: str, *, deadline_s: float | None = None) -> None:
        self._run(self._async_client().append(key, value, deadline_s=deadline_s))

    def delete(self, key: str, *, deadline_s: float | None = None) -> None:
        self._run(self._async_client().delete(key, deadline_s=deadline_s))

    def cas(
        self, key: str, expected: str | None, new: str, *, deadline_s: float | None = None
    ) -> bool:
        return self._run(self._async_client().cas(key, expected, new, deadline_s=deadline_s))

    def mget(
        self, keys: Iterable[str], *, deadline_s: float | None = None
    ) -> dict[str, str | None]:
        return self._run(self._async_client().mget(list(keys), deadline_s=deadline_s))

    def mput(self, items: Mapping[str, str], *, deadline_s: float | None = None) -> None:
        self._run(self._async_client().mput(dict(items), deadline_s=deadline_s))

    def scan(
        self,
        prefix: str | None = None,
        *,
        start: str | None = None,
        end: str | None = None,
        limit: int = DEFAULT_SCAN_LIMIT,
        page_rows: int = SCAN_PAGE_ROWS,
        deadline_s: float | None = None,
    ) -> list[tuple[str, str]]:
        client = self._async_client()
        return self._run(
            client.scan(
                prefix,
                start=start,
                end=end,
                limit=limit,
                page_rows=page_rows,
                deadline_s=deadline_s,
            )
        )

    def sql(
        self, query: str, params: Params | None = None, *, deadline_s: float | None = None
    ) -> Result:
        """:meth:`Client.sql`, blocking."""
        return self._run(self._async_client().sql(query, params, deadline_s=deadline_s))

    @property
    def last_rows_shipped(self) -> dict[int, int]:
        return self._async_client().last_rows_shipped

    # --- internals ---------------------------------------------------------------------

    def _async_client(self) -> Client:
        if self._client is None:
            raise ClientClosedError("the client is not started")
        return self._client

    async def _start_client(self) -> None:
        # Made on the loop's thread: its transport belongs to that loop.
        client = Client(self._controllers, self._secret, **self._options)
        await client.start()
        self._client = client

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        loop = self._loop
        if loop is None or self._thread is None or not self._thread.is_alive():
            coro.close()
            raise ClientClosedError("the client is not running")
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("a SyncClient call from its own loop would wait on itself")
        future: concurrent.futures.Future[T] = asyncio.run_coroutine_threadsafe(coro, loop)
        try:
            # No timeout here: every call is bounded by its own deadline inside the client.
            return future.result()
        except BaseException:
            future.cancel()  # e.g. KeyboardInterrupt: do not leave the call running
            raise

    @staticmethod
    def _run_loop(loop: asyncio.AbstractEventLoop) -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_forever()
            # Whatever is left (calls abandoned by their threads) is cancelled, not leaked.
            pending = asyncio.all_tasks(loop)
            for task in pending:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            asyncio.set_event_loop(None)
            loop.close()

    def _stop_loop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is not None and thread is not None and thread.is_alive():
            loop.call_soon_threadsafe(loop.stop)
            thread.join()
        self._client = None
