"""The calls the shard controller serves."""

from __future__ import annotations

from typing import Final

import msgspec

from shardwise.model.access import AccessCatalog
from shardwise.model.bounds import Int64
from shardwise.model.config import ChangeResult, Configuration, Op
from shardwise.model.replies import ReplicaStatus, Status
from shardwise.net.rpc import RpcMethod

CONTROLLER_GROUP: Final = 0
"""The controller's Raft group id on the wire (replica groups use positive ids)."""

MAX_WATCH_S: Final = 30.0
"""The longest a watch waits in the server before answering with what it has."""


class ChangeRequest(msgspec.Struct, frozen=True):
    client_id: str
    seq: Int64
    op: Op


class ChangeReply(msgspec.Struct, frozen=True):
    status: Status
    leader: str | None = None
    result: ChangeResult | None = None


class QueryRequest(msgspec.Struct, frozen=True):
    num: Int64 = -1
    """The configuration to return; -1 (or past the latest): the latest."""
    newer_than: Int64 = -1
    """With ``wait_s``: wait until a configuration numbered above this exists (a watch)."""
    wait_s: float = 0.0


class QueryReply(msgspec.Struct, frozen=True):
    status: Status
    leader: str | None = None
    config: Configuration | None = None
    error: str = ""
    message: str = ""


class StatusRequest(msgspec.Struct, frozen=True):
    pass


class StatusReply(ReplicaStatus, frozen=True):
    """One replica's own view, for operators (``shardwise status``): answered by any
    replica, leader or not, without going through Raft."""

    config_num: Int64
    """The latest configuration this replica has applied."""


class AccessRequest(msgspec.Struct, frozen=True):
    """The users and roles: whole for a node (it checks logins and requests against
    them), without password verifiers for a cluster admin, refused to anyone else. With
    ``wait_s``, a watch: wait until a catalog newer than ``newer_than`` exists."""

    newer_than: Int64 = -1
    wait_s: float = 0.0


class AccessReply(msgspec.Struct, frozen=True):
    status: Status
    leader: str | None = None
    catalog: AccessCatalog | None = None
    error: str = ""
    message: str = ""


CHANGE = RpcMethod("ctl.change", ChangeRequest, ChangeReply)
QUERY = RpcMethod("ctl.query", QueryRequest, QueryReply)
STATUS = RpcMethod("ctl.status", StatusRequest, StatusReply)
ACCESS = RpcMethod("ctl.access", AccessRequest, AccessReply)
