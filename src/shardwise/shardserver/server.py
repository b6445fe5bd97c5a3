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

Shard moves live in ``migration/``: the giving side answers ``PULL`` and ``HANDED_OFF``
here through :class:`~shardwise.shardserver.migration.source.ShardSource`, and one
background task, the :class:`~shardwise.shardserver.migration.reconciler.Reconciler`,
pulls what the group gains and moves it to new configurations while it leads.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

from shardwise.controller.client import ControllerClient
from shardwise.errors import (
    ShardLimitError,
    ShardwiseError,
)
from shardwise.model.access import Privilege
from shardwise.model.config import Configuration, ShardId
from shardwise.model.kv import MAX_SCAN_ROWS, Key, check_op
from shardwise.model.txn import txn_tag
from shardwise.net.endpoint import Endpoint
from shardwise.net.links import Address
from shardwise.net.rpc import CallContext
from shardwise.net.wire import PeerRole
from shardwise.service import (
    REQUEST_TIMEOUT_S,
    ReplicaConfig,
    ReplicaService,
    replica_status_fields,
    through_host,
)
from shardwise.shardserver.access import AccessGuard
from shardwise.shardserver.batches import leader_reads, serve_batch
from shardwise.shardserver.checker import CHECK_INTERVAL_S, Checker
from shardwise.shardserver.checks import read_fault
from shardwise.shardserver.commands import (
    ClientOp,
    GroupResult,
    HandOffDone,
    decode_result,
    encode,
)
from shardwise.shardserver.group_reads import serve_group_read
from shardwise.shardserver.migration.arrivals import Incoming
from shardwise.shardserver.migration.reconciler import Reconciler
from shardwise.shardserver.migration.source import ShardSource
from shardwise.shardserver.protocol import (
    BATCH,
    CHECK,
    DIGESTS,
    HANDED_OFF,
    PULL,
    READ,
    SCAN,
    SQL_GROUP_READ,
    SQL_READ,
    SQL_SCHEMA,
    SQL_WRITE,
    STATUS,
    WRITE,
    ArrivalInfo,
    HandedOffReply,
    HandedOffRequest,
    KVReply,
    PullReply,
    PullRequest,
    ReadRequest,
    ScanRequest,
    ShardInfo,
    SqlReply,
    SqlSchemaReply,
    SqlSchemaRequest,
    StatusReply,
    StatusRequest,
    WriteRequest,
)
from shardwise.shardserver.sql_serving import serve_sql_read, serve_sql_write
from shardwise.shardserver.sqlshard import (
    MAX_WRITE_SECONDS,
    MAX_WRITE_STEPS,
)
from shardwise.shardserver.statemachine import Read, ShardGroupStateMachine, SqlRead
from shardwise.shardserver.txn.handlers import TxnHandlers
from shardwise.sql.shipped import ShippedTable
from shardwise.storage.interface import RaftStorage

logger = logging.getLogger(__name__)

MAX_CACHED_CONFIGS: Final = 16
"""Configurations kept to check pulls against (each is immutable once made; a move
names one of the last few)."""

PULL_CHECK_TIMEOUT_S: Final = 2.0
"""How long checking a pull's configuration with the controller may take (less than the
puller's own call timeout, so it hears ``forbidden`` and asks again)."""


class ShardServer(ReplicaService[ShardGroupStateMachine]):
    def __init__(
        self,
        config: ReplicaConfig,
        gid: int,
        controllers: Mapping[str, Address],
        *,
        transport: Endpoint | None = None,
        storage: RaftStorage | None = None,
        sql_write_max_steps: int = MAX_WRITE_STEPS,
        sql_write_max_seconds: float = MAX_WRITE_SECONDS,
        check_interval_s: float = CHECK_INTERVAL_S,
    ) -> None:
        if sql_write_max_steps < 1:
            raise ValueError(f"a SQL write's step limit is positive, not {sql_write_max_steps}")
        if not sql_write_max_seconds > 0:
            raise ValueError(f"a SQL write's time limit is positive, not {sql_write_max_seconds}")
        self.sql_write_max_steps = sql_write_max_steps
        self.sql_write_max_seconds = sql_write_max_seconds
        """How long the leader's trial of a SQL write may take before it is refused
        (``sqlshard.time_trial``): not logged, only the leader's own check."""
        """The work limit this server writes into the SQL writes it logs as leader (every
        replica applies the limit in the entry, so they need not agree on the option)."""
        state_machine = ShardGroupStateMachine(gid, config.data_dir / "shards")
        state_machine.checks.fault = read_fault(config.data_dir)
        super().__init__(config, state_machine, gid, transport=transport, storage=storage)
        self.gid = gid
        self.controller = ControllerClient(
            controllers, config.secret, f"{config.node_id}/ctl", transport=self.transport
        )
        self.source = ShardSource(gid, config.node_id, state_machine)
        self.access = AccessGuard()
        """Users and their grants, as the controller keeps them (checked at the door)."""
        set_user_lookup = getattr(self.transport, "set_user_lookup", None)
        if set_user_lookup is not None:  # a real transport: clients may log in as users
            set_user_lookup(self.access.find_user)
        self._access_watch: asyncio.Task[None] | None = None
        self._pull_configs: dict[int, Configuration] = {}
        """Configurations fetched to check pulls against, by number (``_gains``)."""
        self.reconciler = Reconciler(
            gid,
            config.node_id,
            host=self.host,
            transport=self.transport,
            controller=self.controller,
            source=self.source,
        )
        self._reconciler: asyncio.Task[None] | None = None
        self.checker = Checker(
            gid,
            config.node_id,
            self.host,
            transport=self.transport,
            checks=state_machine.checks,
            replicas=lambda: list(config.peers),
            interval_s=check_interval_s,
        )
        self._checking: list[asyncio.Task[None]] = []
        # Requests served OK per shard, for STATUS (``shardwise status`` samples them
        # twice for a rate). Plain counters of this replica, not state-machine state: a
        # rate needs no agreement, and putting them in the log would cost a write per read.
        self.reads_served: Counter[ShardId] = Counter()
        self.writes_served: Counter[ShardId] = Counter()
        self.transport.serve(WRITE, self._write)
        self.transport.serve(READ, self._read)
        self.transport.serve(BATCH, lambda r, c: serve_batch(self, r, c))
        self.transport.serve(SCAN, self._scan)
        self.transport.serve(SQL_READ, lambda r, c: serve_sql_read(self, r, c))
        self.transport.serve(SQL_GROUP_READ, lambda r, c: serve_group_read(self, r, c))
        self.transport.serve(SQL_WRITE, lambda r, c: serve_sql_write(self, r, c))
        self.transport.serve(SQL_SCHEMA, self._sql_schema)
        self.transport.serve(PULL, self._pull)
        self.transport.serve(HANDED_OFF, self._handed_off)
        self.transport.serve(STATUS, self._status)
        self.transport.serve(CHECK, self.checker.serve_check)
        self.transport.serve(DIGESTS, self.checker.serve_digests)
        # (With the recovery of transactions whose client went away.)
        self.txns = TxnHandlers(
            self.host,
            self.transport,
            self.controller,
            self.access,
            self.sql_denied,
            sql_write_max_steps=sql_write_max_steps,
            sql_write_max_seconds=sql_write_max_seconds,
        )

    async def start(self) -> None:
        await super().start()
        self._reconciler = asyncio.create_task(self.reconciler.run_forever(), name="reconciler")
        self._access_watch = asyncio.create_task(
            self.access.follow(self.controller), name="access-watch"
        )
        self._checking = [
            asyncio.create_task(self.checker.run_forever(), name="periodic-checks"),
            asyncio.create_task(self.checker.watch_halt(), name="halt-watch"),
            asyncio.create_task(self.txns.recovery.run_forever(), name="txn-recovery"),
        ]

    async def stop(self) -> None:
        await self.stop_tasks()
        await super().stop()
        self.state_machine.close()

    async def stop_tasks(self) -> None:
        """Stop the reconciler (a simulated crash stops the rest by hand)."""
        tasks = [t for t in (self._reconciler, self._access_watch) if t is not None]
        tasks += self._checking
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # --- clients -------------------------------------------------------------------------

    def kv_refusal(self, context: CallContext, need: Privilege, shard: ShardId) -> KVReply | None:
        denied = self.access.kv_denied(context, need, shard.keyspace)
        return KVReply("ok", error=denied, denied=True) if denied else None

    def sql_denied(
        self,
        context: CallContext,
        shard: ShardId,
        statements: Iterable[tuple[str, Any]],
        *,
        writing: bool = False,
        shipped: Sequence[ShippedTable] = (),
    ) -> SqlReply | None:
        if context.user is None:
            return None
        config = self.state_machine.config
        denied = self.access.sql_denied(
            context,
            shard.keyspace,
            config.tables,
            config.catalog_changed_at,
            statements,
            writing=writing,
            shipped=shipped,
        )
        return SqlReply("ok", error=denied, denied=True) if denied else None

    async def _write(self, request: WriteRequest, context: CallContext) -> KVReply:
        if denied := self.kv_refusal(context, Privilege.WRITE, request.shard):
            return denied
        try:
            check_op(request.op)
        except ShardLimitError as exc:
            return KVReply("ok", error=str(exc))
        command = encode(ClientOp(request.shard, request.client_id, request.seq, request.op))
        outcome = await through_host(self.host, self.host.propose(command, REQUEST_TIMEOUT_S))
        if outcome.value is None:
            return KVReply(outcome.status, leader=outcome.leader)
        return self.write_reply(request.shard, decode_result(outcome.value))

    def write_reply(self, shard: ShardId, result: GroupResult) -> KVReply:
        if result.outcome == "failed":
            return KVReply("ok", config_num=result.config_num, error=result.error)
        if result.outcome != "ok":
            return KVReply("wrong_group", config_num=result.config_num)
        if result.result is not None and result.result.locked:
            tag = txn_tag(result.result.locked)
            return KVReply("locked", config_num=result.config_num, locked_by=tag)
        self.writes_served[shard] += 1
        return KVReply("ok", config_num=result.config_num, result=result.result)

    def leader_hint(self) -> str | None:
        """For a read a follower served: the leader, so the client asks it next time (a
        follower's read costs a round trip to the leader besides the leader's own round)."""
        leader = self.host.node.leader
        return leader if leader != self.host.id else None

    async def _read(self, request: ReadRequest, context: CallContext) -> KVReply:
        if denied := self.kv_refusal(context, Privilege.READ, request.shard):
            return denied
        if request.versioned and request.validated:
            return (await leader_reads(self, [request]))[0]
        shard, key = request.shard, request.key
        look = ShardGroupStateMachine.versioned_read if request.versioned else _plain_read
        read = self.host.read(lambda sm: look(sm, shard, key), timeout_s=REQUEST_TIMEOUT_S)
        outcome = await through_host(self.host, read)
        if outcome.value is None:
            return KVReply(outcome.status, leader=outcome.leader)
        return self.read_reply(shard, outcome.value, self.leader_hint())

    def read_reply(self, shard: ShardId, found: Read, leader: str | None) -> KVReply:
        if not found.serving:
            return KVReply("wrong_group", config_num=found.config_num)
        if found.locked:
            return KVReply("locked", config_num=found.config_num, locked_by=txn_tag(found.locked))
        self.reads_served[shard] += 1
        return KVReply(
            "ok",
            leader=leader,
            config_num=found.config_num,
            value=found.value,
            version=found.version,
        )

    async def _scan(self, request: ScanRequest, context: CallContext) -> KVReply:
        if denied := self.kv_refusal(context, Privilege.READ, request.shard):
            return denied
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
        found = outcome.value
        if not found.serving or found.locked:
            return self.read_reply(r.shard, found, None)
        self.reads_served[r.shard] += 1
        return KVReply(
            "ok",
            leader=self.leader_hint(),
            config_num=outcome.value.config_num,
            items=outcome.value.items,
        )

    # --- SQL ---------------------------------------------------------------------------

    def sql_read_reply(self, shard: ShardId, answer: SqlRead) -> SqlReply:
        """A shard's answer to a read fragment, as its reply."""
        if not answer.serving:
            return SqlReply("wrong_group", config_num=answer.config_num)
        if answer.locked:
            tag = txn_tag(answer.locked)
            return SqlReply("locked", config_num=answer.config_num, locked_by=tag)
        if not answer.schema:  # a schema verdict means the fragment did not run
            self.reads_served[shard] += 1
        return SqlReply("ok", config_num=answer.config_num, schema=answer.schema, rows=answer.rows)

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
        if context.peer_role is not PeerRole.NODE:
            return PullReply("forbidden")  # whole shard images go only to other groups
        if not await self._gains(context.peer_id, request.shard, request.config_num):
            return PullReply("forbidden")  # ... and only to the group that gains the shard
        if self.host.status().halted:
            return PullReply("halted")
        return self.source.answer(request)

    async def _gains(self, node: str, shard: ShardId, config_num: int) -> bool:
        """Whether ``node`` is a server of the group that gains ``shard`` in configuration
        ``config_num`` (being a cluster node is not enough to read another group's data)."""
        config = self.state_machine.config
        if config.num != config_num:
            config = self._pull_configs.get(config_num) or config
        if config.num != config_num:
            try:
                config = await self.controller.query(config_num, deadline_s=PULL_CHECK_TIMEOUT_S)
            except ShardwiseError:
                return False  # cannot tell now: the puller asks again
            if config.num != config_num:
                return False
            if len(self._pull_configs) >= MAX_CACHED_CONFIGS:
                self._pull_configs.pop(next(iter(self._pull_configs)))
            self._pull_configs[config_num] = config
        try:
            gid = config.owner(shard)
        except (KeyError, IndexError):
            return False
        return node in config.groups.get(gid, ())

    async def _handed_off(self, request: HandedOffRequest, context: CallContext) -> HandedOffReply:
        if context.peer_role is not PeerRole.NODE:
            return HandedOffReply("forbidden")  # a client must not make a group drop data
        if not await self._gains(context.peer_id, request.shard, request.config_num):
            return HandedOffReply("forbidden")  # ... nor a node of a group that gains nothing
        command = encode(HandOffDone(request.shard, request.config_num))
        outcome = await through_host(self.host, self.host.propose(command, REQUEST_TIMEOUT_S))
        if outcome.value is not None:
            self.source.forget(request.shard, request.config_num)
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
        arrivals = [self._arrival(shard, i) for shard, i in sorted(sm.incoming.items())]
        return StatusReply(
            **replica_status_fields(s),
            gid=self.gid,
            config_num=sm.config.num,
            shards=shards,
            arrivals=arrivals,
            halt_reason=s.halt_reason,
            last_check=self.checker.last,
            checks_run=self.checker.checks_run,
            mismatches_found=self.checker.mismatches_found,
        )

    def _arrival(self, shard: ShardId, incoming: Incoming) -> ArrivalInfo:
        """How far the copy of an arriving shard is (see ``ArrivalInfo``)."""
        staged, base = incoming.staged.size, incoming.base
        if base is not None and not staged:  # the whole base is here; no delta yet
            size = base.size_bytes()
            return ArrivalInfo(shard, incoming.config_num, "frozen-wait", size, size)
        phase = "base" if base is None else "delta"
        total = self.reconciler.image_size(shard, incoming.config_num)
        return ArrivalInfo(shard, incoming.config_num, phase, staged, total)


def _plain_read(sm: ShardGroupStateMachine, shard: ShardId, key: Key) -> Read:
    return sm.read(shard, key)
