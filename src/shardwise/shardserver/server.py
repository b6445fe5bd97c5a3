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

1. pull every shard the group is gaining from the group that lost it (any of its servers
   that has frozen it), check the image's checksum, put it into the log in pieces and
   then the install (each replica rebuilds the same bytes, and serves the shard at once);
2. tell each source group that its frozen copy was installed, so it deletes it, and log
   that the source heard;
3. when nothing is being pulled, fetch configuration n+1 from the controller and log it.

Every command it logs is checked again when it applies, so a stale leader, a repeat or a
crash between steps does no harm: the next leader sees the same state and carries on.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter, OrderedDict, deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

import crc32c

from shardwise.controller.client import ControllerClient
from shardwise.controller.model import ShardId
from shardwise.errors import (
    NetError,
    ShardLimitError,
    ShardwiseError,
    SqlError,
    SqlExecutionError,
    SqlLimitError,
)
from shardwise.net.endpoint import Endpoint
from shardwise.net.links import Address
from shardwise.net.rpc import CallContext
from shardwise.net.wire import Role as WireRole
from shardwise.raft.ready import Role
from shardwise.routing import LeaderRouter, replica_status_fields
from shardwise.service import (
    REQUEST_TIMEOUT_S,
    ReplicaConfig,
    ReplicaService,
    parse_peers,
    replica_arg_parser,
    replica_config,
    run_main,
    through_host,
)
from shardwise.shardserver.commands import (
    INSTALL_CHUNK_BYTES,
    AckDelivered,
    ClientOp,
    Command,
    HandOffDone,
    InstallChunk,
    InstallShard,
    Reconfigure,
    SqlWrite,
    decode_result,
    encode,
)
from shardwise.shardserver.protocol import (
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
from shardwise.shardserver.statemachine import Pull, ShardGroupStateMachine
from shardwise.shardserver.store import MAX_SCAN_ROWS, check_op
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

PROPOSE_WINDOW: Final = 2
"""Install pieces in flight in the log at once. Measured (`bench/kv.py`, a 100 MiB move
under load on 2 cores): 16 in flight made other shards' p99 4.7x its steady state and
the move took 6.1 s; 4: 2.5x, 6.2 s; 2: 1.0-1.1x and 5.3-5.4 s. More in flight only
makes the copy fight the group's other traffic for the CPU; it does not go faster."""

MAX_CACHED_IMAGES: Final = 4
"""Exported images of frozen shards a source keeps while others pull them."""


@dataclass(frozen=True, slots=True)
class _Image:
    data: bytes
    crc: int


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
        self._images: OrderedDict[tuple[ShardId, int], _Image] = OrderedDict()
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
        result = decode_result(outcome.value)
        if result.outcome != "ok":
            return KVReply("wrong_group", config_num=result.config_num)
        self.writes_served[request.shard] += 1
        return KVReply("ok", config_num=result.config_num, result=result.result)

    async def _read(self, request: ReadRequest, context: CallContext) -> KVReply:
        shard, key = request.shard, request.key
        read = self.host.read(lambda sm: sm.read(shard, key), timeout_s=REQUEST_TIMEOUT_S)
        outcome = await through_host(self.host, read)
        if outcome.value is None:
            return KVReply(outcome.status, leader=outcome.leader)
        if not outcome.value.serving:
            return KVReply("wrong_group", config_num=outcome.value.config_num)
        self.reads_served[shard] += 1
        return KVReply("ok", config_num=outcome.value.config_num, value=outcome.value.value)

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
        return KVReply("ok", config_num=outcome.value.config_num, items=outcome.value.items)

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
        image = self._image(request.shard, request.config_num)
        if image is None:
            return PullReply("not_ready")
        size = max(1, min(request.max_bytes, PULL_CHUNK_BYTES))
        piece = image.data[request.offset : request.offset + size]
        return PullReply("ok", total=len(image.data), crc=image.crc, data=piece)

    def _image(self, shard: ShardId, config_num: int) -> _Image | None:
        """The export of a frozen shard, made once and kept while it is being pulled (a
        frozen shard never changes, so every piece comes from the same image)."""
        key = (shard, config_num)
        image = self._images.get(key)
        if image is not None:
            self._images.move_to_end(key)
            return image
        store = self.state_machine.frozen_store(shard, config_num)
        if store is None:
            return None
        data = store.export()
        image = self._images[key] = _Image(data, crc32c.crc32c(data))
        while len(self._images) > MAX_CACHED_IMAGES:
            self._images.popitem(last=False)
        return image

    async def _handed_off(self, request: HandedOffRequest, context: CallContext) -> HandedOffReply:
        if context.peer_role is not WireRole.NODE:
            return HandedOffReply("forbidden")  # a client must not make a group drop data
        command = encode(HandOffDone(request.shard, request.config_num))
        outcome = await through_host(self.host, self.host.propose(command, REQUEST_TIMEOUT_S))
        if outcome.value is not None:
            self._images.pop((request.shard, request.config_num), None)
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
            await self._propose(Reconfigure(following))
        return True

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
        """Stream the image from the source into the log: each piece is proposed as soon
        as it arrives (at most :data:`PROPOSE_WINDOW` in flight), so fetching and
        replicating overlap; then the install, which every replica checks against the
        image's CRC32C before it serves the shard."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        server, first = await self._first_piece(pull)
        total, crc = first.total, first.crc
        in_flight: deque[asyncio.Task[bool]] = deque()
        try:
            offset, data = 0, first.data
            while True:
                for start in range(0, len(data), INSTALL_CHUNK_BYTES):
                    if len(in_flight) >= PROPOSE_WINDOW and not await in_flight.popleft():
                        raise ShardwiseError(f"install of {pull.shard} was interrupted")
                    piece = data[start : start + INSTALL_CHUNK_BYTES]
                    chunk = InstallChunk(pull.shard, pull.config_num, offset + start, piece)
                    in_flight.append(asyncio.ensure_future(self._propose(chunk)))
                offset += len(data)
                if offset >= total:
                    break
                data = await self._next_piece(server, pull, offset, crc)
            if total == 0:
                empty = InstallChunk(pull.shard, pull.config_num, 0, b"")
                in_flight.append(asyncio.ensure_future(self._propose(empty)))
            if not all(await asyncio.gather(*in_flight)):
                raise ShardwiseError(f"install of {pull.shard} was interrupted")
        finally:
            for task in in_flight:
                task.cancel()  # only those not done: a failed pull leaves none behind
        streamed = loop.time()
        if not await self._propose(InstallShard(pull.shard, pull.config_num, total, crc)):
            raise ShardwiseError(f"install of {pull.shard} was refused (bad image?)")
        logger.info(
            "%s: installed %s (%d bytes from %s): streamed in %.2f s, installed in %.2f s",
            self.config.node_id,
            pull.shard,
            total,
            server,
            streamed - started,
            loop.time() - streamed,
        )

    async def _first_piece(self, pull: Pull) -> tuple[str, PullReply]:
        """The first piece of the image and the server that gave it; every later piece
        comes from that server (replicas' files hold the same rows but need not be
        byte-identical)."""
        # Start at a different server each attempt: a dead one (whose calls only time
        # out) must not be first every time.
        self._pull_attempts += 1
        start = self._pull_attempts % max(1, len(pull.servers))
        for server in (*pull.servers[start:], *pull.servers[:start]):
            self.transport.set_peer(server, server_address(server))
            try:
                first = await self.transport.call(
                    server,
                    PULL,
                    PullRequest(pull.shard, pull.config_num),
                    timeout_s=FIRST_PULL_TIMEOUT_S,
                )
            except NetError:
                continue
            if first.status == "ok":
                return server, first
        raise ShardwiseError(
            f"no server of {list(pull.servers)} has {pull.shard} ready for configuration "
            f"{pull.config_num} yet"
        )

    async def _next_piece(self, server: str, pull: Pull, offset: int, crc: int) -> bytes:
        reply = await self.transport.call(
            server,
            PULL,
            PullRequest(pull.shard, pull.config_num, offset=offset),
            timeout_s=PULL_CALL_TIMEOUT_S,
        )
        if reply.status != "ok" or reply.crc != crc or not reply.data:
            raise ShardwiseError(f"{server} stopped serving {pull.shard} mid-pull")
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
