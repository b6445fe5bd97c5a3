"""The calls a replica group server answers, for clients and for other groups.

A server's node id is its address (``"127.0.0.1:7201"``), so any process holding a
configuration can reach every server it names (see :func:`server_address`).

Outcomes a caller acts on travel in the reply's ``status``: the :data:`Status` values
of :mod:`shardwise.model.replies` plus ``wrong_group`` (this group does not serve the shard in
its configuration ``config_num``: fetch a configuration newer than that and retry with
the same client id and sequence number). Transport failures arrive as typed exceptions.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any, Final, Literal, TypeAlias

import msgspec

from shardwise.model.bounds import Int64, UInt64
from shardwise.model.config import ShardId, Table
from shardwise.model.kv import Key, KVOp, KVResult, Value, check_type
from shardwise.model.replies import ReplicaStatus
from shardwise.model.sql import RowCapture, SqlStatement
from shardwise.model.txn import TxnPart, TxnVote
from shardwise.net.links import Address
from shardwise.net.rpc import RpcMethod

ShardStatus: TypeAlias = Literal[
    "ok", "not_leader", "retry", "halted", "wrong_group", "disk_full", "locked"
]
"""``locked``: a prepared transaction holds the key (a write's, or a read of what it
writes): nothing was done, ask again (``shardwise.client.router``)."""

PULL_CHUNK_BYTES: Final = 4 << 20
"""Largest piece of a shard image one pull reply or one log entry carries."""

_encode = msgspec.msgpack.Encoder().encode


def server_address(server: str) -> Address:
    """The address in a server's node id ``HOST:PORT`` (a ``ValueError`` otherwise)."""
    host, sep, port = server.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"a group server is named HOST:PORT, not {server!r}")
    return host, int(port)


# --- clients -------------------------------------------------------------------------


class WriteRequest(msgspec.Struct, frozen=True):
    """A put, append, delete or compare-and-set (or a get through the log)."""

    shard: ShardId
    client_id: str
    seq: Int64
    op: KVOp


class ReadRequest(msgspec.Struct, frozen=True):
    """A linearizable read of one key (through ReadIndex, not the log)."""

    shard: ShardId
    key: Key
    versioned: bool = False
    """A transaction's read: answered with the key's version too, and ``locked`` while a
    prepared transaction writes it (``txn.read``'s answer, batched like any read). A
    server that predates the field answers version 0: a transaction's commit is then
    refused as a conflict, never wrongly accepted."""
    validated: bool = False
    """With ``versioned``: the transaction validates the version later (at its prepare,
    in the log, or by a linearizable read again), so the leader answers from what it has
    applied, with no ReadIndex round: a stale answer only makes the commit a conflict
    (``shardserver/DESIGN.md``, "Transactions", on reads)."""

    def __post_init__(self) -> None:
        check_type("key", self.key)


class ScanRequest(msgspec.Struct, frozen=True):
    """Keys of one shard in (byte) order: ``start <= key < end``, starting with
    ``prefix``."""

    shard: ShardId
    prefix: Key | None = None
    start: Key | None = None
    end: Key | None = None
    limit: Int64 = 1000

    def __post_init__(self) -> None:
        for what, bound in (("prefix", self.prefix), ("start", self.start), ("end", self.end)):
            if bound is not None:
                check_type(f"scan {what}", bound)


class KVReply(msgspec.Struct, frozen=True):
    status: ShardStatus
    leader: str | None = None
    config_num: Int64 = 0
    """The configuration the group is in (for ``wrong_group``: fetch a newer one)."""
    result: KVResult | None = None
    """For a write: what the state machine answered."""
    value: Value | None = None
    """For a read: the value, as written (``None``: absent)."""
    items: list[tuple[Key, Value]] = []
    """For a scan: the pairs found, in key (byte) order; a key is a str if it is valid
    UTF-8, else bytes."""
    error: str = ""
    """For a request refused at the door (a key or value over the limits): why."""
    denied: bool = False
    """The refusal is the logged-in user's lack of a grant (``error`` says which)."""
    version: Int64 = 0
    """For a transaction's read: the write version that last wrote the key (negative:
    absent; see ``txn/state.version_of``)."""
    locked_by: str = ""
    """With ``locked``: a tag of the transaction that holds the key (``txn_tag``: not its
    id, which would let the reader resolve or fence it)."""


class BatchRequest(msgspec.Struct, frozen=True):
    """Reads and writes a client had ready for this server at the same moment, sent as
    one call (see :mod:`shardwise.client.batching`). Each is answered exactly as if it had come
    alone (its own status, leader hint and result); the writes enter the log as one
    entry (``ClientBatch``) and the reads share one ReadIndex round. Nothing is atomic
    across them. At most ``MAX_BATCH_OPS`` of each."""

    reads: tuple[ReadRequest, ...] = ()
    writes: tuple[WriteRequest, ...] = ()
    commits: tuple[TxnCommitRequest, ...] = ()
    prepares: tuple[TxnPrepareRequest, ...] = ()
    resolves: tuple[TxnShardsRequest, ...] = ()
    """Transactions' calls (``txn.commit``, ``txn.prepare``, ``txn.resolve``), each
    answered as if it had come alone; they join the writes' log entry when they touch
    shards nothing else in it touches (at most ``MAX_BATCH_TXNS`` in all)."""
    sql_reads: tuple[SqlReadRequest, ...] = ()
    """SQL read fragments (``shard.sql_read``), at the reads' linearizable point; their
    rows share one reply frame and one read's time (``MAX_BATCH_SQL_READS`` at most)."""
    sql_writes: tuple[SqlWriteRequest, ...] = ()
    """SQL write batches (``shard.sql_write``), each through its door as if alone; those
    on shards nothing before them in the entry touches join the writes' log entry, the
    others are logged alone (``MAX_BATCH_SQL_WRITES`` at most)."""


class BatchReply(msgspec.Struct, frozen=True):
    reads: list[KVReply] = []
    """One per read, in the request's order."""
    writes: list[KVReply] = []
    """One per write, in the request's order."""
    txns: list[TxnReply] = []
    """One per transaction call: the commits, then the prepares, then the resolves."""
    sql: list[SqlReply] = []
    """One per SQL call: the reads, then the writes. (Empty from a server older than
    batched SQL, which drops them unread: the client then sends them alone.)"""


# --- SQL -----------------------------------------------------------------------------
#
# A fragment planned by ``shardwise.sql`` against the catalog of configuration
# ``catalog_num``, whose tables of the shard's keyspace have digest ``schema``
# (:func:`schema_digest`). The shard runs it only with the same tables; otherwise
# the reply's ``schema`` says ``behind`` (this group has yet to reach the client's
# configuration: ask again shortly) or ``changed`` (the client's catalog is older than
# this group's configuration ``config_num``: refresh it and plan again).

MAX_SQL_BATCH_BYTES: Final = 4 << 20
"""Largest encoded SQL write batch (one log entry): a shard's share of one INSERT. Four
times a KV value's limit, so a bulk load needs few entries, yet far under a Raft append
frame and the core's cap on uncommitted bytes. A larger INSERT is refused before anything
is sent: split it."""

MAX_SQL_STATEMENTS: Final = 1000
"""Statements in one batch (the planner sends one per statement and shard)."""


SchemaVerdict: TypeAlias = Literal["", "behind", "changed"]
"""How a shard's tables compare with those a SQL statement was planned against: the same
(""), the group has yet to reach the client's configuration ("behind": ask again), or the
client planned with an older catalog ("changed": refresh and plan again)."""


def keyspace_tables(tables: Mapping[str, Table], keyspace: str) -> dict[str, Table]:
    """The tables of ``keyspace``, by name in sorted order."""
    return {n: tables[n] for n in sorted(tables) if tables[n].keyspace == keyspace}


def schema_digest(tables: Mapping[str, Table], keyspace: str) -> int:
    """A 64-bit digest of the definitions of ``keyspace``'s tables. A SQL request carries
    the digest of the catalog it was planned with; the shard runs it only if its group's
    configuration has the same one (see ``statemachine.py``)."""
    encoded = _encode(keyspace_tables(tables, keyspace))
    return int.from_bytes(hashlib.blake2b(encoded, digest_size=8).digest(), "little")


class ShippedRows(msgspec.Struct, frozen=True, array_like=True):
    """A table a read fragment reads beside the shard's own (a broadcast join's small
    side): see ``shardwise.sql.shipped``, which checks and makes it."""

    name: str
    columns: tuple[tuple[str, str], ...]
    """Each column's name and affinity."""
    rows: tuple[tuple[Any, ...], ...] = ()


class SqlReadRequest(msgspec.Struct, frozen=True):
    """A read fragment on one shard, linearizable (ReadIndex, then the shard's SQLite)."""

    shard: ShardId
    sql: str
    params: dict[str, Any] = {}
    """SQLite values by parameter name (checked by the server: see ``SqlStatement``)."""
    max_rows: Int64 = 1000
    """More rows than this: the read fails with a limit error (no row is sent)."""
    catalog_num: Int64 = 0
    schema: UInt64 = 0
    shipped: tuple[ShippedRows, ...] = ()


class SqlWriteRequest(msgspec.Struct, frozen=True):
    """A write batch on one shard: one log entry, all statements or none, exactly once
    per ``(client_id, seq)`` (the same session table as :class:`WriteRequest`)."""

    shard: ShardId
    client_id: str
    seq: Int64
    statements: tuple[SqlStatement, ...]
    catalog_num: Int64 = 0
    schema: UInt64 = 0


class TxnSqlRequest(msgspec.Struct, frozen=True):
    """A transaction's visit to one shard's SQL (``txn.sql``, a ReadIndex read on the
    leader: nothing enters the log). The shard runs ``pending`` (the transaction's writes
    there so far), then ``statements`` (a write to try: its row count) or ``read`` (a read
    fragment: its rows), and rolls everything back; the reply carries the shard's SQL
    version, which the transaction's commit validates."""

    shard: ShardId
    pending: tuple[SqlStatement, ...] = ()
    statements: tuple[SqlStatement, ...] = ()
    read: SqlStatement | None = None
    max_rows: Int64 = 1000
    catalog_num: Int64 = 0
    schema: UInt64 = 0
    shipped: tuple[ShippedRows, ...] = ()
    """Tables ``read`` reads beside the shard's own (as :class:`SqlReadRequest`'s)."""
    capture: tuple[RowCapture, ...] = ()
    """Tables whose rows ``statements`` change are recorded (``SqlReply.captured``): a
    write to a table with global indexes learns the entries to change."""


class SqlFailure(msgspec.Struct, frozen=True):
    """A statement that failed on the shard and changed nothing there: ``code`` is the
    :class:`~shardwise.errors.SqlError` code (``execution``, ``constraint``, ``limit``)."""

    code: str
    message: str
    limit: str = ""
    value: Int64 = 0


class SqlReply(msgspec.Struct, frozen=True):
    status: ShardStatus
    leader: str | None = None
    config_num: Int64 = 0
    error: str = ""
    """Refused at the door (over a limit, unbindable values): nothing reached the log."""
    denied: bool = False
    """The refusal is the logged-in user's lack of a grant (``error`` says which)."""
    schema: SchemaVerdict = ""
    failure: SqlFailure | None = None
    rows: list[tuple[Any, ...]] = []
    """For a read: the rows, in the fragment's order."""
    rowcount: Int64 = 0
    """For a write: rows the batch changed."""
    stale: bool = False
    """For a write: a newer write of the same client id was applied; this one was not."""
    version: Int64 = -1
    """For a transaction's visit (``txn.sql``): the shard's SQL version it saw."""
    locked_by: str = ""
    """With ``locked``: a tag of the transaction that holds the shard's SQL tables."""
    captured: list[list[tuple[Any, ...]]] = []
    """For a visit with ``capture``: each capture's rows ``(sign, rowid, *columns)``."""


MAX_BATCH_SQL_READS: Final = 16
"""SQL reads in one :class:`BatchRequest`: their rows share one reply frame and one
read's time (a read the sharing stops is answered ``retry``; the client asks alone)."""

MAX_BATCH_SQL_WRITES: Final = 64
"""SQL writes in one :class:`BatchRequest`."""

MAX_BATCHED_SQL_BYTES: Final = 64 << 10
"""A SQL call whose request encodes larger than this goes alone (the client's rule): a
bulk load's chunk gains nothing from company, and would make the entry it shares large."""

MAX_GROUP_READ_SHARDS: Final = 1024
"""Shards one :class:`SqlGroupReadRequest` may name."""


class SqlGroupReadRequest(msgspec.Struct, frozen=True):
    """One read fragment on several shards of ``keyspace`` that one group serves (a
    scatter read's share of that group), behind one ReadIndex round: what ``shards``
    SQL reads would do, one :class:`SqlReply` per shard in ``SqlGroupReadReply``.
    Together the shards' rows fit one reply frame and their fragments one read's time;
    a shard past either is answered ``retry``, to be read on its own."""

    keyspace: str
    shards: tuple[Int64, ...]
    sql: str
    params: dict[str, Any] = {}
    max_rows: Int64 = 1000
    """Per shard, as :class:`SqlReadRequest`'s."""
    catalog_num: Int64 = 0
    schema: UInt64 = 0
    shipped: tuple[ShippedRows, ...] = ()


class SqlGroupReadReply(msgspec.Struct, frozen=True):
    status: ShardStatus
    """Not ``ok``: nothing ran (``leader`` may say where to ask); ``error``: refused at
    the door, as a read's would be."""
    leader: str | None = None
    config_num: Int64 = 0
    """(Unused: each shard's reply carries its own.)"""
    error: str = ""
    denied: bool = False
    replies: list[SqlReply] = []
    """With ``ok``: one per shard, in the request's order, as a lone read's reply."""


class SqlSchemaRequest(msgspec.Struct, frozen=True):
    """The group's configuration and the digest of ``keyspace``'s tables in it (a
    ReadIndex read on the leader): a client waits with it for a DDL to reach a group."""

    keyspace: str


class SqlSchemaReply(msgspec.Struct, frozen=True):
    status: ShardStatus
    leader: str | None = None
    config_num: Int64 = 0
    schema: UInt64 = 0
    error: str = ""
    denied: bool = False


# --- between groups ------------------------------------------------------------------


PullMode: TypeAlias = Literal["frozen", "base", "delta"]


class PullRequest(msgspec.Struct, frozen=True):
    """A piece of an image of ``shard``, which the caller's group gains in configuration
    ``config_num`` from this server's group. ``mode``:

    * ``frozen``: the copy this group froze when it lost the shard in ``config_num``;
    * ``base``: a copy to start from: the frozen copy if this server has it, else a copy
      of the shard while it still serves here (a pre-copy), taken once and kept while it
      is pulled;
    * ``delta``: what changed in the frozen copy after write version ``since`` (the
      caller's base). Asking also tells this group that the caller holds a base, which
      is what it waits for before it freezes the shard. ``since=-1``: the caller is
      still copying its base (keep waiting); always answered ``not_ready``.
    """

    shard: ShardId
    config_num: Int64
    offset: Int64 = 0
    max_bytes: Int64 = PULL_CHUNK_BYTES
    mode: PullMode = "frozen"
    since: Int64 = 0


class PullReply(msgspec.Struct, frozen=True):
    status: Literal["ok", "not_ready", "too_old", "halted", "forbidden"]
    """``not_ready``: this server has not frozen the shard for ``config_num`` (it is
    behind, or it is not the group that lost it; for a base: it does not hold the shard):
    ask again or ask another server. ``too_old``: a delta cannot start at ``since``
    (see ``ShardStore.export_delta``): pull a new base. ``forbidden``: the caller is a
    client, not a cluster node (only groups move shards)."""
    total: Int64 = 0
    """Length of the whole image."""
    crc: Int64 = 0
    """CRC32C of the whole image: pieces are taken from one image only."""
    data: bytes = b""
    version: Int64 = 0
    """The write version the image brings the shard to."""
    live: bool = False
    """The image is a base taken while the shard still serves here (not a frozen copy, nor
    a delta of one): nothing waits for it, so the caller may copy it unhurried."""


class HandedOffRequest(msgspec.Struct, frozen=True):
    """The new owner installed ``shard`` for ``config_num``: the frozen copy may go."""

    shard: ShardId
    config_num: Int64


class HandedOffReply(msgspec.Struct, frozen=True):
    status: Literal["ok", "not_leader", "retry", "halted", "forbidden", "disk_full"]
    leader: str | None = None


# --- operators -----------------------------------------------------------------------


class StatusRequest(msgspec.Struct, frozen=True):
    pass


class ShardInfo(msgspec.Struct, frozen=True):
    shard: ShardId
    state: str
    keys: Int64
    bytes: Int64
    reads: Int64 = 0
    """Reads (``READ``, ``SCAN``, ``SQL_READ``) of the shard this replica has served since
    it started: a replica-local counter, not replicated, so a leader change or a restart
    starts it again; ``shardwise status`` turns two samples into a rate. (Defaults: a
    reply from a server without the counters still decodes.)"""
    writes: Int64 = 0
    """Writes (``WRITE``, ``SQL_WRITE``) of the shard this replica has served, likewise."""


class ArrivalInfo(msgspec.Struct, frozen=True):
    """A shard arriving in the group for configuration ``config_num``: how far its copy
    is, for ``shardwise status`` and the progress bars (replica-local, not replicated)."""

    shard: ShardId
    config_num: Int64
    phase: str
    """``base`` (copying a base of it), ``frozen-wait`` (the base is here; waiting for
    the source to freeze the shard) or ``delta`` (copying what changed since the base)."""
    copied: Int64
    """Bytes of the current image (base or delta) in the log so far."""
    total: Int64 = 0
    """The image's size (0: not known here; only the leader that pulls it knows)."""


# --- consistency checks (``checks.py``, ``checker.py``) ----------------------------------


ReplicaCheckState: TypeAlias = Literal["ok", "pending", "missing", "halted", "unreachable"]
"""What one replica gave a check: its digests (``ok``), not all of them in time
(``pending``), none for that index (``missing``: it restored from a later snapshot, or
restarted), or no answer (``halted``, ``unreachable``). Only ``ok`` replicas compare."""


class ShardDigest(msgspec.Struct, frozen=True, array_like=True):
    shard: ShardId
    digest: str
    """``content_digest`` of the shard's file without its ``applied_index`` (hex)."""


class ReplicaDigests(msgspec.Struct, frozen=True):
    node_id: str
    state: ReplicaCheckState
    digests: list[ShardDigest] = []
    skipped: list[ShardId] = []
    """Shards over the check's byte budget on this replica (not compared)."""
    error: str = ""


class ShardMismatch(msgspec.Struct, frozen=True):
    shard: ShardId
    digests: dict[str, str]
    """Replica node id -> its digest of the shard (``absent``: the replica has no such
    serving shard at that index)."""
    differ: list[str]
    """The replicas outside the largest agreeing set (all of them on a tie)."""


class CheckOutcome(msgspec.Struct, frozen=True):
    """One consistency check of a group: every replica's digests at log ``index``."""

    gid: Int64
    index: Int64
    finished_at: float
    """Unix time the comparison was made."""
    shards: Int64
    """Shards compared (held by at least two replicas that answered)."""
    replicas: list[ReplicaDigests]
    mismatches: list[ShardMismatch] = []
    error: str = ""


class CheckRequest(msgspec.Struct, frozen=True):
    """Run a consistency check of the group now (its leader answers, once compared)."""


class CheckReply(msgspec.Struct, frozen=True):
    status: Literal["ok", "not_leader", "retry", "halted", "disk_full", "forbidden"]
    leader: str | None = None
    outcome: CheckOutcome | None = None


class DigestsRequest(msgspec.Struct, frozen=True):
    """This replica's digests of the check logged at ``index``."""

    index: Int64


class DigestsReply(msgspec.Struct, frozen=True):
    status: Literal["ok", "missing", "halted", "forbidden"]
    pending: Int64 = 0
    """Shards still being hashed: ask again."""
    digests: list[ShardDigest] = []
    skipped: list[ShardId] = []
    error: str = ""


class StatusReply(ReplicaStatus, frozen=True):
    gid: Int64
    config_num: Int64
    shards: list[ShardInfo] = msgspec.field(default_factory=list)
    arrivals: list[ArrivalInfo] = msgspec.field(default_factory=list)
    """Shards being copied in (a default: a reply from an older server still decodes)."""
    halt_reason: str = ""
    """Why the replica halted (with ``halted``); "" while it runs."""
    last_check: CheckOutcome | None = None
    """The latest consistency check this replica ran as leader (``None``: none yet)."""
    checks_run: Int64 = 0
    mismatches_found: Int64 = 0
    """Checks this replica ran as leader since it started, and the shards they found
    differing (replica-local counters)."""


class TxnPrepareRequest(msgspec.Struct, frozen=True):
    """Prepare ``txn``'s parts for the shards this group serves (``model/txn.py``)."""

    txn: str
    participants: tuple[ShardId, ...]
    parts: tuple[TxnPart, ...]


class TxnShardsRequest(msgspec.Struct, frozen=True):
    """Resolve (commit or abort) or fence ``txn`` at ``shards``."""

    txn: str
    shards: tuple[ShardId, ...]
    commit: bool = False
    """For a resolve: commit (else abort)."""


class TxnCommitRequest(msgspec.Struct, frozen=True):
    """A transaction whose every part this group serves: one log entry (``TxnCommit``)."""

    client_id: str
    seq: Int64
    parts: tuple[TxnPart, ...]


class TxnReply(msgspec.Struct, frozen=True):
    status: ShardStatus
    leader: str | None = None
    config_num: Int64 = 0
    votes: tuple[TxnVote, ...] = ()
    """Each shard's answer, in the request's order."""
    error: str = ""
    """A request refused at the door (a limit, a malformed id): why; nothing was done."""
    denied: bool = False
    sql_failure: SqlFailure | None = None
    """With ``error``: a part's SQL refused at the door, as a SQL write's would be."""


WRITE = RpcMethod("shard.write", WriteRequest, KVReply)
READ = RpcMethod("shard.read", ReadRequest, KVReply)
BATCH = RpcMethod("shard.batch", BatchRequest, BatchReply)
SCAN = RpcMethod("shard.scan", ScanRequest, KVReply)
PULL = RpcMethod("shard.pull", PullRequest, PullReply)
HANDED_OFF = RpcMethod("shard.handed_off", HandedOffRequest, HandedOffReply)
STATUS = RpcMethod("shard.status", StatusRequest, StatusReply)
SQL_READ = RpcMethod("shard.sql_read", SqlReadRequest, SqlReply)
SQL_GROUP_READ = RpcMethod("shard.sql_group_read", SqlGroupReadRequest, SqlGroupReadReply)
SQL_WRITE = RpcMethod("shard.sql_write", SqlWriteRequest, SqlReply)
SQL_SCHEMA = RpcMethod("shard.sql_schema", SqlSchemaRequest, SqlSchemaReply)
CHECK = RpcMethod("shard.check", CheckRequest, CheckReply)
DIGESTS = RpcMethod("shard.digests", DigestsRequest, DigestsReply)
TXN_READ = RpcMethod("txn.read", ReadRequest, KVReply)
TXN_PREPARE = RpcMethod("txn.prepare", TxnPrepareRequest, TxnReply)
TXN_RESOLVE = RpcMethod("txn.resolve", TxnShardsRequest, TxnReply)
TXN_FENCE = RpcMethod("txn.fence", TxnShardsRequest, TxnReply)
TXN_COMMIT = RpcMethod("txn.commit", TxnCommitRequest, TxnReply)
TXN_SQL = RpcMethod("txn.sql", TxnSqlRequest, SqlReply)
