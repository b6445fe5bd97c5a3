"""The Raft core: a sans-IO state machine in the shape of etcd's RawNode.

Feed it ``tick()`` (time), ``step(message)`` (the network) and ``propose(data)`` (clients);
take a :class:`~shardwise.raft.ready.Ready` with ``ready()``, do what it says, and call
``advance(ready)``. It never reads a clock, touches a file or opens a socket, so the same
code runs in real processes and in a deterministic simulator.

Beyond the paper: PreVote and CheckQuorum (a node that was cut off cannot depose a healthy
leader when it returns), leadership transfer, ReadIndex reads, learners, pipelined appends
with flow control, acknowledged and resumable snapshot chunks, and back-pressure on
proposals. Membership changes are one server at a time; a leader accepts one only after it
has committed an entry of its own term and while no other change is pending, which closes
the known hole in single-server changes.

``RaftNode`` holds the state every role shares (term, vote, role, leader, the log, the
outgoing messages) and runs elections, the follower's side of replication and the
Ready/advance cycle. It is composed of the parts that own state of their own: the
:class:`~shardwise.raft.tracker.ProgressTracker` (membership, progress, votes), the
:class:`~shardwise.raft.replication.Replicator` (the leader's sending and commitment),
:class:`~shardwise.raft.receiving.Receiver` (the follower's side: appends, heartbeats,
snapshot chunks) and :class:`~shardwise.raft.reads.ReadIndex` (linearizable reads).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Final

from shardwise.errors import ConfChangeError, NotLeaderError, ProposalDroppedError, RaftError
from shardwise.raft.lease import LeaseRounds
from shardwise.raft.log import RaftLog
from shardwise.raft.messages import (
    NOOP_PAYLOAD,
    AppendEntries,
    AppendResponse,
    ConfChange,
    ConfChangeKind,
    EntryKind,
    Heartbeat,
    InstallSnapshot,
    Membership,
    Message,
    ReadIndexResponse,
    RequestVote,
    TimeoutNow,
    VoteResponse,
    command_payload,
    conf_change_payload,
    decode_conf_change,
    decode_membership,
    encode_membership,
    entry_kind,
    membership_payload,
)
from shardwise.raft.progress import Progress
from shardwise.raft.reads import ReadIndex
from shardwise.raft.ready import MAX_APPLY_BYTES, RaftConfig, Ready, Role
from shardwise.raft.receiving import Receiver
from shardwise.raft.replication import Replicator
from shardwise.raft.tracker import ProgressTracker
from shardwise.storage.types import HardState, LogEntry, SnapshotMeta

LEADER_MESSAGES: Final = (AppendEntries, Heartbeat, InstallSnapshot, TimeoutNow, ReadIndexResponse)
"""What only a leader sends; none of it promises anything about the sender's own disk."""


class RaftNode:
    """One member of one Raft group. See the module docstring for the contract."""

    def __init__(
        self,
        node_id: str,
        membership: Membership | None = None,
        *,
        config: RaftConfig | None = None,
        seed: int = 0,
        hard_state: HardState | None = None,
        snapshot: tuple[SnapshotMeta, bytes] | None = None,
        entries: Sequence[LogEntry] = (),
    ) -> None:
        """Start a node from what storage holds (all empty for a brand-new node).

        ``membership``: for a founding member of a new group, the group's first
        membership. With empty storage it becomes entry 1 of the log (term 1, committed,
        identical on every founder), so the membership is in the log for anyone who joins
        later. A node that joins an existing group passes ``None`` and learns the
        membership from the leader. With a snapshot, the snapshot's membership wins.
        ``seed`` drives the randomized election timeout (deterministic runs).
        """
        self.id = node_id
        self.config = config or RaftConfig()
        self._rng = random.Random(f"{seed}:{node_id}")
        meta, data = snapshot if snapshot else (None, b"")
        state = hard_state or HardState()
        bootstrap = membership is not None and not snapshot and not entries and state.term == 0
        if bootstrap and membership is not None:
            entries = [LogEntry(1, 1, membership_payload(membership))]
            state = HardState(term=1, vote=None, commit=1)
        self.log = RaftLog(meta, entries)
        if bootstrap:
            self.log.stable = 0  # the bootstrap entry is not on disk yet: the first Ready has it
        if meta is not None and meta.config:
            membership = decode_membership(meta.config)
        self.tracker = ProgressTracker(node_id, membership or Membership(frozenset()))
        self.term = state.term
        self.vote = state.vote
        if state.commit > self.log.last_index():
            raise RaftError(f"hard state commit {state.commit} is past the log's end")
        self.log.commit_to(state.commit)
        self._persisted = (
            HardState() if bootstrap else HardState(self.term, self.vote, self.log.committed)
        )
        self.role = Role.FOLLOWER
        self.lead: str | None = None
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self._randomized_timeout = 0
        self._msgs: list[Message] = []
        self.replication = Replicator(self, data)
        self.reads = ReadIndex(self)
        self.lease = LeaseRounds()
        self._since_leader_heard = 0 if self.config.lease_reads else self.config.election_ticks
        """Ticks since a leader was last heard from (with ``lease_reads``: a restart
        counts as having just heard one, see ``RaftConfig.lease_reads``). Kept apart from
        ``lead`` and the term, which any higher-term message resets: the promise not to
        help elect another leader for an election timeout must survive that."""
        self.receiver = Receiver(self)
        self._pending_conf_index = 0
        self._awaiting_advance = False
        self.transferee: str | None = None
        self.space_low = False
        """This replica's disk is nearly full, so as a leader it would refuse every write
        (the host says so each tick: :meth:`set_space_low`). A follower repeats it in its
        heartbeat answers; a leader hands leadership to an up-to-date follower that has
        room (:meth:`_hand_off_for_space`), so one full disk does not stop a group's
        writes while two others have space."""
        self._reset_timeout()

    # --- what the parts share ------------------------------------------------------------

    @property
    def membership(self) -> Membership:
        return self.tracker.membership

    @membership.setter
    def membership(self, membership: Membership) -> None:
        self.tracker.membership = membership

    @property
    def progress(self) -> dict[str, Progress]:
        """What the leader knows of each member (empty unless leading)."""
        return self.tracker.progress

    @property
    def voters(self) -> frozenset[str]:
        return self.tracker.voters

    def members(self) -> list[str]:
        return self.tracker.members()

    def peers(self) -> list[str]:
        return self.tracker.peers()

    def promotable(self) -> bool:
        return self.tracker.promotable()

    def quorum(self) -> int:
        return self.tracker.quorum()

    @property
    def leader(self) -> str | None:
        return self.lead

    def is_leader(self) -> bool:
        return self.role is Role.LEADER

    def emit(self, message: Message) -> None:
        """Queue ``message`` for the next Ready (the parts of the core send through this)."""
        self._msgs.append(message)

    # --- role changes --------------------------------------------------------------------

    def _reset_timeout(self) -> None:
        ticks = self.config.election_ticks
        self._randomized_timeout = ticks + self._rng.randrange(ticks)

    def _reset(self, term: int) -> None:
        if term != self.term:
            self.term = term
            self.vote = None
        self.lead = None
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self._reset_timeout()
        self.tracker.reset_votes()
        self.transferee = None
        self.reads.drop_all()
        self.lease.reset()

    def _become_follower(self, term: int, lead: str | None) -> None:
        self._reset(term)
        self.role = Role.FOLLOWER
        self.lead = lead
        self.tracker.stop_leading()

    def _become_pre_candidate(self) -> None:
        # A pre-candidate does not change its term or vote: it only asks whether it could win.
        self.tracker.reset_votes()
        self.lead = None
        self.role = Role.PRE_CANDIDATE
        self.reads.drop_all()
        self.lease.reset()

    def _become_candidate(self) -> None:
        self._reset(self.term + 1)
        self.vote = self.id
        self.role = Role.CANDIDATE

    def _become_leader(self) -> None:
        self._reset(self.term)
        self.role = Role.LEADER
        self.lead = self.id
        last = self.log.last_index()
        self.tracker.start_leading(last, self.log.stable)
        # No membership change until the no-op below (an entry of this term) is applied.
        self._pending_conf_index = last + 1
        self.replication.start_term()
        self.replication.append(NOOP_PAYLOAD)

    def _campaign(self, *, pre_vote: bool, transfer: bool = False) -> None:
        if not self.promotable():
            return
        if pre_vote:
            self._become_pre_candidate()
            term = self.term + 1
        else:
            self._become_candidate()
            term = self.term
        self.tracker.record_vote(self.id, True)
        if self.tracker.granted_votes() >= self.quorum():
            self._win_election(pre_vote)
            return
        for peer in sorted(self.voters - {self.id}):
            self.emit(
                RequestVote(
                    term=term,
                    sender=self.id,
                    to=peer,
                    last_index=self.log.last_index(),
                    last_term=self.log.last_term(),
                    pre_vote=pre_vote,
                    transfer=transfer,
                )
            )

    def _win_election(self, pre_vote: bool) -> None:
        if pre_vote:
            self._campaign(pre_vote=False)
        else:
            self._become_leader()

    # --- inputs --------------------------------------------------------------------------

    def tick(self) -> None:
        """One unit of time has passed."""
        self.reads.tick()
        if self.role is Role.LEADER:
            self._tick_leader()
            return
        self.election_elapsed += 1
        self._since_leader_heard += 1
        if self.promotable() and self.election_elapsed >= self._randomized_timeout:
            self.election_elapsed = 0
            self._campaign(pre_vote=self.config.pre_vote)

    def _tick_leader(self) -> None:
        self.heartbeat_elapsed += 1
        self.election_elapsed += 1
        if self.election_elapsed >= self.config.election_ticks:
            self.election_elapsed = 0
            if self.config.check_quorum and not self.tracker.quorum_active():
                self._become_follower(self.term, None)
                return
            self.tracker.reset_recent_active()
            self.transferee = None  # a transfer that took an election timeout has failed
        if self.heartbeat_elapsed >= self.config.heartbeat_ticks:
            self.heartbeat_elapsed = 0
            # Reads still unconfirmed ride along: a lost read heartbeat is sent again.
            self.replication.broadcast_heartbeat(self.reads.unconfirmed_context())
        if self.space_low and self.transferee is None:
            self._hand_off_for_space()

    def set_space_low(self, low: bool) -> None:
        """Whether this replica's disk is nearly full. When it has just become so, what
        the followers said of theirs is forgotten (``Progress.space_low`` is "no room"
        until heard): a report from before may be stale, and handing leadership to a
        replica whose disk filled meanwhile would only make it hand it on again."""
        if low and not self.space_low:
            for pr in self.progress.values():
                pr.space_low = True
        self.space_low = low

    def _hand_off_for_space(self) -> None:
        """Transfer leadership to the most up-to-date voter that answered lately and has
        room; none: keep leading (and refusing writes) until one does or space returns.
        A transfer that fails is given up after an election timeout and tried again, so
        this runs at most once per election timeout."""
        candidates = [
            (pr.match, peer)
            for peer, pr in self.progress.items()
            if peer != self.id and peer in self.voters and pr.recent_active and not pr.space_low
        ]
        if candidates:
            self.transfer_leadership(max(candidates)[1])

    def propose(self, data: bytes) -> int:
        """Append a command to the leader's log; returns its index (not yet committed)."""
        return self._propose(command_payload(data))

    def propose_conf_change(self, change: ConfChange) -> int:
        """Propose a one-server membership change; see the module docstring for the rules."""
        self._require_leader()
        if self._pending_conf_index > self.log.applied:
            raise ConfChangeError("a membership change is still pending; wait until it applies")
        voters, learners = self.membership.voters, self.membership.learners
        node = change.node
        if change.kind is ConfChangeKind.ADD_LEARNER and node in voters | learners:
            raise ConfChangeError(f"{node!r} is already a member")
        if change.kind is ConfChangeKind.PROMOTE:
            if node not in learners:
                raise ConfChangeError(f"{node!r} is not a learner; add it as a learner first")
            lag = self.log.last_index() - self.progress[node].match
            if lag > self.config.catch_up_entries:
                raise ConfChangeError(f"learner {node!r} is {lag} entries behind; not caught up")
        if change.kind is ConfChangeKind.REMOVE:
            if node not in voters | learners:
                raise ConfChangeError(f"{node!r} is not a member")
            if voters == {node}:
                raise ConfChangeError("cannot remove the last voter")
        index = self._propose(conf_change_payload(change))
        self._pending_conf_index = index
        return index

    def _require_leader(self) -> None:
        if self.role is not Role.LEADER:
            raise NotLeaderError(self.id, self.lead)

    def _propose(self, payload: bytes) -> int:
        self._require_leader()
        if self.transferee is not None:
            raise ProposalDroppedError(f"leadership is moving to {self.transferee!r}")
        if not self.replication.has_room(len(payload)):
            raise ProposalDroppedError("too many uncommitted bytes; the followers are behind")
        return self.replication.append(payload)

    def transfer_leadership(self, target: str) -> None:
        """Hand leadership to ``target`` once it has caught up (it campaigns at once)."""
        self._require_leader()
        if target == self.id:
            return
        if target not in self.voters:
            raise RaftError(f"cannot transfer leadership to {target!r}: not a voter")
        self.transferee = target
        self.lease.forfeited = True  # the transferee's election ignores the voters' leases
        self.election_elapsed = 0
        if self.progress[target].match == self.log.last_index():
            self.emit(TimeoutNow(term=self.term, sender=self.id, to=target))
        else:
            self.replication.send_append(target)

    def read_index(self, context: bytes) -> None:
        """Ask for a linearizable read; a ReadState with ``context`` comes back in a Ready.

        ``context`` must be unique among reads in flight. With no leader known, the read
        comes back in ``Ready.dropped_reads`` instead.
        """
        self.reads.request(context)

    def lease_read_index(self) -> int | None:
        """The index a read may be served at without a ReadIndex round, if the host's
        clock says the lease of round :attr:`LeaseRounds.confirmed` still holds: this
        leader's commit index, once it has committed an entry of its term and unless it
        gave the lease up for a transfer. None: read through :meth:`read_index`."""
        if (
            not self.config.lease_reads
            or self.role is not Role.LEADER
            or self.lease.forfeited
            or self.lease.confirmed == 0
            or self.log.term_or_none(self.log.committed) != self.term
        ):
            return None
        return self.log.committed

    def compact(self, index: int, data: bytes) -> SnapshotMeta:
        """The host took a snapshot of the state machine at ``index`` (its applied index).

        Returns the snapshot's metadata (with the membership) for the host to persist; the
        core drops the entries it covers and will send ``data`` to followers that need it.
        """
        if index != self.log.applied:
            raise RaftError(f"snapshot at {index} but the applied index is {self.log.applied}")
        meta = SnapshotMeta(index, self.log.term(index), encode_membership(self.membership))
        self.log.compact(meta)
        self.replication.snapshot_data = data
        return meta

    # --- messages ------------------------------------------------------------------------

    def step(self, m: Message) -> None:
        """Handle one message from a peer."""
        if m.to != self.id or m.sender == self.id:
            return
        if m.term > self.term:
            if isinstance(m, RequestVote) and self._in_lease() and not m.transfer:
                return  # we heard from a leader recently: do not help depose it
            if isinstance(m, RequestVote) and m.pre_vote:
                pass  # a pre-vote does not change our term
            elif isinstance(m, VoteResponse) and m.pre_vote and m.granted:
                pass  # a granted pre-vote echoes the term the candidate will run for
            else:
                lead = (
                    m.sender if isinstance(m, AppendEntries | Heartbeat | InstallSnapshot) else None
                )
                self._become_follower(m.term, lead)
        elif m.term < self.term:
            self._step_stale(m)
            return
        self._dispatch(m)

    def _step_stale(self, m: Message) -> None:
        if isinstance(m, AppendEntries | Heartbeat) and (
            self.config.check_quorum or self.config.pre_vote
        ):
            # A deposed leader that missed the election learns our term from this and steps
            # down; without it, pre-vote would keep it from ever hearing of the new term.
            self.emit(
                AppendResponse(term=self.term, sender=self.id, to=m.sender, index=0, reject=True)
            )
        elif isinstance(m, RequestVote) and m.pre_vote:
            self.emit(
                VoteResponse(
                    term=self.term, sender=self.id, to=m.sender, granted=False, pre_vote=True
                )
            )

    def _dispatch(self, m: Message) -> None:
        if isinstance(m, RequestVote):
            self._handle_vote_request(m)
        elif isinstance(m, VoteResponse):
            self._handle_vote_response(m)
        elif isinstance(m, AppendEntries):
            self._follow(m.sender)
            self.receiver.append(m)
        elif isinstance(m, Heartbeat):
            self._follow(m.sender)
            self.receiver.heartbeat(m)
        elif isinstance(m, InstallSnapshot):
            self._follow(m.sender)
            self.receiver.snapshot_chunk(m)
        elif isinstance(m, TimeoutNow):
            if self.role is not Role.LEADER:
                self._campaign(pre_vote=False, transfer=True)
        elif isinstance(m, ReadIndexResponse):
            self.reads.answered(m)
        elif self.role is Role.LEADER:
            self.replication.handle_response(m)

    def _follow(self, leader: str) -> None:
        if self.role is not Role.FOLLOWER:
            self._become_follower(self.term, leader)
        self.lead = leader
        self.election_elapsed = 0
        self._since_leader_heard = 0

    def _in_lease(self) -> bool:
        """Whether this node must not help elect another leader: it heard from one less
        than an election timeout ago (CheckQuorum), or leads itself. With ``lease_reads``
        a leader's reads rely on it, so it is counted apart from the term and ``lead``:
        a higher-term message that is not a vote request (the late rejection of a
        pre-vote) resets those, and must not let a vote of that term through."""
        if not self.config.check_quorum:
            return False
        if self.config.lease_reads:
            return self.role is Role.LEADER or self._since_leader_heard < self.config.election_ticks
        return self.lead is not None and self.election_elapsed < self.config.election_ticks

    def _handle_vote_request(self, m: RequestVote) -> None:
        # A request of a higher term was refused in step() already; one of our own term
        # may find ``lead`` cleared by a higher-term message, and the promise standing.
        refused = not m.transfer and self._in_lease()
        can_vote = (
            self.vote == m.sender
            or (self.vote is None and self.lead is None and not refused)
            or (m.pre_vote and m.term > self.term)
        )
        if can_vote and self.log.is_up_to_date(m.last_index, m.last_term):
            term = m.term if m.pre_vote else self.term
            self.emit(
                VoteResponse(
                    term=term, sender=self.id, to=m.sender, granted=True, pre_vote=m.pre_vote
                )
            )
            if not m.pre_vote:
                self.vote = m.sender
                self.election_elapsed = 0
        else:
            self.emit(
                VoteResponse(
                    term=self.term, sender=self.id, to=m.sender, granted=False, pre_vote=m.pre_vote
                )
            )

    def _handle_vote_response(self, m: VoteResponse) -> None:
        expected = Role.PRE_CANDIDATE if m.pre_vote else Role.CANDIDATE
        if self.role is not expected:
            return
        self.tracker.record_vote(m.sender, m.granted)
        if self.tracker.granted_votes() >= self.quorum():
            self._win_election(m.pre_vote)
        elif self.tracker.rejected_votes() >= self.quorum():
            self._become_follower(self.term, None)

    # --- Ready ---------------------------------------------------------------------------

    def _hard_state(self) -> HardState:
        return HardState(self.term, self.vote, self.log.committed)

    def has_ready(self) -> bool:
        if self._awaiting_advance:
            return False
        return bool(
            self.replication.broadcast_due
            or self.reads.has_output()
            or self._msgs
            or self.receiver.installed
            or self.log.stable < self.log.last_index()
            or self._hard_state() != self._persisted
            or self.log.committed > self.log.applied
        )

    def ready(self) -> Ready:
        """Collect the work for the host; call :meth:`advance` once it is done."""
        if self._awaiting_advance:
            raise RaftError("ready() called again before advance()")
        self.replication.flush(self.reads.take_heartbeat_context())
        state = self._hard_state()
        entries = self.log.unstable()
        early, late = self._split_messages()
        read_states, dropped_reads = self.reads.take_output()
        ready = Ready(
            hard_state=state if state != self._persisted else None,
            entries=entries,
            snapshot=self.receiver.installed,
            messages=late,
            early_messages=early,
            committed=self.log.committed_entries(MAX_APPLY_BYTES),
            read_states=read_states,
            dropped_reads=dropped_reads,
            lease_round=self.lease.sent,  # (after the flush above, which may number one)
        )
        ready.must_sync = bool(
            entries
            or self.receiver.installed
            or (
                ready.hard_state
                and (state.term, state.vote) != (self._persisted.term, self._persisted.vote)
            )
        )
        self._msgs = []
        self.receiver.installed = None
        self._awaiting_advance = True
        return ready

    def _split_messages(self) -> tuple[list[Message], list[Message]]:
        """Messages that may go out before this Ready is persisted, and the rest.

        A leader whose term and vote are already durable may replicate entries before its
        own write of them completes (Raft thesis, 10.2.1): its own copy counts towards a
        quorum only once ``advance`` reports it persisted, so commitment still means a
        durable majority, and the leader's disk write overlaps the followers'. Everything
        else (votes, acknowledgements) promises durable state and must wait.
        """
        durable = (self._persisted.term, self._persisted.vote) == (self.term, self.vote)
        if self.role is not Role.LEADER or not durable:
            return [], self._msgs
        early: list[Message] = [m for m in self._msgs if isinstance(m, LEADER_MESSAGES)]
        late: list[Message] = [m for m in self._msgs if not isinstance(m, LEADER_MESSAGES)]
        return early, late

    def advance(self, ready: Ready) -> None:
        """The host persisted, sent and applied what ``ready`` held."""
        self._awaiting_advance = False
        if ready.hard_state is not None:
            self._persisted = ready.hard_state
        if ready.entries:
            last = ready.entries[-1]
            self.log.stable_to(last.index, last.term)
        for entry in ready.committed:
            if entry.index <= self.log.applied:
                continue
            kind = entry_kind(entry)
            if kind is EntryKind.CONF_CHANGE:
                self._apply_conf_change(decode_conf_change(entry))
            elif kind is EntryKind.MEMBERSHIP:
                self.membership = decode_membership(entry.data[1:])
            self.log.applied = entry.index
        if self.role is Role.LEADER and ready.entries:
            self_progress = self.progress.get(self.id)
            if self_progress is not None:
                self_progress.acknowledge(self.log.stable)
            self.replication.maybe_commit()  # followers learn it with the next message

    def _apply_conf_change(self, change: ConfChange) -> None:
        self.tracker.apply_change(change)
        node = change.node
        if self.role is not Role.LEADER:
            return
        if node == self.id and change.kind is ConfChangeKind.REMOVE:
            self._become_follower(self.term, None)
            return
        if change.kind is ConfChangeKind.ADD_LEARNER:
            self.tracker.track(node, self.log.last_index() + 1)
            self.replication.send_append(node)
        elif change.kind is ConfChangeKind.REMOVE:
            self.progress.pop(node, None)
        if self.replication.maybe_commit():  # a smaller quorum may commit what was stuck
            self.replication.broadcast_append()
