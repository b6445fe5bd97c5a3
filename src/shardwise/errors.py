"""The one error hierarchy of shardwise.

Every error that shardwise raises on purpose derives from :class:`ShardwiseError`, so a
caller can catch everything of ours with one ``except`` and still tell the kinds apart.
Each layer adds its own branch here (placement, storage, raft, net, ...), and boundaries
(the wire, the CLI) translate these classes, never bare ``ValueError``/``KeyError``.
"""

from __future__ import annotations

from typing import TypeVar


class ShardwiseError(Exception):
    """Root of every error shardwise raises on purpose."""


E = TypeVar("E", bound=ShardwiseError)


def error_for(code: str, family: type[E]) -> type[E] | None:
    """The class of ``family`` (itself or a subclass at any depth) whose ``code`` is
    ``code``, or None: how a boundary turns a code from the wire back into an error.

    Codes are unique within a family, not across families (the controller's ``catalog``
    and SQL's ``catalog`` are different errors), hence ``family``."""
    pending: list[type[E]] = [family]
    while pending:
        kind = pending.pop()
        if kind.__dict__.get("code") == code:
            return kind
        pending.extend(kind.__subclasses__())
    return None


# --- placement ---------------------------------------------------------------------------


class PlacementError(ShardwiseError):
    """A placement structure was given input it cannot place."""


class EmptyPlacementError(PlacementError):
    """A lookup was made on a placement with no nodes (or no shards)."""


class UnknownNodeError(PlacementError, KeyError):
    """A node that is not part of the placement was named."""

    def __init__(self, node: object) -> None:
        super().__init__(node)
        self.node = node

    def __str__(self) -> str:
        return f"unknown node {self.node!r}"


class DuplicateNodeError(PlacementError):
    """A node was added twice, or listed twice."""


class InvalidNodeError(PlacementError):
    """A node name is not a non-empty ``str``."""


class InvalidWeightError(PlacementError):
    """A weight is not a positive, finite number."""


class NotEnoughNodesError(PlacementError):
    """More distinct nodes were asked for than the placement holds."""


class UnsupportedKeyTypeError(PlacementError, TypeError):
    """A key is not ``str``, ``bytes`` (or ``bytearray``/``memoryview``) or ``int``."""


class InvalidPlacementArgumentError(PlacementError, ValueError):
    """A size, count or factor given to a placement structure is out of its range."""


class UnsupportedPlacementOperationError(PlacementError):
    """The algorithm cannot do this by design (e.g. jump hash removing a middle bucket)."""


# --- storage -----------------------------------------------------------------------------


class StorageError(ShardwiseError):
    """Durable storage could not be read or written as required."""


class CorruptLogError(StorageError):
    """A record in the middle of the log failed its checksum or could not be decoded.

    A torn or corrupt record at the *tail* is an interrupted write and is truncated on
    recovery; anything corrupt before the tail means data loss and is never skipped.
    """


class SnapshotError(StorageError):
    """A snapshot file is missing, corrupt, or does not match what it claims to hold."""


class StaleSnapshotError(SnapshotError):
    """A snapshot was saved that is not newer than the one storage already holds."""


class LogCompactedError(StorageError):
    """Entries were asked for that a snapshot has replaced (the leader must send it)."""


class LogUnavailableError(StorageError):
    """Entries were asked for beyond the last index storage holds."""


# --- raft --------------------------------------------------------------------------------


class RaftError(ShardwiseError):
    """The Raft layer refused an operation or found its state impossible."""


class NotLeaderError(RaftError):
    """Only the leader accepts proposals; ``leader`` is the current one if known."""

    def __init__(self, node: str, leader: str | None) -> None:
        hint = f"; the leader is {leader!r}" if leader else "; no leader is known"
        super().__init__(f"node {node!r} is not the leader{hint}")
        self.node = node
        self.leader = leader


class ProposalDroppedError(RaftError):
    """A proposal was not accepted: a leadership transfer is in progress, too much is
    uncommitted, or the leader lost its leadership before the entry committed."""


class ConfChangeError(RaftError):
    """A membership change is not allowed now (one is pending, the learner has not caught
    up, the node is unknown, or the change would leave no voter)."""


class ReplicaHaltedError(RaftError):
    """A committed entry could not be applied; the replica stops rather than diverge."""


class RaftTimeoutError(RaftError):
    """An operation did not finish within its timeout. Its outcome is unknown: a proposal
    may still commit, so retry it with the same client id and sequence number."""


class ReplicaStoppedError(RaftError):
    """The replica is not running (not started yet, or stopped). An operation in flight
    when it stopped has an unknown outcome, as after a timeout."""


class ProposalOutcomeUnknownError(RaftError):
    """A snapshot from the leader replaced the log past a pending proposal, so whether its
    entry committed cannot be told here; retry it with the same client id and sequence."""


class CommandDecodeError(RaftError):
    """A committed command could not be decoded (a replica group answers it as failed)."""


class CommandVersionError(CommandDecodeError):
    """A committed command of a version newer than this code: the replica halts."""


# --- net ---------------------------------------------------------------------------------


class NetError(ShardwiseError):
    """The network layer could not carry a message or a call."""


class ProtocolError(NetError):
    """Bytes from a peer are not shardwise's wire protocol; the connection is closed."""


class BadMagicError(ProtocolError):
    """A frame does not start with the protocol's magic bytes (not a shardwise peer)."""


class UnsupportedVersionError(ProtocolError):
    """A frame or a message is of a protocol version this node does not speak."""


class FrameTooLargeError(ProtocolError):
    """A frame is larger than the size allowed at this point of the connection."""


class TruncatedFrameError(ProtocolError):
    """The connection ended in the middle of a frame."""


class ChecksumMismatchError(ProtocolError):
    """A frame's body does not match the checksum in its header."""


class UnknownMessageTypeError(ProtocolError):
    """A frame holds a message type this node does not know."""


class InvalidMessageError(ProtocolError):
    """A frame's body is not valid MessagePack, or does not validate as its type."""


class UnexpectedMessageError(ProtocolError):
    """A valid message arrived where the protocol does not allow it (e.g. before the
    handshake finished, or a Raft message from a client)."""


class AuthenticationError(NetError):
    """A peer failed the handshake: wrong secret, replayed proof, or wrong identity."""


class HandshakeTimeoutError(AuthenticationError):
    """A peer did not finish the handshake in time."""


class HandshakeInterruptedError(NetError):
    """The peer closed the connection during the handshake without saying why: nothing
    is known about the secret (a network failure, a peer that went away)."""


class ServerBusyError(NetError):
    """The server turned the connection away, and said why, for a reason other than the
    secret: it is shutting down, has no room for us, or the handshake took too long.
    Nothing was sent; retry later or try another replica. ``reason`` is the server's."""

    def __init__(self, message: str, reason: str = "") -> None:
        super().__init__(message)
        self.reason = reason


class TooManyConnectionsError(ServerBusyError):
    """The server has too many connections (its cap, or too many still in their
    handshake and ours was the one to make room): retry shortly."""


class FrameBudgetError(ProtocolError):
    """An unfinished incoming frame was cut to keep the bytes buffered for unfinished
    frames within the server's budget: it could never fit, or it stalled while others
    waited for room."""


class TransportClosedError(NetError):
    """The transport is shut down (or shutting down); what was in flight is failed."""


class PeerUnreachableError(NetError):
    """No connection to the peer could be made within the dial attempts allowed."""


class UnknownPeerError(NetError, KeyError):
    """A peer was named whose address this transport does not know."""


class ConnectionLostError(NetError):
    """The connection a call was sent on broke before the answer came: the call's outcome
    is unknown, as after a timeout."""


class RpcTimeoutError(NetError):
    """A call got no answer before its deadline. Its outcome is unknown."""


class RpcOverloadedError(NetError):
    """A call was refused for lack of room (a full queue or too many calls in flight),
    here or at the peer. It was not executed; retry later or elsewhere."""


class RemoteCallError(NetError):
    """The peer answered a call with an error (unknown method, invalid request, a failing
    handler, shutting down); ``code`` says which."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


# --- controller --------------------------------------------------------------------------


class ControllerError(ShardwiseError):
    """The shard controller refused a request; the configuration is unchanged."""

    code = "controller"


class UnknownGroupError(ControllerError):
    code = "unknown_group"


class GroupExistsError(ControllerError):
    code = "group_exists"


class InvalidServersError(ControllerError):
    code = "invalid_servers"


class UnknownShardError(ControllerError):
    code = "unknown_shard"


class OrphanedShardsError(ControllerError):
    """The change would leave shards that hold data with no group to serve them (the
    last groups leaving): join another group first."""

    code = "orphaned_shards"


class UnknownKeyspaceError(ControllerError):
    code = "unknown_keyspace"


class KeyspaceExistsError(ControllerError):
    code = "keyspace_exists"


class InvalidSchemeError(ControllerError):
    code = "invalid_scheme"


class CatalogError(ControllerError):
    """A table or index definition is invalid, missing, or already exists."""

    code = "catalog"


class AccessChangeError(ControllerError):
    """A change of users or roles was refused (a name taken or missing, a built-in role,
    a role still held)."""

    code = "access"


class InvalidQueryError(ControllerError):
    code = "invalid_query"


# --- client ------------------------------------------------------------------------------


class ClientError(ShardwiseError):
    """A client could not complete a request."""


class ClientTimeoutError(ClientError, TimeoutError):
    """A request did not complete within its total deadline (after all its retries).

    For a write this means the outcome is unknown: it may have been applied.
    """


class ClientClosedError(ClientError):
    """The client was used before :meth:`start` or after :meth:`close`."""


class RequestRefusedError(ClientError, ValueError):
    """A request was refused as over a limit (a key, a value, a scan's size), by a server
    at its door or by the client before sending it; nothing was applied."""


class PermissionDeniedError(ControllerError, RequestRefusedError):
    """The logged-in user's roles do not allow what it asked for (a change of the
    cluster, a key, a table); nothing was done. A controller refusal and a refused
    request at once, so either kind of handler catches it."""

    code = "permission_denied"


class InvalidKVTypeError(RequestRefusedError, TypeError):
    """A key or value is neither ``str`` nor ``bytes`` (a ``str`` stands for its UTF-8
    bytes); nothing was sent."""


class StaleWriteError(ClientError):
    """A write came back stale: a newer write with the same client id had been applied, so
    this one was not. A client never causes this on its own (each write in flight has a
    client id of its own); it means two live clients share a client id."""


# --- shardserver -------------------------------------------------------------------------


class ShardStoreError(ShardwiseError):
    """A shard's SQLite database could not be opened, read, written or replaced."""


class ShardFormatError(ShardStoreError):
    """A file is not the database of the expected shard (not SQLite, no shard tables, or
    another shard)."""


class ShardSchemaVersionError(ShardFormatError):
    """A shard database has a schema version this program does not know."""

    def __init__(self, found: object, expected: int) -> None:
        super().__init__(f"shard schema version {found!r}, expected {expected}")
        self.found = found
        self.expected = expected


class CorruptShardSnapshotError(ShardStoreError):
    """Exported shard bytes failed their magic, length, checksum or integrity check; nothing
    was replaced."""


class ShardLimitError(ShardStoreError, ValueError):
    """An input is over a shard store limit (key, value, scan rows, export size); nothing
    was changed."""


class ShardNotFoundError(ShardStoreError):
    """No shard database exists at the path given."""


class ShardExistsError(ShardStoreError):
    """A shard database was to be created where a file already exists."""


class ShardStoreClosedError(ShardStoreError):
    """The shard store was used after :meth:`close` or :meth:`delete`."""


class InvalidShardTransitionError(ShardwiseError):
    """A shard's lifecycle was asked to move along an edge its transition table lacks."""


# --- cli and the local cluster -----------------------------------------------------------


class CliError(ShardwiseError):
    """The operator CLI or ``shardwise up`` cannot do what it was asked; the message says
    what to do about it (``shardwise.cli.exits`` maps each kind to an exit code)."""


class ClusterNotFoundError(CliError):
    """No cluster description (``cluster.toml``) where the command looked for one."""


class ClusterConfigError(CliError):
    """A cluster description is invalid (a missing field, a duplicate name or address)."""


class ClusterInUseError(CliError):
    """Another ``shardwise up`` holds the cluster directory's lock."""


class ClusterNotRunningError(CliError):
    """No controller replica accepts connections at the addresses the description names."""


class WrongSecretError(CliError):
    """The cluster refused the secret in the description's secret file."""


class ChangeTimeoutError(CliError):
    """A configuration change was accepted, but its shard moves did not all finish in the
    time allowed; they go on in the background."""


# --- sql ---------------------------------------------------------------------------------


class SqlError(ShardwiseError):
    """A SQL statement was refused or failed; ``code`` names the kind for the boundaries
    (the wire, the shell, DB-API) to translate."""

    code = "sql"


class SqlSyntaxError(SqlError):
    """The text is not valid SQL; ``line`` and ``column`` (both from 1) say where."""

    code = "syntax"

    def __init__(self, message: str, line: int, column: int) -> None:
        super().__init__(f"syntax error at line {line}, column {column}: {message}")
        self.line = line
        self.column = column


class UnsupportedSqlError(SqlError):
    """Valid SQL that shardwise does not run (yet); ``construct`` names it."""

    code = "unsupported"

    def __init__(self, construct: str, detail: str = "") -> None:
        tail = f": {detail}" if detail else ""
        super().__init__(f"{construct} is not supported{tail}")
        self.construct = construct


class SqlCatalogError(SqlError):
    """A statement names a table or column that does not exist, or creates one that does,
    or declares a table shardwise cannot distribute."""

    code = "catalog"


class SqlSemanticError(SqlError):
    """A statement that parses but means nothing valid (an aggregate in WHERE, a column
    neither grouped nor aggregated, ...)."""

    code = "semantic"


class SqlParameterError(SqlError):
    """The parameters do not match the statement's placeholders (count, names, types)."""

    code = "parameter"


class DistributionValueError(SqlError):
    """A row's distribution column value is missing, NULL or of a type it cannot take."""

    code = "distribution_value"


class DistributionColumnUpdateError(SqlError):
    """An UPDATE tried to change a row's distribution column (which would move the row to
    another shard): delete and insert it instead."""

    code = "distribution_update"


class NondeterministicSqlError(SqlError):
    """A write uses a value that cannot be fixed at the coordinator (e.g. ``random()``
    per row in an UPDATE); replicas applying it would diverge."""

    code = "nondeterministic"


class SqlLimitError(SqlError):
    """A statement or its result is over a named limit; nothing was applied (a read's
    partial results were dropped)."""

    code = "limit"

    def __init__(self, limit: str, value: int, message: str) -> None:
        super().__init__(f"{message} (limit {limit}={value})")
        self.limit = limit
        self.value = value
        self.detail = message
        """The message without the limit (a boundary that rebuilds the error needs it)."""


class SqlWriteTooCostlyError(SqlLimitError):
    """A SQL write passed a shard's work limit (``value`` SQLite VM steps): stopped at the
    same step on every replica, it changed nothing."""

    code = "statement_too_costly"


class SqlExecutionError(SqlError):
    """A fragment failed where it ran (a constraint, a type error, an integer overflow).
    The message names the user's tables and columns (``users.id``, never the shard's
    ``sql_users``); ``shard`` names the shard it failed on, as a detail (the shell prints
    it on a line of its own), empty for the coordinator's own merge."""

    code = "execution"

    def __init__(self, message: str, shard: str = "") -> None:
        super().__init__(message)
        self.shard = shard
        self.detail = message
        """What failed, without where (a boundary that rebuilds the error needs it)."""


class SqlConstraintError(SqlExecutionError):
    """A write broke a constraint on a shard (UNIQUE, NOT NULL, a type check): that
    shard's batch changed nothing."""

    code = "constraint"


class SqlSchemaChangedError(SqlError):
    """A shard's group holds a newer definition of the keyspace's tables than the catalog
    the statement was planned with; nothing ran on that shard. ``Client.sql`` plans the
    statement again on its own when nothing was applied anywhere; a caller sees this
    only inside the error of a multi-shard write that other shards applied."""

    code = "schema_changed"


# --- dbapi -------------------------------------------------------------------------------
#
# PEP 249's exception classes, for ``shardwise.dbapi`` (which exports them under their
# standard names: ``Error``, ``Warning``, ``InterfaceError``, ...). Each raised one has the
# shardwise error it stands for as its ``__cause__``.


class DbapiWarning(ShardwiseError):  # noqa: N818 - PEP 249 names it Warning
    """PEP 249's ``Warning`` (never raised: shardwise has no warnings to give)."""


class DbapiError(ShardwiseError):
    """PEP 249's ``Error``: the base of every error ``shardwise.dbapi`` raises. ``shard``
    names the shard a statement failed on, when it failed on one (a detail: the message
    names the user's table and column)."""

    shard: str = ""


class InterfaceError(DbapiError):
    """The DB-API was misused: a closed connection or cursor, a fetch with no result."""


class DatabaseError(DbapiError):
    """An error of the database (every other DB-API error)."""


class DataError(DatabaseError):
    """A value the statement cannot take (a NULL or mistyped distribution value)."""


class OperationalError(DatabaseError):
    """The cluster could not run the statement: a timeout, a limit, an execution error."""


class IntegrityError(DatabaseError):
    """A constraint failed (``SqlConstraintError``)."""


class InternalError(DatabaseError):
    """shardwise itself failed (a reply it could not understand)."""


class ProgrammingError(DatabaseError):
    """The statement is wrong: syntax, a missing table or column, bad parameters."""


class NotSupportedError(DatabaseError):
    """Valid SQL that shardwise does not run, or cannot run deterministically."""


# --- testing -----------------------------------------------------------------------------


class HistoryFormatError(ShardwiseError, ValueError):
    """A recorded client history (e.g. a Jepsen log) could not be parsed."""
