"""The asyncio host around the sans-IO Raft core: storage, time, network and the state
machine meet here.

One :class:`RaftHost` runs one replica of one group. Two tasks drive it:

* the **tick task** sleeps one tick on the injected :class:`~shardwise.clock.Clock`, then
  ticks the core and expires operation deadlines. Tests pass a ``ManualClock`` and move
  time themselves, so elections and timeouts take no real time and replay exactly;
* the **ready task** turns each ``Ready`` of the core into I/O, in the order Raft's safety
  needs: persist (snapshot, entries, hard state, one ``sync``), then send, then apply,
  then ``advance``. A leader's ``sync`` runs in a worker thread (``run_blocking``):
  meanwhile the event loop keeps stepping the core, and whatever arrives (proposals,
  appends) waits in the core for the next ``Ready``, so one fsync covers all of it (group
  commit). A follower's may run in the loop (``HostOptions.sync_in_loop_unless_leading``):
  then what arrives waits in the socket, with the same effect.

**The network seam.** Outgoing messages go to ``send(message)``; incoming ones come in
through :meth:`RaftHost.deliver`. Neither blocks nor raises for delivery problems: Raft
retransmits, so a transport drops what it cannot deliver. Every message names its
``sender`` and ``to``, so one transport serves many groups by binding each host's
``send`` to its group id (``functools.partial(transport.send, group_id)``) and routing
what it receives by group id to that group's ``deliver``.

**Failures.** A committed entry that cannot be applied (an unknown kind, a command the
state machine cannot decode), a storage error or a broken invariant in the core halts the
replica: every waiting operation fails with ``ReplicaHaltedError`` and new ones are
refused, because skipping an entry would let replicas diverge silently.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import secrets
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final, Generic, Protocol, TypeAlias, TypeVar

import msgspec

from shardwise.clock import AsyncioClock, Clock
from shardwise.errors import (
    NotLeaderError,
    ProposalDroppedError,
    ProposalOutcomeUnknownError,
    RaftError,
    ReplicaHaltedError,
    ReplicaStoppedError,
)
from shardwise.raft.messages import (
    ConfChange,
    EntryKind,
    Membership,
    Message,
    decode_conf_change,
    entry_kind,
)
from shardwise.raft.node import RaftNode
from shardwise.raft.persist import persist_ready, write_ready
from shardwise.raft.ready import IncomingSnapshot, RaftConfig, Ready, Role
from shardwise.raft.statemachine import StateMachine
from shardwise.raft.waiting import Deadlines, FutureHeap, Proposals, fail
from shardwise.storage.interface import RaftStorage, load_state
from shardwise.storage.types import LogEntry

logger = logging.getLogger(__name__)

DEFAULT_TICK_INTERVAL_S: Final = 0.1
"""With the core's default of 10 election ticks: heartbeats every 100 ms, elections after
1-2 s of silence (etcd's defaults)."""

DEFAULT_SNAPSHOT_EVERY: Final = 10_000
"""Applied entries between snapshots: bounds the log kept in memory and on disk, and the
replay after a restart."""

MAX_PENDING_PROPOSALS: Final = 10_000
"""Proposals (and membership changes) waiting to be applied, per host, before new ones are
refused: back-pressure instead of unbounded memory when the group falls behind."""

MAX_PENDING_READS: Final = 4_096
"""Linearizable reads in flight per host (the core bounds a leader's queue alike)."""

MAX_PENDING_TRANSFERS: Final = 16
"""Leadership transfers waited on at once; more are refused."""

_PRUNE_FACTOR: Final = 4
"""Timer heaps are rebuilt without finished futures once they hold this many times the
operations that may be in flight."""

INCARNATION_BYTES: Final = 8
"""Random bytes that tell this run's read contexts from an earlier run's (see ``read``)."""

T = TypeVar("T")
S = TypeVar("S", bound=StateMachine)

Send: TypeAlias = Callable[[Message], None]
"""Hands one message to the transport; must neither block nor raise for delivery."""


class BlockingRunner(Protocol):
    """Runs blocking storage work (fsync) off the event loop; ``asyncio.to_thread`` is one."""

    def __call__(self, fn: Callable[[], None], /) -> Awaitable[None]: ...


async def run_inline(fn: Callable[[], None]) -> None:
    """A :class:`BlockingRunner` that blocks the loop: for in-memory storage in tests and
    deterministic simulations, where a thread would only add scheduling noise."""
    fn()


@dataclass(frozen=True, slots=True)
class HostOptions:
    """Timing and limits of one host; the core's own knobs are in ``RaftConfig``."""

    tick_interval_s: float = DEFAULT_TICK_INTERVAL_S
    snapshot_every: int = DEFAULT_SNAPSHOT_EVERY
    max_pending_proposals: int = MAX_PENDING_PROPOSALS
    max_pending_reads: int = MAX_PENDING_READS
    defer_leader_snapshots: bool = True
    """A leader's snapshot pauses its whole group (a follower's only itself: the other
    replicas still make a quorum), so a leader snapshots only at the hard limits
    (``SNAPSHOT_DEFER_LIMIT``, ``MAX_LOG_BYTES_BETWEEN_SNAPSHOTS``) and leaves the
    regular ones to its followers."""
    sync_in_loop_unless_leading: bool = False
    """A follower (or candidate) writes and fsyncs in the event loop instead of through
    ``run_blocking``. Nothing it could do meanwhile is worth the hand-off to a thread
    and back: its answer waits for the fsync anyway, and what arrives during it waits
    in the socket and makes the next Ready's batch larger. A leader always syncs through
    ``run_blocking``: its appends to the followers overlap its own write. Off by default
    so that simulations exercise a follower's core stepping while its fsync runs; the
    servers turn it on."""

    follower_apply_batch: int = 0
    """A follower holds back up to this many committed entries and applies them together
    (at the latest each tick, and at once when a read here, a snapshot or leadership
    needs them): one long run of applying instead of a few entries per wake-up, which on
    a busy machine costs several times as much per entry (cold caches). Nothing waits
    on a follower's apply: its answers to the leader are about its log. 0: apply each
    Ready's entries at once (the default; the servers turn it on)."""

    def __post_init__(self) -> None:
        if not self.tick_interval_s > 0:
            raise ValueError("tick_interval_s must be positive")
        if min(self.snapshot_every, self.max_pending_proposals, self.max_pending_reads) < 1:
            raise ValueError("snapshot_every and the pending limits must be positive")


MAX_LOG_BYTES_BETWEEN_SNAPSHOTS: Final = 256 << 20
"""Log a replica applies before it snapshots even a state larger than this."""

SNAPSHOT_DEFER_LIMIT: Final = 10
"""A snapshot waits for the log to grow as large as the last one (see ``_maybe_snapshot``),
but never past this many times ``snapshot_every`` entries: the log lives in memory."""


def snapshot_interval(node_id: str, snapshot_every: int) -> int:
    """Entries between two snapshots of replica ``node_id``: ``snapshot_every`` plus up to
    a fifth more, fixed by the id. A group's replicas then take their snapshots at
    different indexes and do not all pause at once (a large state machine's snapshot
    holds its replica's event loop for a while)."""
    return snapshot_every + zlib.crc32(node_id.encode()) % (snapshot_every // 5 + 1)


@dataclass(frozen=True, slots=True)
class HostStatus:
    node_id: str
    role: Role
    term: int
    leader: str | None
    commit: int
    applied: int
    """The host's applied index: commands in the state machine, plus no-ops and
    membership changes the core applied."""
    halted: bool


class _Lifecycle(enum.Enum):
    NEW = "new"
    RUNNING = "running"
    STOPPED = "stopped"


class RaftHost(Generic[S]):
    """One replica: a :class:`RaftNode`, its storage and its state machine, on asyncio.

    ``membership`` bootstraps a brand-new group (a snapshot's membership wins over it);
    ``seed`` drives the core's randomized election timeouts. The host owns ``storage``
    from :meth:`start` on and closes it in :meth:`stop`. Operation timeouts are measured
    on ``clock`` and checked at every tick, so one fires at most a tick late.
    ``incarnation`` only needs to be given by deterministic simulations (see :meth:`read`).
    """

    def __init__(
        self,
        node_id: str,
        membership: Membership,
        storage: RaftStorage,
        state_machine: S,
        send: Send,
        *,
        clock: Clock | None = None,
        config: RaftConfig | None = None,
        options: HostOptions | None = None,
        seed: int = 0,
        run_blocking: BlockingRunner = asyncio.to_thread,
        incarnation: bytes | None = None,
    ) -> None:
        self.id = node_id
        self.state_machine = state_machine
        # Optional: a state machine with ``end_batch()`` hears when a batch of applied
        # entries ends, so it can commit them together (see StateMachine).
        self._end_batch: Callable[[], None] | None = getattr(state_machine, "end_batch", None)
        self._membership = membership
        self._storage = storage
        self._send = send
        self._clock: Clock = clock or AsyncioClock()
        self._config = config or RaftConfig()
        self._options = options or HostOptions()
        self._seed = seed
        self._run_blocking = run_blocking
        self._incarnation = incarnation or secrets.token_bytes(INCARNATION_BYTES)
        self._node: RaftNode | None = None
        self._lifecycle = _Lifecycle.NEW
        self._halted: ReplicaHaltedError | None = None
        self._ready_task: asyncio.Task[None] | None = None
        self._tick_task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._applied = 0
        self._held: list[LogEntry] = []
        """Committed entries a follower holds back (``HostOptions.follower_apply_batch``)."""
        self._snapshot_index = 0
        self._snapshot_interval = snapshot_interval(node_id, self._options.snapshot_every)
        self._log_bytes = 0
        """Bytes of entries applied since the last snapshot."""
        self._snapshot_bytes = 0
        """Size of the last snapshot taken or installed."""
        self._read_count = 0
        opts = self._options
        in_flight = opts.max_pending_proposals + 2 * opts.max_pending_reads + MAX_PENDING_TRANSFERS
        self._proposals = Proposals(limit=opts.max_pending_proposals)
        self._reads: dict[bytes, asyncio.Future[int]] = {}
        self._applied_waiters = FutureHeap(prune_at=_PRUNE_FACTOR * opts.max_pending_reads)
        self._transfers: list[tuple[str, asyncio.Future[None]]] = []
        self._deadlines = Deadlines(prune_at=_PRUNE_FACTOR * in_flight)

    # --- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        """Rebuild the core from storage, bring the state machine up to the snapshot, and
        start ticking and processing."""
        if self._lifecycle is not _Lifecycle.NEW:
            raise ReplicaStoppedError(f"host {self.id!r} can be started only once")
        stored = load_state(self._storage)
        self._node = RaftNode(
            self.id,
            self._membership,
            config=self._config,
            seed=self._seed,
            hard_state=stored.hard_state,
            snapshot=stored.snapshot,
            entries=stored.entries,
        )
        if stored.snapshot is not None:
            meta, data = stored.snapshot
            self._snapshot_index = meta.index
            self._snapshot_bytes = len(data)
            # A durable state machine may be past the snapshot already; one that lives
            # in memory starts empty and is rebuilt from it, then from the log after it.
            if self.state_machine.applied_index() < meta.index:
                self.state_machine.restore(data, meta.index)
        self._applied = max(self.state_machine.applied_index(), self._snapshot_index)
        self._lifecycle = _Lifecycle.RUNNING
        self._ready_task = asyncio.create_task(self._process_readies(), name=f"ready-{self.id}")
        self._tick_task = asyncio.create_task(self._tick_forever(), name=f"tick-{self.id}")

    async def stop(self, *, close_storage: bool = True) -> None:
        """Stop ticking and processing, fail what is waiting with ``ReplicaStoppedError``
        and close the storage (a simulator that crashes it afterwards passes False).

        A ``Ready`` being persisted is finished first: a worker thread cannot be
        interrupted, and the storage must not be closed under it.
        """
        if self._lifecycle is _Lifecycle.STOPPED:
            return
        self._lifecycle = _Lifecycle.STOPPED
        if self._tick_task is not None:
            self._tick_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._tick_task
        if self._ready_task is not None:
            self._wake.set()  # it exits at the top of its loop, never inside a Ready
            await self._ready_task
        self._fail_all(ReplicaStoppedError(f"host {self.id!r} stopped"))
        self._idle.set()
        if close_storage:
            self._storage.close()

    def is_idle(self) -> bool:
        """Whether the host has nothing to persist, send or apply right now."""
        return self._idle.is_set()

    async def idle(self) -> None:
        """Wait until :meth:`is_idle` (for tests and simulators that let a cluster settle
        before they look at it)."""
        while not self._idle.is_set():
            await self._idle.wait()

    # --- inputs --------------------------------------------------------------------------

    def deliver(self, message: Message) -> None:
        """A message from a peer. Dropped unless the host runs (Raft retransmits)."""
        if self._lifecycle is not _Lifecycle.RUNNING or self._halted is not None:
            return
        try:
            self._require_node().step(message)
        except Exception as exc:  # the core's state is suspect: stop rather than go on
            self._halt(exc)
            return
        self._wakeup()

    async def propose(self, command: bytes, timeout_s: float) -> bytes:
        """Replicate ``command``; return the state machine's result once it is applied.

        Raises ``NotLeaderError`` at once (with the leader's id if known),
        ``ProposalDroppedError`` if refused or if its entry was overwritten by another
        leader's, ``RaftTimeoutError`` or ``ProposalOutcomeUnknownError`` when the outcome
        is unknown (retry with the same client id and sequence number), and
        ``ReplicaHaltedError`` / ``ReplicaStoppedError`` when the replica is not running.
        """
        node = self._require_running()
        _check_timeout(timeout_s)
        self._proposals.check_room()
        index = node.propose(command)
        return await self._await_entry(index, node.term, timeout_s, "proposal")

    async def change_membership(self, change: ConfChange, timeout_s: float) -> None:
        """Propose a one-server membership change; return once it is applied here.
        Raises ``ConfChangeError`` if the core refuses it now, else as :meth:`propose`."""
        node = self._require_running()
        _check_timeout(timeout_s)
        self._proposals.check_room()
        index = node.propose_conf_change(change)
        await self._await_entry(index, node.term, timeout_s, f"membership change {change}")

    async def read(self, fn: Callable[[S], T], timeout_s: float) -> T:
        """Run ``fn(state_machine)`` at a linearizable point, through ReadIndex.

        The leader confirms it still leads and names its commit index; once this replica
        has applied that far, ``fn`` sees every write that completed before the call.
        The read's context carries this host's id and a random incarnation, so a late
        answer to a previous run's read can never be taken for one of ours.
        """
        node = self._require_running()
        _check_timeout(timeout_s)
        if len(self._reads) >= self._options.max_pending_reads:
            raise ProposalDroppedError(f"{len(self._reads)} reads pending on {self.id!r}")
        deadline = self._clock.now() + timeout_s
        self._read_count += 1
        context = _encode((self.id, self._incarnation, self._read_count))
        index_future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._reads[context] = index_future
        self._deadlines.add(deadline, index_future, f"read on {self.id!r}")
        try:
            node.read_index(context)
            self._wakeup()
            index = await index_future
        finally:
            self._reads.pop(context, None)
        if index > self._applied and self._held:
            try:
                self._apply_held()
            except Exception as exc:
                self._halt(exc)
        if index > self._applied:
            self._require_running()  # stopped or halted meanwhile: nothing would wake us
            applied_future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._applied_waiters.push(index, applied_future)
            self._deadlines.add(deadline, applied_future, f"read on {self.id!r} (applying)")
            await applied_future
        return fn(self.state_machine)

    async def transfer_leadership(self, target: str, timeout_s: float) -> None:
        """Hand leadership to ``target``; return once this replica follows it."""
        node = self._require_running()
        _check_timeout(timeout_s)
        if len(self._transfers) >= MAX_PENDING_TRANSFERS:
            raise ProposalDroppedError(f"{len(self._transfers)} transfers pending")
        node.transfer_leadership(target)
        self._wakeup()
        if node.leader == target:
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._transfers.append((target, future))
        self._deadlines.add(self._clock.now() + timeout_s, future, f"transfer to {target!r}")
        await future

    # --- status --------------------------------------------------------------------------

    @property
    def node(self) -> RaftNode:
        """The core, for inspection (tests, status pages); drive it only through the host."""
        return self._require_node()

    def status(self) -> HostStatus:
        node = self._require_node()
        return HostStatus(
            node_id=self.id,
            role=node.role,
            term=node.term,
            leader=node.leader,
            commit=node.log.committed,
            applied=self._applied,
            halted=self._halted is not None,
        )

    # --- the tick task -------------------------------------------------------------------

    async def _tick_forever(self) -> None:
        node = self._require_node()
        while True:
            await self._clock.sleep(self._options.tick_interval_s)
            if self._halted is not None:
                return
            try:
                node.tick()
                self._apply_held()
            except Exception as exc:
                self._halt(exc)
                return
            self._deadlines.expire(self._clock.now())
            self._check_transfers()
            self._wakeup()

    # --- the ready task ------------------------------------------------------------------

    async def _process_readies(self) -> None:
        node = self._require_node()
        try:
            while self._lifecycle is _Lifecycle.RUNNING and self._halted is None:
                if not node.has_ready():
                    self._idle.set()
                    await self._wake.wait()
                    self._wake.clear()
                    continue
                await self._handle_ready(node, node.ready())
                if self._halted is None:
                    await self._maybe_snapshot(node)
                    self._check_transfers()
        except Exception as exc:
            self._halt(exc)
        finally:
            self._idle.set()

    async def _handle_ready(self, node: RaftNode, ready: Ready) -> None:
        for message in ready.early_messages:  # a leader's appends overlap its own fsync
            self._send(message)
        # Committed means durable on a quorum, so applying committed entries (and answering
        # their proposers) need not wait for this Ready's own write, whose entries are
        # newer; only a snapshot must be installed before anything after it applies.
        apply_first = ready.snapshot is None
        if not apply_first:
            self._apply_held()  # committed before the snapshot: apply in order
        if apply_first:
            self._apply_committed(node, ready.committed)
            self._answer_reads(node, ready)
        in_loop = self._options.sync_in_loop_unless_leading and not node.is_leader()
        if ready.snapshot is not None:
            await self._run_blocking(lambda: self._persist(ready))
            if self._halted is not None:
                return  # halted by a message or tick while the fsync ran: act on nothing
        elif not ready.must_sync or in_loop:
            # At most a new commit index (nothing to wait for), or a follower's small
            # write (see HostOptions).
            self._persist(ready)
        else:
            # Encoding and writing the entries is Python: here, not in a thread that would
            # contend for the GIL. Only the fsync runs off the loop.
            write_ready(self._storage, ready)
            await self._run_blocking(self._storage.sync)
            if self._halted is not None:
                return  # halted by a message or tick while the fsync ran: act on nothing
        if ready.snapshot is not None:
            self._install(ready.snapshot)
        for message in ready.messages:
            self._send(message)
        if not apply_first:
            self._apply_committed(node, ready.committed)
            self._answer_reads(node, ready)
        node.advance(ready)

    def _persist(self, ready: Ready) -> None:
        """May run in a worker thread (see ``_handle_ready``): touches storage only, never
        the core."""
        persist_ready(self._storage, ready)

    def _install(self, snapshot: IncomingSnapshot) -> None:
        """The leader sent a snapshot past our log: it replaces the state machine."""
        index = snapshot.meta.index
        self.state_machine.restore(snapshot.data, index)
        self._applied = self._snapshot_index = index
        self._snapshot_bytes, self._log_bytes = len(snapshot.data), 0
        self._proposals.fail_through(
            index,
            lambda covered: ProposalOutcomeUnknownError(
                f"a snapshot at {index} replaced entry {covered}"
            ),
        )
        self._release_applied()

    def _apply_committed(self, node: RaftNode, entries: list[LogEntry]) -> None:
        limit = self._options.follower_apply_batch
        if (
            limit
            and not node.is_leader()
            and not self._applied_waiters
            and len(self._held) + len(entries) < limit
        ):
            self._held.extend(entries)
            return
        if self._held:
            entries = [*self._held, *entries]
            self._held = []
        self._apply(entries)

    def _apply_held(self) -> None:
        if self._held:
            entries, self._held = self._held, []
            self._apply(entries)

    def _apply(self, entries: list[LogEntry]) -> None:
        try:
            self._apply_each(entries)
        finally:
            if self._end_batch is not None:
                try:
                    self._end_batch()
                except Exception as exc:
                    raise ReplicaHaltedError(
                        f"replica {self.id!r} cannot finish applying a batch: {exc}"
                    ) from exc

    def _apply_each(self, entries: list[LogEntry]) -> None:
        for entry in entries:
            if entry.index <= self._applied:
                continue  # replayed after a restart: the state machine already holds it
            try:
                kind = entry_kind(entry)
                result = b""
                if kind is EntryKind.COMMAND:
                    result = self.state_machine.apply(entry.index, entry.data[1:])
                elif kind is EntryKind.CONF_CHANGE:
                    decode_conf_change(entry)  # fail here, not inside the core's advance()
            except Exception as exc:
                raise ReplicaHaltedError(
                    f"replica {self.id!r} cannot apply committed entry {entry.index} "
                    f"(term {entry.term}): {exc}"
                ) from exc
            self._applied = entry.index
            self._log_bytes += len(entry.data)
            self._proposals.settle(entry.index, entry.term, result)
        self._release_applied()

    def _answer_reads(self, node: RaftNode, ready: Ready) -> None:
        for state in ready.read_states:
            future = self._reads.get(state.context)
            if future is not None and not future.done():
                future.set_result(state.index)
        for context in ready.dropped_reads:
            future = self._reads.get(context)
            if future is None or future.done():
                continue
            if node.is_leader():
                fail(future, ProposalDroppedError(f"leader {self.id!r} has too many reads"))
            else:
                fail(future, NotLeaderError(node.id, node.leader))

    def _release_applied(self) -> None:
        for future, _ in self._applied_waiters.pop_through(self._applied):
            future.set_result(None)

    async def _maybe_snapshot(self, node: RaftNode) -> None:
        """Snapshot every ``snapshot_every`` entries, and once the log since the last
        snapshot is as large as that snapshot was: a snapshot copies the whole state, so
        a large state with small writes is snapshotted rarely (its cost is amortized
        over as many bytes of log), not every few seconds. A leader waits for the hard
        limits (see ``HostOptions.defer_leader_snapshots``)."""
        applied = node.log.applied
        entries = applied - self._snapshot_index
        if entries < self._snapshot_interval:
            return
        at_limit = (
            entries >= SNAPSHOT_DEFER_LIMIT * self._snapshot_interval
            or self._log_bytes >= MAX_LOG_BYTES_BETWEEN_SNAPSHOTS
        )
        if self._options.defer_leader_snapshots and node.is_leader() and not at_limit:
            return
        if self._log_bytes < self._snapshot_bytes and not at_limit:
            return
        self._apply_held()  # (a follower's held entries: the snapshot is at ``applied``)
        if applied != self._applied:
            return  # a durable state machine is ahead of the core just after a restart
        data = self.state_machine.snapshot()
        meta = node.compact(applied, data)
        storage = self._storage

        def save() -> None:
            storage.save_snapshot(meta, data)
            storage.compact(meta.index)

        await self._run_blocking(save)
        self._snapshot_index = meta.index
        self._snapshot_bytes, self._log_bytes = len(data), 0
        logger.debug("replica %r took a snapshot at %d", self.id, meta.index)

    # --- bookkeeping ---------------------------------------------------------------------

    def _wakeup(self) -> None:
        self._idle.clear()
        self._wake.set()

    def _require_node(self) -> RaftNode:
        if self._node is None:
            raise ReplicaStoppedError(f"host {self.id!r} has not started")
        return self._node

    def _require_running(self) -> RaftNode:
        if self._halted is not None:
            raise ReplicaHaltedError(str(self._halted))
        if self._lifecycle is not _Lifecycle.RUNNING:
            raise ReplicaStoppedError(f"host {self.id!r} is not running")
        return self._require_node()

    async def _await_entry(self, index: int, term: int, timeout_s: float, what: str) -> bytes:
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._proposals.add(index, term, future)
        self._deadlines.add(self._clock.now() + timeout_s, future, f"{what} at index {index}")
        self._wakeup()
        return await future

    def _check_transfers(self) -> None:
        if not self._transfers:
            return
        leader = self._require_node().leader
        waiting = []
        for target, future in self._transfers:
            if future.done():
                continue
            if target == leader:
                future.set_result(None)
            else:
                waiting.append((target, future))
        self._transfers = waiting

    def _halt(self, cause: Exception) -> None:
        if self._halted is not None:
            return
        error = cause if isinstance(cause, ReplicaHaltedError) else None
        if error is None:
            error = ReplicaHaltedError(f"replica {self.id!r} halted: {cause!r}")
            error.__cause__ = cause
        self._halted = error
        logger.critical("%s; refusing all further work", error, exc_info=cause)
        self._fail_all(error)
        self._wake.set()  # let the ready task see it and exit
        self._idle.set()

    def _fail_all(self, error: RaftError) -> None:
        self._proposals.fail_all(error)
        for future in self._reads.values():
            fail(future, error)
        for future in self._applied_waiters.drain():
            fail(future, error)
        for _, transfer in self._transfers:
            fail(transfer, error)
        self._transfers.clear()
        self._deadlines.clear()


_encode = msgspec.msgpack.Encoder().encode


def _check_timeout(timeout_s: float) -> None:
    if not timeout_s > 0:
        raise ValueError(f"timeout_s must be positive, got {timeout_s}")
