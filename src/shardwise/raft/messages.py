"""The messages Raft nodes exchange, and what a log entry's payload holds.

Every message is a frozen msgspec Struct, tagged so that the wire codec can decode the
union with validation (bad input becomes a typed error, never a half-built object). Node
ids are strings. ``sender``/``to`` travel in every message so that one connection can
carry many groups' traffic without ambiguity.
"""

from __future__ import annotations

import enum
from typing import Final, TypeAlias

import msgspec

from shardwise.errors import RaftError
from shardwise.model.bounds import Int64
from shardwise.storage.types import LogEntry, SnapshotMeta

# --- entry payloads ------------------------------------------------------------------


class EntryKind(enum.IntEnum):
    """The first byte of every entry's payload says what the rest is."""

    COMMAND = 0
    """An application command, handed to the state machine when committed."""
    CONF_CHANGE = 1
    """A membership change (:class:`ConfChange`), applied by the core when committed."""
    NOOP = 2
    """The empty entry a new leader appends, so it can commit entries of earlier terms."""
    MEMBERSHIP = 3
    """A whole :class:`Membership`: entry 1 of every group, written at bootstrap."""


class ConfChangeKind(enum.IntEnum):
    ADD_LEARNER = 0
    """Add a non-voting member that receives the log; promote it once it has caught up."""
    PROMOTE = 1
    """Make a caught-up learner a voter."""
    REMOVE = 2
    """Remove a voter or learner."""


class ConfChange(msgspec.Struct, frozen=True, array_like=True):
    kind: ConfChangeKind
    node: str


class Membership(msgspec.Struct, frozen=True, array_like=True):
    """Who votes and who only listens; stored in snapshots as ``SnapshotMeta.config``."""

    voters: frozenset[str]
    learners: frozenset[str] = frozenset()


_encode = msgspec.msgpack.Encoder().encode
_decode_conf = msgspec.msgpack.Decoder(ConfChange).decode
_decode_membership = msgspec.msgpack.Decoder(Membership).decode


def command_payload(data: bytes) -> bytes:
    return bytes((EntryKind.COMMAND,)) + data


def conf_change_payload(change: ConfChange) -> bytes:
    return bytes((EntryKind.CONF_CHANGE,)) + _encode(change)


def membership_payload(membership: Membership) -> bytes:
    return bytes((EntryKind.MEMBERSHIP,)) + _encode(membership)


NOOP_PAYLOAD: Final = bytes((EntryKind.NOOP,))


def entry_kind(entry: LogEntry) -> EntryKind:
    """The kind of an entry; an unknown kind stops the replica rather than diverge."""
    if not entry.data:
        raise RaftError(f"entry {entry.index} has an empty payload: not written by shardwise")
    try:
        return EntryKind(entry.data[0])
    except ValueError:
        raise RaftError(f"entry {entry.index} has unknown kind {entry.data[0]}") from None


def decode_conf_change(entry: LogEntry) -> ConfChange:
    try:
        return _decode_conf(entry.data[1:])
    except msgspec.DecodeError as exc:
        raise RaftError(f"entry {entry.index}: undecodable membership change: {exc}") from exc


def encode_membership(membership: Membership) -> bytes:
    return _encode(membership)


def decode_membership(data: bytes) -> Membership:
    try:
        return _decode_membership(data)
    except msgspec.DecodeError as exc:
        raise RaftError(f"undecodable membership in snapshot: {exc}") from exc


# --- messages ------------------------------------------------------------------------


class _Message(msgspec.Struct, frozen=True, tag_field="t", kw_only=True):
    term: Int64
    sender: str
    to: str


class AppendEntries(_Message, tag="app", frozen=True):
    prev_index: Int64
    prev_term: Int64
    entries: tuple[LogEntry, ...] = ()
    commit: Int64 = 0
    context: bytes = b""
    """Non-empty when the append also confirms leadership for a ReadIndex read (as a
    heartbeat's would): reads ride on appends that go out anyway."""


class AppendResponse(_Message, tag="app_resp", frozen=True):
    index: Int64
    """On success the highest index now known to match; on rejection the rejected
    ``prev_index``, so the leader can ignore stale rejections."""
    reject: bool = False
    hint_index: Int64 = 0
    """On rejection: the follower's best guess of where the logs may agree."""
    hint_term: Int64 = 0
    """The term of the follower's entry at ``hint_index`` (fast back-off by term)."""
    context: bytes = b""
    """The append's read context, echoed (whether or not the append succeeded)."""


class Heartbeat(_Message, tag="hb", frozen=True):
    commit: Int64 = 0
    context: bytes = b""
    """Non-empty when the heartbeat confirms leadership for a ReadIndex read."""
    round: Int64 = 0
    """The leader's number for this heartbeat round, echoed back (``raft/lease.py``)."""


class HeartbeatResponse(_Message, tag="hb_resp", frozen=True):
    context: bytes = b""
    round: Int64 = 0
    space_low: bool = False
    """The follower's disk is nearly full: a leader looking for a successor with room
    passes it over (``RaftNode.space_low``)."""


class RequestVote(_Message, tag="vote", frozen=True):
    last_index: Int64
    last_term: Int64
    pre_vote: bool = False
    transfer: bool = False
    """Set when a leadership transfer started this election: voters ignore their lease."""


class VoteResponse(_Message, tag="vote_resp", frozen=True):
    granted: bool
    pre_vote: bool = False


class InstallSnapshot(_Message, tag="snap", frozen=True):
    """One chunk of a snapshot; chunks are acknowledged and sent one at a time."""

    meta: SnapshotMeta
    offset: Int64
    total: Int64
    data: bytes
    done: bool


class SnapshotResponse(_Message, tag="snap_resp", frozen=True):
    index: Int64
    """The snapshot's index, to match responses to the transfer in flight."""
    offset: Int64
    """The next byte the follower expects (a resume point after loss or restart)."""
    done: bool = False
    reject: bool = False


class TimeoutNow(_Message, tag="timeout_now", frozen=True):
    """A leader asks the transfer target to start an election at once."""


class ReadIndexRequest(_Message, tag="read", frozen=True):
    """A follower forwards a linearizable read to the leader."""

    context: bytes


class ReadIndexResponse(_Message, tag="read_resp", frozen=True):
    context: bytes
    index: Int64


Message: TypeAlias = (
    AppendEntries
    | AppendResponse
    | Heartbeat
    | HeartbeatResponse
    | RequestVote
    | VoteResponse
    | InstallSnapshot
    | SnapshotResponse
    | TimeoutNow
    | ReadIndexRequest
    | ReadIndexResponse
)

MESSAGE_TYPES: Final = (
    AppendEntries,
    AppendResponse,
    Heartbeat,
    HeartbeatResponse,
    RequestVote,
    VoteResponse,
    InstallSnapshot,
    SnapshotResponse,
    TimeoutNow,
    ReadIndexRequest,
    ReadIndexResponse,
)
