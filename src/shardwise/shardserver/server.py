"""One server of a replica group: serves its shards and moves them when the
configuration changes.

    python -m shardwise.shardserver --group 1 --id 127.0.0.1:7201 --listen 127.0.0.1:7201 \\
        --peer 127.0.0.1:7202=127.0.0.1:7202 --peer 127.0.0.1:7203=127.0.0.1:7203 \\
        --controller c1=127.0.0.1:7100 --controller c2=... --controller c3=... \\
        --data ./data/g1-1 --secret-file ./secret

A group server's node id is its address, so every process holding a configuration can
reach it. Clients call :data:`~shardwise.shardserver.protocol.WRITE`, ``READ`` and
``SCAN``, and for SQL ``SQL_READ``, ``SQL_WRITE`` and ``SQL_SCHEMA``; other groups call
``PULL`` and ``HANDED_OFF``; operators call ``STATUS``.

**The reconciler.** Every server runs one background task that acts only while its
replica leads the group (the others stay idle), and only through the log:

1. pull every shard the group is gaining from the group that loses it: a *base* (a copy
   the source takes while it still serves the shard, or its frozen copy) into the log in
   pieces, then, once the source has frozen it, the *delta* since the base, and the
   install (each replica rebuilds the same bytes, checks them, and serves the shard at
   once);
2. tell each source group that its frozen copy was installed, so it deletes it, and log
   that the source heard;
3. when nothing is being pulled, fetch configuration n+1 from the controller, pre-copy
   the bases of the shards it gains (so no two groups wait for each other), wait (at most
   :data:`PRECOPY_WAIT_S`) until every group gaining a shard from this one holds a base
   of it, and log it.

The pre-copy is what keeps a moving shard's write pause short: the shard refuses writes
from the source's freeze to the target's install, and in between only the delta moves.

Every command it logs is checked again when it applies, so a stale leader, a repeat or a
crash between steps does no harm: the next leader sees the same state and carries on.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import Counter, OrderedDict, deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final, TypeVar

import crc32c
from msgspec.structs import replace

from shardwise.controller.client import ControllerClient
from shardwise.errors import (
    InvalidMessageError,
    NetError,
    ShardLimitError,
    ShardwiseError,
    SqlError,
    SqlExecutionError,
    SqlLimitError,
)
from shardwise.model.config import NO_GROUP, Configuration, ShardId
from shardwise.model.kv import MAX_BATCH_OPS, MAX_SCAN_ROWS, check_op
from shardwise.net.endpoint import Endpoint
from shardwise.net.leader import LeaderRouter
from shardwise.net.links import Address
from shardwise.net.rpc import CallContext
from shardwise.net.wire import Role as WireRole
from shardwise.raft.ready import Role
from shardwise.service import (
    REQUEST_TIMEOUT_S,
    ReplicaConfig,
    ReplicaService,
    parse_peers,
    replica_arg_parser,
    replica_config,
    replica_status_fields,
    run_main,
    through_host,
)
from shardwise.shardserver.commands import (
    INSTALL_CHUNK_BYTES,
    AckDelivered,
    ClientBatch,
    ClientOp,
    Command,
    GroupResult,
    HandOffDone,
    InstallBase,
    InstallChunk,
    InstallDelta,
    Reconfigure,
    SqlWrite,
    decode_result,
    encode,
)
from shardwise.shardserver.protocol import (
    BATCH,
    HANDED_OFF,
    PULL,
    PULL_CHUNK_BYTES,
    READ,
    SCAN,
    SQL_READ,
    SQL_SCHEMA,
    SQL_WRITE,
    STATUS,
    WRITE,
    BatchReply,
    BatchRequest,
    HandedOffReply,
    HandedOffRequest,
    KVReply,
    PullReply,
    PullRequest,
    ReadRequest,
    ScanRequest,
    ShardInfo,
    SqlFailure,
    SqlReadRequest,
    SqlReply,
    SqlSchemaReply,
    SqlSchemaRequest,
    SqlWriteRequest,
    StatusReply,
    StatusRequest,
    WriteRequest,
    server_address,
)
from shardwise.shardserver.sqlshard import check_batch, check_params
from shardwise.shardserver.statemachine import Pull, Read, ShardGroupStateMachine, moves
from shardwise.shardserver.store import ShardStore
from shardwise.storage.interface import RaftStorage

logger = logging.getLogger(__name__)

IDLE_POLL_S: Final = 0.1
"""How often a follower checks whether it leads now, and a leader retries failed work."""

WATCH_S: Final = 2.0
"""How long one watch on the controller waits for a new configuration."""

PULL_CALL_TIMEOUT_S: Final = 10.0
"""One pull call (one piece of an image) to one server of the source group."""

FIRST_PULL_TIMEOUT_S: Final = 3.0
"""The first piece, from a server that may be down: short, so the next one is tried soon
(long enough for a source to export a large shard)."""

PROPOSE_WINDOW: Final = 1
"""Install pieces in flight in the log at once. Measured (`bench/kv.py`, a 100 MiB move
under load on 2 cores), before the pre-copy: 16 in flight made other shards' p99 4.7x
its steady state; 4: 2.5x; 2: 1.0-1.1x (and the shard refused writes throughout). With
the pre-copy the copy happens while the shard still serves, so it may be slow: one
piece of 256 KiB at a time kept other shards' p99 at 1.0-1.5x (three runs; 512 KiB
pieces, two in flight: 1.5-3.7x), for a move of 8-10 s instead of 6-7 s."""

PRECOPY_PAUSE_RATIO: Final = 1.0
"""After each piece of a pre-copy commits, the copy waits this many times as long as the
piece took before it proposes the next, so it holds the gaining group's log at most half
the time (and less when the group is busy, since pieces then take longer). Measured
(`bench/kv.py`, 100 MiB under workload A on 2 cores, once the request path had become
fast enough to keep the servers busy): without the pause the gaining group's p99 went
from 13-14 ms to 41-52 ms during the copy, other shards' p99 1.7-2.5x steady state;
with it 24-34 ms and 1.25-1.56x (five runs), the move 7-12 s instead of 4-8 s (pieces
go faster when they do not queue behind the group's writes); twice as long a pause:
1.1-1.3x, 9-10 s. A copy of the frozen shard is not paced: writes to it wait for it."""

MAX_CACHED_IMAGES: Final = 4
"""Exported images (bases, frozen copies, deltas) a source keeps while others pull them."""

PRECOPY_WAIT_S: Final = 10.0
"""How long a group waits, before it logs a configuration that moves shards away, for
each gaining group to hold a base of its shard (a pre-copy), unless the gaining group
says it is still copying (then up to :data:`PRECOPY_MAX_WAIT_S`). After it, the shard
freezes anyway: the gaining group finishes its copy (from the same base image, if the
source still has it) and the shard refuses writes for longer; a group that is down
cannot hold the cluster's configuration back for more than this."""

PRECOPY_MAX_WAIT_S: Final = 120.0
"""Longest a group waits for a pre-copy that is making progress (a large shard)."""

PRECOPY_PROGRESS_S: Final = 1.0
"""How often a group copying a base tells the source it is still at it; the source stops
waiting when it has not heard so for three times this."""

DELTA_POLL_S: Final = 0.05
"""How often a group holding a base asks each server of the source whether it has frozen
the shard: the longest this adds to a move's write pause."""

PROBE_TIMEOUT_S: Final = 1.0
"""One pre-copy probe (telling a source server that this group holds a base)."""

DELTA_WAIT_S: Final = 5.0
"""One round of asking for a delta; then the reconciler starts over (nothing is lost)."""

MAX_PRECOPY_MARKS: Final = 4096
"""Pre-copies this server remembers having heard of (the oldest are forgotten)."""


@dataclass(frozen=True, slots=True)
class _Image:
    data: bytes | bytearray
    crc: int
    version: int
    live: bool = False
    """Taken from the shard while it serves (see ``PullReply.live``)."""


class _BaseTooOldError(ShardwiseError):
    """The source cannot make a delta from this base: pull a new one."""


class ShardServer(ReplicaService[ShardGroupStateMachine]):
    def __init__(
        self,
        config: ReplicaConfig,
        gid: int,
        controllers: Mapping[str, Address],
        *,
        transport: Endpoint | None = None,
        storage: RaftStorage | None = None,
    ) -> None:
        state_machine = ShardGroupStateMachine(gid, config.data_dir / "shards")
        super().__init__(config, state_machine, gid, transport=transport, storage=storage)
        self.gid = gid
        self.controller = ControllerClient(
            controllers, config.secret, f"{config.node_id}/ctl", transport=self.transport
        )
        self._images: OrderedDict[tuple[ShardId, int, str], _Image] = OrderedDict()
        self._precopied: OrderedDict[tuple[ShardId, int], None] = OrderedDict()
        """(shard, configuration): a gaining group holds a base (it asked for a delta)."""
        self._copying: OrderedDict[tuple[ShardId, int], float] = OrderedDict()
        """(shard, configuration): when a gaining group last said it is copying a base."""
        self._freeze_wait: tuple[int, float] = (0, 0.0)
        """The configuration this leader waits to log for pre-copies, and since when."""
        self._precopy_tried = 0
        """The configuration this server last tried to pre-copy bases for."""
        self._stale_bases: dict[tuple[ShardId, int], int] = {}
        """Bases the source could not make a delta from, by shard and configuration."""
        self._routers: dict[tuple[str, ...], LeaderRouter] = {}
        self._pull_attempts = 0
        self._reconciler: asyncio.Task[None] | None = None
        # Requests served OK per shard, for STATUS (``shardwise status`` samples them
        # twice for a rate). Plain counters of this replica, not state-machine state: a
        # rate needs no agreement, and putting them in the log would cost a write per read.
        self.reads_served: Counter[ShardId] = Counter()
        self.writes_served: Counter[ShardId] = Counter()
        self.transport.serve(WRITE, self._write)
        self.transport.serve(READ, self._read)
        self.transport.serve(BATCH, self._batch)
        self.transport.serve(SCAN, self._scan)
        self.transport.serve(SQL_READ, self._sql_read)
        self.transport.serve(SQL_WRITE, self._sql_write)
        self.transport.serve(SQL_SCHEMA, self._sql_schema)
        self.transport.serve(PULL, self._pull)
        self.transport.serve(HANDED_OFF, self._handed_off)
        self.transport.serve(STATUS, self._status)

    async def start(self) -> None:
        await super().start()
        self._reconciler = asyncio.create_task(self._reconcile_forever(), name="reconciler")

    async def stop(self) -> None:
        await self.stop_tasks()
        await super().stop()
        self.state_machine.close()

    async def stop_tasks(self) -> None:
        """Stop the reconciler (a simulated crash stops the rest by hand)."""
        if self._reconciler is not None:
            self._reconciler.cancel()
            await asyncio.gather(self._reconciler, return_exceptions=True)

    # --- clients -------------------------------------------------------------------------

    async def _write(self, request: WriteRequest, context: CallContext) -> KVReply:
        try:
            check_op(request.op)
        except ShardLimitError as exc:
            return KVReply("ok", error=str(exc))
        command = encode(ClientOp(request.shard, request.client_id, request.seq, request.op))
        outcome = await through_host(self.host, self.host.propose(command, REQUEST_TIMEOUT_S))
        if outcome.value is None:
            return KVReply(outcome.status, leader=outcome.leader)
        return self._write_reply(request.shard, decode_result(outcome.value))

    def _write_reply(self, shard: ShardId, result: GroupResult) -> KVReply:
        if result.outcome != "ok":
            return KVReply("wrong_group", config_num=result.config_num)
        self.writes_served[shard] += 1
        return KVReply("ok", config_num=result.config_num, result=result.result)

    def _leader_hint(self) -> str | None:
        """For a read a follower served: the leader, so the client asks it next time (a
        follower's read costs a round trip to the leader besides the leader's own round)."""
        leader = self.host.node.leader
        return leader if leader != self.host.id else None

    async def _read(self, request: ReadRequest, context: CallContext) -> KVReply:
        shard, key = request.shard, request.key
        read = self.host.read(lambda sm: sm.read(shard, key), timeout_s=REQUEST_TIMEOUT_S)
        outcome = await through_host(self.host, read)
        if outcome.value is None:
            return KVReply(outcome.status, leader=outcome.leader)
        return self._read_reply(shard, outcome.value, self._leader_hint())

    def _read_reply(self, shard: ShardId, found: Read, leader: str | None) -> KVReply:
        if not found.serving:
            return KVReply("wrong_group", config_num=found.config_num)
        self.reads_served[shard] += 1
        return KVReply("ok", leader=leader, config_num=found.config_num, value=found.value)

    async def _batch(self, request: BatchRequest, context: CallContext) -> BatchReply:
        reads, writes = request.reads, request.writes
        if len(reads) > MAX_BATCH_OPS or len(writes) > MAX_BATCH_OPS:
            raise InvalidMessageError(
                f"a batch has at most {MAX_BATCH_OPS} reads and {MAX_BATCH_OPS} writes, "
                f"not {len(reads)} and {len(writes)}"
            )
        if not writes:
            return BatchReply(reads=await self._batch_reads(reads))
        if not reads:
            return BatchReply(writes=await self._batch_writes(writes))
        read_replies, write_replies = await asyncio.gather(
            self._batch_reads(reads), self._batch_writes(writes)
        )
        return BatchReply(read_replies, write_replies)

    async def _batch_reads(self, requests: Sequence[ReadRequest]) -> list[KVReply]:
        """Every read at one linearizable point: one ReadIndex round for all."""
        read = self.host.read(
            lambda sm: [sm.read(r.shard, r.key) for r in requests], timeout_s=REQUEST_TIMEOUT_S
        )
        outcome = await through_host(self.host, read)
        if outcome.value is None:
            return [KVReply(outcome.status, leader=outcome.leader)] * len(requests)
        leader = self._leader_hint()
        return [
            self._read_reply(request.shard, found, leader)
            for request, found in zip(requests, outcome.value, strict=True)
        ]

    async def _batch_writes(self, requests: Sequence[WriteRequest]) -> list[KVReply]:
        """The writes within the limits, as one log entry; each answered on its own."""
        replies: list[KVReply] = [KVReply("retry")] * len(requests)
        ops: list[ClientOp] = []
        positions: list[int] = []
        for position, request in enumerate(requests):
            try:
                check_op(request.op)
            except ShardLimitError as exc:
                replies[position] = KVReply("ok", error=str(exc))
                continue
            ops.append(ClientOp(request.shard, request.client_id, request.seq, request.op))
            positions.append(position)
        if not ops:
            return replies
        command = encode(ClientBatch(tuple(ops)))
        outcome = await through_host(self.host, self.host.propose(command, REQUEST_TIMEOUT_S))
        if outcome.value is None:
            for position in positions:
                replies[position] = KVReply(outcome.status, leader=outcome.leader)
            return replies
        results = decode_result(outcome.value).batch
        for position, result in zip(positions, results, strict=True):
            replies[position] = self._write_reply(requests[position].shard, result)
        return replies

    async def _scan(self, request: ScanRequest, context: CallContext) -> KVReply:
        if not 0 <= request.limit <= MAX_SCAN_ROWS:
            return KVReply("ok", error=f"scan limit {request.limit} is not in [0, {MAX_SCAN_ROWS}]")
        r = request
        read = self.host.read(
            lambda sm: sm.scan(r.shard, r.prefix, r.start, r.end, r.limit),
            timeout_s=REQUEST_TIMEOUT_S,
        )
        outcome = await through_host(self.host, read)
        if outcome.value is None:
            return KVReply(outcome.status, leader=outcome.leader)
        if not outcome.value.serving:
            return KVReply("wrong_group", config_num=outcome.value.config_num)
        self.reads_served[r.shard] += 1
        return KVReply(
            "ok",
            leader=self._leader_hint(),
            config_num=outcome.value.config_num,
            items=outcome.value.items,
        )

    # --- SQL ---------------------------------------------------------------------------

    async def _sql_read(self, request: SqlReadRequest, context: CallContext) -> SqlReply:
        problem = check_params(request.params)
        if problem or request.max_rows < 0:
            return SqlReply("ok", error=problem or f"max_rows {request.max_rows} is negative")
        r = request
        read = self.host.read(
            lambda sm: sm.sql_read(
                r.shard,
                catalog_num=r.catalog_num,
                schema=r.schema,
                sql=r.sql,
                params=r.params,
                max_rows=r.max_rows,
            ),
            timeout_s=REQUEST_TIMEOUT_S,
        )
        try:
            outcome = await through_host(self.host, read)
        except SqlError as exc:
            return SqlReply("ok", failure=_failure(exc))
        if outcome.value is None:
            return SqlReply(outcome.status, leader=outcome.leader)
        answer = outcome.value
        if not answer.serving:
            return SqlReply("wrong_group", config_num=answer.config_num)
        if not answer.schema:  # a schema verdict means the fragment did not run
            self.reads_served[r.shard] += 1
        return SqlReply("ok", config_num=answer.config_num, schema=answer.schema, rows=answer.rows)

    async def _sql_write(self, request: SqlWriteRequest, context: CallContext) -> SqlReply:
        problem = check_batch(request.statements)
        if problem:
            return SqlReply("ok", error=problem)
        r = request
        command = encode(
            SqlWrite(r.shard, r.client_id, r.seq, r.catalog_num, r.schema, r.statements)
        )
        outcome = await through_host(self.host, self.host.propose(command, REQUEST_TIMEOUT_S))
        if outcome.value is None:
            return SqlReply(outcome.status, leader=outcome.leader)
        result = decode_result(outcome.value)
        if result.outcome != "ok":
            return SqlReply("wrong_group", config_num=result.config_num)
        sql = result.sql
        if sql is None:  # the shard had applied this index before: cannot happen live
            return SqlReply("retry", leader=self.host.status().leader)
        failure = None
        if sql.error:
            failure = SqlFailure("constraint" if sql.constraint else "execution", sql.error)
        elif not sql.schema and not sql.stale:
            self.writes_served[r.shard] += 1
        return SqlReply(
            "ok",
            config_num=result.config_num,
            schema=sql.schema,
            failure=failure,
            rowcount=sql.rowcount,
            stale=sql.stale,
        )

    async def _sql_schema(self, request: SqlSchemaRequest, context: CallContext) -> SqlSchemaReply:
        keyspace = request.keyspace
        read = self.host.read(
            lambda sm: (sm.config.num, sm.schema_digest(keyspace)), timeout_s=REQUEST_TIMEOUT_S
        )
        outcome = await through_host(self.host, read)
        if outcome.value is None:
            return SqlSchemaReply(outcome.status, leader=outcome.leader)
        num, digest = outcome.value
        return SqlSchemaReply("ok", config_num=num, schema=digest)

    # --- other groups --------------------------------------------------------------------

    async def _pull(self, request: PullRequest, context: CallContext) -> PullReply:
        if context.peer_role is not WireRole.NODE:
            return PullReply("forbidden")  # whole shard images go only to other groups
        if self.host.status().halted:
            return PullReply("halted")
        if request.mode == "delta":
            key = (request.shard, request.config_num)
            if request.since < 0:  # still copying its base: only a sign of progress
                _remember(self._copying, key, asyncio.get_running_loop().time())
                return PullReply("not_ready")
            _remember(self._precopied, key, None)
        try:
            image = self._image(request)
        except _BaseTooOldError:
            return PullReply("too_old")
        if image is None:
            return PullReply("not_ready")
        size = max(1, min(request.max_bytes, PULL_CHUNK_BYTES))
        piece = bytes(memoryview(image.data)[request.offset : request.offset + size])
        return PullReply(
            "ok",
            total=len(image.data),
            crc=image.crc,
            data=piece,
            version=image.version,
            live=image.live,
        )

    def _image(self, request: PullRequest) -> _Image | None:
        """The image a pull asks for, made once and kept while it is being pulled (every
        piece must come from the same image): see :class:`PullRequest` for the modes."""
        sm, shard, num = self.state_machine, request.shard, request.config_num
        frozen = lambda: sm.frozen_store(shard, num)  # noqa: E731
        if request.mode == "frozen":
            return self._cached((shard, num, "frozen"), frozen, lambda s: s.export_buffer())
        if request.mode == "delta":
            delta = lambda s: _or_too_old(s.export_delta(request.since))  # noqa: E731
            return self._cached((shard, num, f"delta {request.since}"), frozen, delta)
        # A base: the frozen copy if there is one (nothing will change after it), unless
        # a copy taken while the shard served is being pulled already (offset > 0).
        live = (shard, num, "live")
        if request.offset > 0 and (image := self._lookup(live)) is not None:
            return image
        image = self._cached((shard, num, "frozen"), frozen, lambda s: s.export_buffer())
        if image is None:
            serving = lambda: sm.serving_store(shard)  # noqa: E731
            image = self._cached(live, serving, lambda s: s.export_buffer(), live=True)
        return image

    def _lookup(self, key: tuple[ShardId, int, str]) -> _Image | None:
        image = self._images.get(key)
        if image is not None:
            self._images.move_to_end(key)
        return image

    def _cached(
        self,
        key: tuple[ShardId, int, str],
        store: Callable[[], ShardStore | None],
        export: Callable[[ShardStore], bytes | bytearray],
        *,
        live: bool = False,
    ) -> _Image | None:
        image = self._lookup(key)
        if image is not None:
            return image
        source = store()
        if source is None:
            return None
        version = source.write_version  # before the export, which commits nothing new
        data = export(source)
        image = self._images[key] = _Image(data, crc32c.crc32c(data), version, live)
        while len(self._images) > MAX_CACHED_IMAGES:
            self._images.popitem(last=False)
        return image

    async def _handed_off(self, request: HandedOffRequest, context: CallContext) -> HandedOffReply:
        if context.peer_role is not WireRole.NODE:
            return HandedOffReply("forbidden")  # a client must not make a group drop data
        command = encode(HandOffDone(request.shard, request.config_num))
        outcome = await through_host(self.host, self.host.propose(command, REQUEST_TIMEOUT_S))
        if outcome.value is not None:
            for key in [k for k in self._images if k[:2] == (request.shard, request.config_num)]:
                del self._images[key]
        return HandedOffReply(outcome.status, leader=outcome.leader)

    # --- operators -----------------------------------------------------------------------

    async def _status(self, request: StatusRequest, context: CallContext) -> StatusReply:
        s = self.host.status()
        sm = self.state_machine
        shards = [
            ShardInfo(
                shard,
                record.state.value,
                record.store.count() if record.store is not None else 0,
                record.store.size_bytes() if record.store is not None else 0,
                reads=self.reads_served[shard],
                writes=self.writes_served[shard],
            )
            for shard, record in sm.held()
        ]
        return StatusReply(
            **replica_status_fields(s), gid=self.gid, config_num=sm.config.num, shards=shards
        )

    # --- the reconciler ------------------------------------------------------------------

    async def _reconcile_forever(self) -> None:
        await asyncio.gather(
            self._while_leader(self._advance, "advance"),
            self._while_leader(self._confirm_hand_offs, "confirm hand-offs"),
        )

    async def _while_leader(self, step: Callable[[], Awaitable[bool]], what: str) -> None:
        """Run ``step`` over and over while this replica leads; pause when it did nothing
        or failed. A failure is logged and retried: every step is safe to repeat."""
        while True:
            busy = False
            try:
                if self.host.status().role is Role.LEADER:
                    busy = await step()
            except asyncio.CancelledError:
                raise
            except (ShardwiseError, NetError) as exc:
                logger.info("%s: %s: %s", self.config.node_id, what, exc)
            except Exception:
                logger.exception("%s: %s crashed", self.config.node_id, what)
            if not busy:
                await asyncio.sleep(IDLE_POLL_S)

    async def _advance(self) -> bool:
        """Pull what the group is gaining; once it has it all, log the next
        configuration. Whether there may be more to do at once."""
        sm = self.state_machine
        if self._stale_bases:  # only the configuration being pulled matters
            old = [key for key in self._stale_bases if key[1] < sm.config.num]
            for key in old:
                del self._stale_bases[key]
        pulls = sm.pulls()
        if pulls:
            results = await asyncio.gather(
                *(self._fetch_and_install(p) for p in pulls), return_exceptions=True
            )
            for failure in results:
                if isinstance(failure, BaseException):
                    if not isinstance(failure, Exception):
                        raise failure
                    logger.info("%s: %s", self.config.node_id, failure)
            return sm.finished()
        num = sm.config.num
        latest = await self.controller.watch(newer_than=num, wait_s=WATCH_S)
        if latest.num <= num or self.host.status().role is not Role.LEADER:
            return latest.num > num
        following = latest if latest.num == num + 1 else await self.controller.query(num + 1)
        if following.num == num + 1:
            await self._precopy(following)
            if not self._may_freeze(following):
                return False
            await self._propose(Reconfigure(following))
        return True

    async def _precopy(self, new: Configuration) -> None:
        """Before the group moves to ``new``: take a base of every shard it gains there
        from another group, and tell that group it has one. (Before, not after: two
        groups that swap shards would otherwise each wait for the other to move first.)
        A failure is only logged: the pull after ``new`` takes a base anyway."""
        sm = self.state_machine
        gains = [
            (m.shard, sm.config.groups.get(m.previous, ()))
            for m in moves(sm.config, new, self.gid)
            if m.owner == self.gid and m.previous != NO_GROUP
        ]
        missing = [(s, g) for s, g in gains if self._base(s, new.num) is None]
        if self._precopy_tried != new.num:  # once: a source that is down costs one try
            self._precopy_tried = new.num
            copies = [self._copy_base(shard, new.num, servers) for shard, servers in missing]
            for failure in await asyncio.gather(*copies, return_exceptions=True):
                if isinstance(failure, BaseException):
                    if not isinstance(failure, Exception):
                        raise failure
                    logger.info("%s: pre-copy: %s", self.config.node_id, failure)
        probes: list[Awaitable[PullReply | None]] = []
        for shard, servers in gains:
            base = self._base(shard, new.num)
            if base is not None:
                request = PullRequest(shard, new.num, max_bytes=1, mode="delta", since=base)
                probes.extend(self._ask(server, request, PROBE_TIMEOUT_S) for server in servers)
        await asyncio.gather(*probes)

    def _may_freeze(self, new: Configuration) -> bool:
        """Whether to log ``new`` now: every group gaining a shard from this one holds a
        base of it, or :data:`PRECOPY_WAIT_S` has passed."""
        sm = self.state_machine
        waiting = [
            m.shard
            for m in moves(sm.config, new, self.gid)
            if m.previous == self.gid
            and m.owner != NO_GROUP
            and (m.shard, new.num) not in self._precopied
        ]
        if not waiting:
            return True
        now = asyncio.get_running_loop().time()
        if self._freeze_wait[0] != new.num:
            self._freeze_wait = (new.num, now)
        waited = now - self._freeze_wait[1]
        if waited < PRECOPY_WAIT_S:
            return False
        heard = [self._copying.get((shard, new.num), -math.inf) for shard in waiting]
        if waited < PRECOPY_MAX_WAIT_S and now - max(heard) < 3 * PRECOPY_PROGRESS_S:
            return False  # a target is still copying: freezing now would lengthen its pause
        logger.info(
            "%s: configuration %d: no pre-copy of %s after %.0f s; freezing anyway",
            self.config.node_id,
            new.num,
            ", ".join(map(str, waiting)),
            waited,
        )
        return True

    def _base(self, shard: ShardId, config_num: int) -> int | None:
        """The write version of the group's usable base of ``shard`` for ``config_num``."""
        base = self.state_machine.base_version(shard, config_num)
        if base is None or self._stale_bases.get((shard, config_num)) == base:
            return None
        return base

    async def _confirm_hand_offs(self) -> bool:
        """Tell each source group its frozen copy was installed here. Separate from
        :meth:`_advance`: a source that is down must not hold up new configurations."""
        owed = self.state_machine.owed_acks()
        results = await asyncio.gather(
            *(self._confirm(o.shard, o.config_num, o.servers) for o in owed),
            return_exceptions=True,
        )
        for failure in results:
            if isinstance(failure, BaseException):
                if not isinstance(failure, Exception):
                    raise failure
                logger.info("%s: %s", self.config.node_id, failure)
        return False

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
        await self._stream_in(shard, num, server, first, request)
        if not await self._propose(InstallDelta(shard, num, first.total, first.crc, base)):
            self._stale_bases[(shard, num)] = base
            raise ShardwiseError(f"the delta for {shard} was refused; pulling a new base")
        logger.info(
            "%s: installed %s from %s: base %.2f s, waited for the freeze %.2f s, "
            "delta of %d bytes installed %.2f s after it",
            self.config.node_id,
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
        server, first = await self._first_piece(shard, config_num, servers, request)
        progress = asyncio.create_task(self._tell_copying(shard, config_num, servers))
        try:
            await self._stream_in(shard, config_num, server, first, request)
        finally:
            progress.cancel()
        command = InstallBase(shard, config_num, first.total, first.crc, first.version)
        if not await self._propose(command):
            raise ShardwiseError(f"the base of {shard} was refused")
        self._stale_bases.pop((shard, config_num), None)
        return first.version

    async def _tell_copying(self, shard: ShardId, config_num: int, servers: Sequence[str]) -> None:
        """While a base is being copied: tell every server of the source, every
        :data:`PRECOPY_PROGRESS_S`, so it keeps waiting for it (see ``_may_freeze``)."""
        request = PullRequest(shard, config_num, mode="delta", since=-1)
        while True:
            await asyncio.gather(*(self._ask(s, request, PROBE_TIMEOUT_S) for s in servers))
            await asyncio.sleep(PRECOPY_PROGRESS_S)

    async def _await_delta(self, pull: Pull, since: int) -> tuple[str, PullReply]:
        """The first piece of the delta since ``since`` and the server that gave it: asks
        every server of the source every :data:`DELTA_POLL_S` until one has frozen the
        shard (for at most :data:`DELTA_WAIT_S`)."""
        request = PullRequest(pull.shard, pull.config_num, mode="delta", since=since)
        found: asyncio.Future[tuple[str, PullReply]] = asyncio.get_running_loop().create_future()

        async def poll(server: str) -> None:
            while not found.done():
                reply = await self._ask(server, request, FIRST_PULL_TIMEOUT_S)
                if found.done():
                    return
                if reply is not None and reply.status == "ok":
                    found.set_result((server, reply))
                elif reply is not None and reply.status == "too_old":
                    self._stale_bases[(pull.shard, pull.config_num)] = since
                    found.set_exception(_BaseTooOldError(f"{server} has no delta of {pull.shard}"))
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

    async def _ask(self, server: str, request: PullRequest, timeout_s: float) -> PullReply | None:
        self.transport.set_peer(server, server_address(server))
        try:
            return await self.transport.call(server, PULL, request, timeout_s=timeout_s)
        except NetError:
            return None

    async def _stream_in(
        self, shard: ShardId, config_num: int, server: str, first: PullReply, request: PullRequest
    ) -> None:
        """Log the image whose first piece is ``first`` in :class:`InstallChunk` pieces,
        each proposed as soon as it arrives (at most :data:`PROPOSE_WINDOW` in flight), so
        fetching and replicating overlap; the rest comes from the same ``server``. A base
        taken while the shard still serves at the source (``first.live``: nothing waits
        for it) pauses after each piece (:data:`PRECOPY_PAUSE_RATIO`)."""
        total, crc, paced = first.total, first.crc, first.live
        loop = asyncio.get_running_loop()
        in_flight: deque[tuple[float, asyncio.Task[bool]]] = deque()
        try:
            offset, data = 0, first.data
            while True:
                for start in range(0, len(data), INSTALL_CHUNK_BYTES):
                    if len(in_flight) >= PROPOSE_WINDOW:
                        proposed, oldest = in_flight.popleft()
                        if not await oldest:
                            raise ShardwiseError(f"install of {shard} was interrupted")
                        if paced:  # let the group's own writes have the log too
                            await asyncio.sleep(PRECOPY_PAUSE_RATIO * (loop.time() - proposed))
                    piece = data[start : start + INSTALL_CHUNK_BYTES]
                    chunk = InstallChunk(shard, config_num, offset + start, piece)
                    in_flight.append((loop.time(), asyncio.ensure_future(self._propose(chunk))))
                offset += len(data)
                if offset >= total:
                    break
                data = await self._next_piece(server, replace(request, offset=offset), crc)
            if total == 0:
                empty = InstallChunk(shard, config_num, 0, b"")
                in_flight.append((loop.time(), asyncio.ensure_future(self._propose(empty))))
            if not all(await asyncio.gather(*(task for _, task in in_flight))):
                raise ShardwiseError(f"install of {shard} was interrupted")
        finally:
            for _, task in in_flight:
                task.cancel()  # only those not done: a failed pull leaves none behind

    async def _first_piece(
        self, shard: ShardId, config_num: int, servers: Sequence[str], request: PullRequest
    ) -> tuple[str, PullReply]:
        """The first piece of the image and the server that gave it; every later piece
        comes from that server (replicas' files hold the same rows but need not be
        byte-identical)."""
        # Start at a different server each attempt: a dead one (whose calls only time
        # out) must not be first every time.
        self._pull_attempts += 1
        start = self._pull_attempts % max(1, len(servers))
        for server in (*servers[start:], *servers[:start]):
            first = await self._ask(server, request, FIRST_PULL_TIMEOUT_S)
            if first is not None and first.status == "ok":
                return server, first
        raise ShardwiseError(
            f"no server of {list(servers)} has {shard} ready for configuration {config_num} yet"
        )

    async def _next_piece(self, server: str, request: PullRequest, crc: int) -> bytes:
        reply = await self.transport.call(server, PULL, request, timeout_s=PULL_CALL_TIMEOUT_S)
        if reply.status != "ok" or reply.crc != crc or not reply.data:
            raise ShardwiseError(f"{server} stopped serving {request.shard} mid-pull")
        return reply.data

    async def _confirm(self, shard: ShardId, config_num: int, servers: tuple[str, ...]) -> None:
        router = self._routers.get(servers)
        if router is None:
            for server in servers:
                self.transport.set_peer(server, server_address(server))
            router = self._routers[servers] = LeaderRouter(self.transport, servers)
        await router.call(HANDED_OFF, HandedOffRequest(shard, config_num), REQUEST_TIMEOUT_S)
        await self._propose(AckDelivered(shard, config_num))

    async def _propose(self, command: Command) -> bool:
        """Log ``command``; whether it applied (False: every replica ignored it)."""
        result = decode_result(await self.host.propose(encode(command), REQUEST_TIMEOUT_S))
        return result.outcome == "ok"


_K = TypeVar("_K")
_V = TypeVar("_V")


def _remember(marks: OrderedDict[_K, _V], key: _K, value: _V) -> None:
    """Record ``key`` as the newest of ``marks``, forgetting the oldest past
    :data:`MAX_PRECOPY_MARKS`."""
    marks[key] = value
    marks.move_to_end(key)
    while len(marks) > MAX_PRECOPY_MARKS:
        marks.popitem(last=False)


def _or_too_old(delta: bytes | None) -> bytes:
    if delta is None:
        raise _BaseTooOldError("no delta from that base")
    return delta


def _failure(exc: SqlError) -> SqlFailure:
    """A shard's SQL error as it travels (the client raises the same class again)."""
    if isinstance(exc, SqlLimitError):
        return SqlFailure(exc.code, exc.detail, exc.limit, exc.value)
    if isinstance(exc, SqlExecutionError):
        return SqlFailure(exc.code, exc.detail)
    return SqlFailure(exc.code, str(exc))


def main(argv: Sequence[str] | None = None) -> int:
    parser = replica_arg_parser("python -m shardwise.shardserver", __doc__ or "")
    parser.add_argument("--group", required=True, type=int, help="this server's replica group id")
    parser.add_argument(
        "--controller",
        action="append",
        default=[],
        metavar="ID=HOST:PORT",
        help="a replica of the shard controller (repeat for each)",
    )
    args = parser.parse_args(argv)
    config = replica_config(parser, args)
    controllers = parse_peers(parser, args.controller, "--controller")
    if not controllers:
        parser.error("name the controller's replicas with --controller ID=HOST:PORT")
    if args.group <= 0:
        parser.error("--group takes a positive group id")
    return run_main(lambda c: ShardServer(c, args.group, controllers), config)
