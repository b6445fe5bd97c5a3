"""What every shardwise service reply says about its outcome, and a replica's own view.

Replies of shardwise services carry a ``status`` (``ok``, ``not_leader``, ``retry``,
``halted``) and, when known, the ``leader``; a status reply starts with the fields of
:class:`ReplicaStatus`. Services, clients and the routers all speak these words.
"""

from __future__ import annotations

from typing import Literal, Protocol, TypeAlias

import msgspec

from shardwise.model.bounds import Int64

Status: TypeAlias = Literal["ok", "not_leader", "retry", "halted", "disk_full"]
"""The outcome field of every service reply. ``retry``: the outcome is unknown or the
request was dropped (a leader change, a timeout); a write retried with the same client id
and sequence number applies once. ``halted``: the replica stopped on an entry it could not
apply (another replica may still answer). ``disk_full``: a write refused because the
server's disk is (nearly) full; nothing of it was accepted, and writes resume by
themselves once there is room (docs/operations.md, "Full disks")."""


class ReplicaStatus(msgspec.Struct, frozen=True):
    """One replica's own view of its Raft group, answered without going through Raft;
    every service's status reply starts with these fields and adds its own."""

    node_id: str
    role: str
    term: Int64
    leader: str | None
    commit: Int64
    applied: Int64
    halted: bool


class ServiceReply(Protocol):
    @property
    def status(self) -> str: ...

    @property
    def leader(self) -> str | None: ...
