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

**Who may talk to it.** A message whose sender is not a member of the group as this
replica knows it never reaches the core (``hosting/senders.py``): being a node of the
cluster is not being a member of this group.

**Failures.** A committed entry that cannot be applied (an unknown kind, a command the
state machine cannot decode), a storage error or a broken invariant in the core halts the
replica: every waiting operation fails with ``ReplicaHaltedError`` and new ones are
refused, because skipping an entry would let replicas diverge silently. A full disk is
the exception (``hosting/diskfull.py``): the replica stops as a crash would, refuses
writes with ``DiskFullError``, and restarts in-process once there is room. Before that,
a leader refuses new proposals with ``DiskFullError`` while its storage reports free
space below the refusal threshold (``storage/space.py``), and keeps leading.

The host keeps its lifecycle, the two tasks and the operations callers await; the parts
with a job of their own are in ``shardwise.raft.hosting``: its options and status,
applying committed entries (``Applier``), when to snapshot (``SnapshotSchedule``) and
the tables of waiting futures.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import secrets
from collections.abc import Callable
from typing import Final, Generic, TypeVar

from shardwise.clock import AsyncioClock, Clock
from shardwise.errors import (
    ProposalDroppedError,
    ProposalOutcomeUnknownError,
    RaftError,
    ReplicaHaltedError,
    ReplicaStoppedError,
)
from shardwise.raft.hosting.applying import Applier
from shardwise.raft.hosting.diskfull import DiskFullStop, disk_full_cause, rebuild_state_machine
from shardwise.raft.hosting.events import LeadershipLog
from shardwise.raft.hosting.lease import lease_duration_s
from shardwise.raft.hosting.options import (
    DEFAULT_SNAPSHOT_EVERY,
    DEFAULT_TICK_INTERVAL_S,
    MAX_PENDING_PROPOSALS,
    MAX_PENDING_READS,
    MAX_PENDING_TRANSFERS,
    BlockingRunner,
    HostOptions,
    HostStatus,
    Send,
    run_inline,
)
from shardwise.raft.hosting.reads import HostReads
from shardwise.raft.hosting.senders import SenderFilter
from shardwise.raft.hosting.snapshots import SnapshotSchedule
from shardwise.raft.hosting.waiting import Deadlines, FutureHeap, Proposals, fail
from shardwise.raft.messages import (
    ConfChange,
    Membership,
    Message,
)
from shardwise.raft.node import RaftNode
from shardwise.raft.persist import persist_ready, write_ready
from shardwise.raft.ready import IncomingSnapshot, RaftConfig, Ready
from shardwise.raft.statemachine import StateMachine
from shardwise.storage.interface import RaftStorage, StoredState, load_state
from shardwise.storage.space import DiskFullError

__all__ = [
    "DEFAULT_SNAPSHOT_EVERY",
    "DEFAULT_TICK_INTERVAL_S",
    "MAX_PENDING_PROPOSALS",
    "MAX_PENDING_READS",
    "MAX_PENDING_TRANSFERS",
    "BlockingRunner",
    "HostOptions",
    "HostStatus",
    "RaftHost",
    "Send",
    "run_inline",
]

logger = logging.getLogger(__name__)

_PRUNE_FACTOR: Final = 4
"""Timer heaps are rebuilt without finished futures once they hold this many times the
operations that may be in flight."""

INCARNATION_BYTES: Final = 8
"""Random bytes that tell this run's read contexts from an earlier run's (see ``read``)."""

T = TypeVar("T")
S = TypeVar("S", bound=StateMachine)


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
        group_name: str = "its group",
    ) -> None:
        self.id = node_id
        self.state_machine = state_machine
        self._membership = membership
        self._storage = storage
        self._send = send
        self._clock: Clock = clock or AsyncioClock()
        self._config = config or RaftConfig()
        self._options = options or HostOptions()
        self._seed = seed
        self._run_blocking = run_blocking
        self._incarnation = incarnation or secrets.token_bytes(INCARNATION_BYTES)
        self._leadership = LeadershipLog(node_id, group_name)
        self._node: RaftNode | None = None
        self._lifecycle = _Lifecycle.NEW
        self._halted: ReplicaHaltedError | None = None
        self.disk_full = DiskFullStop()
        self._ready_task: asyncio.Task[None] | None = None
        self._tick_task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._snapshots = SnapshotSchedule(node_id, self._options)
        self._senders = SenderFilter(node_id)
        opts = self._options
        in_flight = opts.max_pending_proposals + 2 * opts.max_pending_reads + MAX_PENDING_TRANSFERS
        self._proposals = Proposals(limit=opts.max_pending_proposals)
        self._applied_waiters = FutureHeap(prune_at=_PRUNE_FACTOR * opts.max_pending_reads)
        self._transfers: list[tuple[str, asyncio.Future[None]]] = []
        self._deadlines = Deadlines(prune_at=_PRUNE_FACTOR * in_flight)
        lease_s = lease_duration_s(self._config.election_ticks, opts.tick_interval_s)
        self._reads = HostReads(
            node_id, self._incarnation, opts.max_pending_reads, self._deadlines, lease_s
        )
        self._applier = Applier(
            node_id,
            state_machine,
            proposals=self._proposals,
            applied_waiters=self._applied_waiters,
            snapshots=self._snapshots,
            follower_batch=opts.follower_apply_batch,
        )

    # --- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        """Rebuild the core from storage, bring the state machine up to the snapshot, and
        start ticking and processing."""
        if self._lifecycle is not _Lifecycle.NEW:
            raise ReplicaStoppedError(f"host {self.id!r} can be started only once")
        stored = load_state(self._storage)
        self._node = self._build_node(stored)
        if stored.snapshot is not None:
            meta, data = stored.snapshot
            self._snapshots.reset(meta.index, len(data))
            # A durable state machine may be past the snapshot already; one that lives
            # in memory starts empty and is rebuilt from it, then from the log after it.
            if self.state_machine.applied_index() < meta.index:
                self.state_machine.restore(data, meta.index)
        self._applier.applied = max(self.state_machine.applied_index(), self._snapshots.index)
        last = stored.entries[-1].index if stored.entries else self._snapshots.index
        self._leadership.started(
            self._node,
            f"log to index {last}, applied to {self._applier.applied}"
            if last or self._applier.applied
            else "no data yet",
        )
        self._lifecycle = _Lifecycle.RUNNING
        self._ready_task = asyncio.create_task(self._process_readies(), name=f"ready-{self.id}")
        self._tick_task = asyncio.create_task(self._tick_forever(), name=f"tick-{self.id}")

    def _build_node(self, stored: StoredState) -> RaftNode:
        return RaftNode(
            self.id,
            self._membership,
            config=self._config,
            seed=self._seed,
            hard_state=stored.hard_state,
            snapshot=stored.snapshot,
            entries=stored.entries,
        )

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
        if self.disk_full.stopped:
            return  # stopped as a crashed node is: it acknowledges nothing
        node = self._require_node()
        if self._options.check_senders and not self._senders.admit(node, message):
            return
        try:
            node.step(message)
        except Exception as exc:  # the core's state is suspect: stop rather than go on
            self._halt(exc)
            return
        self._leadership.check(node)
        self._wakeup()

    async def propose(self, command: bytes, timeout_s: float) -> bytes:
        """Replicate ``command``; return the state machine's result once it is applied.

        Raises ``NotLeaderError`` at once (with the leader's id if known),
        ``ProposalDroppedError`` if refused or if its entry was overwritten by another
        leader's, ``RaftTimeoutError`` or ``ProposalOutcomeUnknownError`` when the outcome
        is unknown (retry with the same client id and sequence number), and
        ``ReplicaHaltedError`` / ``ReplicaStoppedError`` when the replica is not running.
        """
        node = self._require_running(writing=True)
        _check_timeout(timeout_s)
        self._proposals.check_room()
        if self._storage.space_low():  # refused while there is room for what was accepted
            raise DiskFullError(f"replica {self.id!r} refuses writes: its disk is nearly full")
        index = node.propose(command)
        return await self._await_entry(index, node.term, timeout_s, "proposal")

    async def change_membership(self, change: ConfChange, timeout_s: float) -> None:
        """Propose a one-server membership change; return once it is applied here.
        Raises ``ConfChangeError`` if the core refuses it now, else as :meth:`propose`."""
        node = self._require_running(writing=True)
        _check_timeout(timeout_s)
        self._proposals.check_room()
        index = node.propose_conf_change(change)
        await self._await_entry(index, node.term, timeout_s, f"membership change {change}")

    async def read(self, fn: Callable[[S], T], timeout_s: float) -> T:
        """Run ``fn(state_machine)`` at a linearizable point: a leader whose lease holds
        reads at its commit index, else the leader confirms it still leads with a
        ReadIndex round and names its commit index (``hosting/reads.py``). Once this
        replica has applied that far, ``fn`` sees every write that completed before."""
        node = self._require_running()
        _check_timeout(timeout_s)
        deadline = self._clock.now() + timeout_s
        index = self._reads.lease_index(node, self._clock.now())
        if index is None:
            index = await self._reads.read_index(node, deadline, self._wakeup)
        if index > self._applier.applied and self._applier.is_holding():
            try:
                self._applier.apply_held()
            except Exception as exc:
                self._halt(exc)
        if index > self._applier.applied:
            self._require_running()  # stopped or halted meanwhile: nothing would wake us
            applied_future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._applied_waiters.push(index, applied_future)
            self._deadlines.add(deadline, applied_future, f"read on {self.id!r} (applying)")
            await applied_future
        return fn(self.state_machine)

    @property
    def lease_reads(self) -> int:
        """Reads this host served from its lease, without a ReadIndex round."""
        return self._reads.from_lease

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

    @property
    def storage(self) -> RaftStorage:
        """The storage in use (a new instance after a stop on a full disk)."""
        return self._storage

    @property
    def dropped_messages(self) -> dict[str, int]:
        """Messages kept from the core, by reason (see ``hosting/senders.py``)."""
        return dict(self._senders.dropped)

    def status(self) -> HostStatus:
        node = self._require_node()
        return HostStatus(
            node_id=self.id,
            role=node.role,
            term=node.term,
            leader=node.leader,
            commit=node.log.committed,
            applied=self._applier.applied,
            halted=self._halted is not None,
            disk_full=self.disk_full.stopped,
            halt_reason=str(self._halted) if self._halted is not None else "",
        )

    # --- the tick task -------------------------------------------------------------------

    async def _tick_forever(self) -> None:
        while True:
            await self._clock.sleep(self._options.tick_interval_s)
            if self._halted is not None:
                return
            if self.disk_full.stopped:
                if self.disk_full.due(self._clock.now()):
                    self._try_resume()
                continue
            node = self._require_node()  # (a new one after a stop on a full disk)
            try:
                node.set_space_low(self._storage.space_low())
                node.tick()
                self._applier.apply_held()
            except Exception as exc:
                self._halt(exc)
                continue  # (a halt ends the task above; a full disk waits for room)
            self._leadership.check(node)
            self._deadlines.expire(self._clock.now())
            self._check_transfers()
            self._wakeup()

    # --- the ready task ------------------------------------------------------------------

    async def _process_readies(self) -> None:
        node = self._require_node()
        try:
            while self._lifecycle is _Lifecycle.RUNNING and self._running_normally():
                if not node.has_ready():
                    self._idle.set()
                    await self._wake.wait()
                    self._wake.clear()
                    continue
                ready = node.ready()
                # Before anything in it is sent: no round it carries left earlier. (Not
                # before ready(): its flush may number the round of a ReadIndex read.)
                self._reads.lease.note(node.term, ready.lease_round, self._clock.now())
                await self._handle_ready(node, ready)
                if self._running_normally():
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
            self._applier.apply_held()  # committed before the snapshot: apply in order
        if apply_first:
            self._applier.apply_committed(ready.committed, node.is_leader())
            self._answer_reads(node, ready)
        in_loop = self._options.sync_in_loop_unless_leading and not node.is_leader()
        if ready.snapshot is not None:
            await self._run_blocking(lambda: self._persist(ready))
            if not self._running_normally():
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
            if not self._running_normally():
                return  # halted by a message or tick while the fsync ran: act on nothing
        if ready.snapshot is not None:
            self._install(ready.snapshot)
        for message in ready.messages:
            self._send(message)
        if not apply_first:
            self._applier.apply_committed(ready.committed, node.is_leader())
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
        self._applier.applied = index
        self._snapshots.reset(index, len(snapshot.data))
        self._proposals.fail_through(
            index,
            lambda covered: ProposalOutcomeUnknownError(
                f"a snapshot at {index} replaced entry {covered}"
            ),
        )
        self._applier.release_applied()

    def _answer_reads(self, node: RaftNode, ready: Ready) -> None:
        self._reads.answer(node, ready)

    async def _maybe_snapshot(self, node: RaftNode) -> None:
        """Snapshot when the schedule says so (see ``hosting/snapshots.py``)."""
        applied = node.log.applied
        if not self._snapshots.due(applied, node.is_leader()):
            return
        self._applier.apply_held()  # (a follower's held entries: the snapshot is at ``applied``)
        if applied != self._applier.applied:
            return  # a durable state machine is ahead of the core just after a restart
        data = self.state_machine.snapshot()
        meta = node.compact(applied, data)
        storage = self._storage

        def save() -> None:
            storage.save_snapshot(meta, data)
            storage.compact(meta.index)

        await self._run_blocking(save)
        self._snapshots.reset(meta.index, len(data))
        logger.debug("replica %r took a snapshot at %d", self.id, meta.index)

    # --- bookkeeping ---------------------------------------------------------------------

    def _wakeup(self) -> None:
        self._idle.clear()
        self._wake.set()

    def _require_node(self) -> RaftNode:
        if self._node is None:
            raise ReplicaStoppedError(f"host {self.id!r} has not started")
        return self._node

    def _require_running(self, *, writing: bool = False) -> RaftNode:
        if self._halted is not None:
            raise ReplicaHaltedError(str(self._halted))
        if self._lifecycle is not _Lifecycle.RUNNING:
            raise ReplicaStoppedError(f"host {self.id!r} is not running")
        if (error := self.disk_full.error) is not None:
            # A write is refused outright (the other replicas share the fate of their
            # disks more often than not); a read may find a replica that still runs.
            if writing:
                raise DiskFullError(f"replica {self.id!r} refuses writes: {error}")
            raise ReplicaStoppedError(f"replica {self.id!r} is stopped: {error}")
        return self._require_node()

    def _running_normally(self) -> bool:
        return self._halted is None and not self.disk_full.stopped

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
        full = disk_full_cause(cause)
        if full is not None:
            # The storage raises DiskFullError itself; the state machine's fails its apply.
            self._stop_on_full_disk(full, state_machine_failed=not isinstance(cause, DiskFullError))
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

    # --- a full disk (hosting/diskfull.py) ----------------------------------------------

    def _stop_on_full_disk(self, error: DiskFullError, *, state_machine_failed: bool) -> None:
        """Stop as a crash would, and look for room at the tick task's pace."""
        if not self.disk_full.stop(
            error, self._clock.now(), state_machine_failed=state_machine_failed
        ):
            return
        logger.error("replica %r stopped: %s; it resumes once there is room", self.id, error)
        # Entries in flight may still commit through the other replicas: outcome unknown.
        self._fail_all(ProposalOutcomeUnknownError(f"replica {self.id!r} stopped: {error}"))
        self._wake.set()  # let the ready task see it and exit
        self._idle.set()

    def _try_resume(self) -> None:
        """Reopen the storage and rebuild the core from it, as a restart would."""
        if self._ready_task is not None and not self._ready_task.done():
            return  # still finishing the Ready that failed (a worker's write)
        try:
            if not self._storage.room_to_resume():
                return
            self._storage = self._storage.reopen()
            stored = load_state(self._storage)
            if self.disk_full.rebuild_state_machine:
                rebuild_state_machine(self.id, self.state_machine, stored, self._applier)
                self._snapshots.reset(self._applier.applied, 0)
            self._applier.drop_held()
            self._node = self._build_node(stored)
        except DiskFullError:
            return  # still full: try again later
        except Exception as exc:
            self.disk_full.resumed()
            self._halt(exc)
            return
        self.disk_full.resumed()
        logger.warning("replica %r resumed: there is room on its disk again", self.id)
        self._leadership.started(self._node, "after a full disk")
        self._ready_task = asyncio.create_task(self._process_readies(), name=f"ready-{self.id}")
        self._wakeup()

    def _fail_all(self, error: RaftError) -> None:
        self._proposals.fail_all(error)
        self._reads.fail_all(error)
        for future in self._applied_waiters.drain():
            fail(future, error)
        for _, transfer in self._transfers:
            fail(transfer, error)
        self._transfers.clear()
        self._deadlines.clear()


def _check_timeout(timeout_s: float) -> None:
    if not timeout_s > 0:
        raise ValueError(f"timeout_s must be positive, got {timeout_s}")
