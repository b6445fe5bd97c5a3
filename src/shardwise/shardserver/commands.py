"""What a replica group's Raft log carries: client operations and shard moves.

Every entry is a :class:`GroupCommand`, a versioned envelope decoded with validation. An
entry of a version this replica does not know halts it (``CommandVersionError``: its code
is older than the log's); one of a known version that does not decode is answered with a
``failed`` result, the same on every replica (``CommandDecodeError``). Each shard-move
command names the configuration it belongs to, so a late, repeated or stale one is
recognised and ignored by every replica alike.

**Versions.** Version 1 has the KV and shard-move commands; version 2 adds
:class:`SqlWrite`; version 3 the pre-copy's :class:`InstallBase` and
:class:`InstallDelta`; version 4 :class:`ClientBatch`; version 5 lets a
:class:`ClientOp` (alone or in a batch) carry ``bytes`` keys and values (before, every key
and value was a str); version 6 a :class:`SqlWrite` with its work limit (``max_steps``),
which also holds it to the allow-list of functions (see ``sqlshard.py``); version 7
:class:`CheckShards` (the replicas' consistency check, ``checks.py``); version 8 the
transactions' :class:`TxnPrepare`, :class:`TxnResolve`, :class:`TxnFence`,
:class:`TxnExpire` and :class:`TxnCommit` (``txn/state.py``); version 9 a transaction's
part with SQL (``TxnPart.sql``); version 10 a :class:`ClientBatch` carrying
transactions' commands (``txns``); version 11 one carrying SQL writes (``sql``). Each
command
is written with the lowest version that has it (a client operation with only str keys
and values still as version 1 or 4), so a log
without SQL writes stays readable by version-1 replicas (a rolling upgrade), and a
version-1 replica that meets a SQL write halts with a clear "version 2 is unknown"
instead of misreading it (a version-4 replica that meets bytes: "version 5 is unknown").
"""

from __future__ import annotations

from typing import Final, Literal, TypeAlias

import msgspec

from shardwise.errors import CommandDecodeError, CommandVersionError
from shardwise.model.bounds import Int64, UInt64
from shardwise.model.config import Configuration, ShardId
from shardwise.model.kv import KVOp, KVResult, has_bytes
from shardwise.model.sql import SqlStatement
from shardwise.model.txn import TxnPart, TxnVote
from shardwise.shardserver.protocol import SchemaVerdict

GROUP_COMMAND_VERSION: Final = 11
"""The newest envelope version this code writes and reads (see the module's docstring)."""

INSTALL_CHUNK_BYTES: Final = 256 << 10
"""Largest piece of a shard image in one log entry: a large shard enters the log as many
small entries, so it never stalls the group's other traffic behind one huge append."""


class ClientOp(msgspec.Struct, frozen=True, array_like=True, tag="op"):
    shard: ShardId
    client_id: str
    seq: Int64
    op: KVOp


class ClientBatch(msgspec.Struct, frozen=True, array_like=True, tag="op_batch"):
    """Client operations that reached the leader together: one log entry, applied in
    order, each exactly as a :class:`ClientOp` of its own (its own shard, de-duplication
    and result). Nothing is atomic across them: one on a shard the group does not serve
    is answered ``wrong_group`` while the others apply."""

    ops: tuple[ClientOp, ...]
    txns: tuple[TxnPrepare | TxnResolve | TxnCommit, ...] = ()
    """Transactions' commands that reached the leader with the operations, each applied
    as if it were an entry of its own, after the operations and the SQL writes (version
    10). Each touches shards that nothing before it in the entry touches: a store
    applies one entry's changes at most once (its applied index), so one that does not
    is answered ``ignored`` (a retry goes in another entry), the same on every replica."""
    sql: tuple[SqlWrite, ...] = ()
    """SQL writes that reached the leader with the operations, each applied as if it
    were an entry of its own, after the operations (version 11); likewise each on a
    shard nothing before it in the entry touches, or ``ignored``."""


class Reconfigure(msgspec.Struct, frozen=True, array_like=True, tag="reconfigure"):
    """Move the group to ``config`` (numbered one past the group's current one)."""

    config: Configuration


class InstallChunk(msgspec.Struct, frozen=True, array_like=True, tag="chunk"):
    """Bytes ``offset:offset+len(data)`` of the image of a shard being pulled for
    configuration ``config_num``; offset 0 starts the image afresh."""

    shard: ShardId
    config_num: Int64
    offset: Int64
    data: bytes


class InstallBase(msgspec.Struct, frozen=True, array_like=True, tag="install_base"):
    """The image received so far (``total`` bytes, CRC32C ``crc``) is a *base* of the
    shard gained in ``config_num``: a copy taken at write version ``version``, perhaps
    while the source still served it. Keep it, not serving, for :class:`InstallDelta`.
    Taken for the group's next configuration too, before the group moves to it."""

    shard: ShardId
    config_num: Int64
    total: Int64
    crc: Int64
    version: Int64


class InstallDelta(msgspec.Struct, frozen=True, array_like=True, tag="install_delta"):
    """The image received since :class:`InstallBase` is the delta from write version
    ``since`` to the source's frozen copy: apply it to the base and serve the shard."""

    shard: ShardId
    config_num: Int64
    total: Int64
    crc: Int64
    since: Int64


class InstallShard(msgspec.Struct, frozen=True, array_like=True, tag="install"):
    """The pulled image is complete: check it and serve the shard."""

    shard: ShardId
    config_num: Int64
    total: Int64
    crc: Int64


class HandOffDone(msgspec.Struct, frozen=True, array_like=True, tag="handed_off"):
    """(At the source.) The group that gained ``shard`` in ``config_num`` installed it:
    the frozen copy is garbage."""

    shard: ShardId
    config_num: Int64


class AckDelivered(msgspec.Struct, frozen=True, array_like=True, tag="ack_delivered"):
    """(At the target.) The source confirmed :class:`HandOffDone`: stop telling it."""

    shard: ShardId
    config_num: Int64


class SqlWrite(msgspec.Struct, frozen=True, array_like=True, tag="sql_write"):
    """A SQL write batch for one shard: all its statements or none, de-duplicated by
    ``client_id`` and ``seq`` like :class:`ClientOp`. ``catalog_num`` and ``schema`` are
    the configuration the client planned with and the digest of the keyspace's tables in
    it (:func:`~shardwise.shardserver.protocol.schema_digest`): the batch runs only
    against the same tables (see ``statemachine.py``)."""

    shard: ShardId
    client_id: str
    seq: Int64
    catalog_num: Int64
    schema: UInt64
    statements: tuple[SqlStatement, ...]
    max_steps: Int64 = 0
    """The most SQLite VM steps the batch may take, set by the leader that logged it, so
    every replica stops it at the same step (0: an entry of version 5 or before, which
    replays as it first ran: no limit and no allow-list)."""


class CheckShards(msgspec.Struct, frozen=True, array_like=True, tag="check_shards"):
    """Every replica digests each shard it serves as it applies this entry, so all of
    them hash the same state (the same applied index), and keeps the digests for the
    leader or ``shardwise check`` to compare (``checks.py``). Changes nothing replicated.
    ``shards``: only these (empty: every serving shard)."""

    shards: tuple[ShardId, ...] = ()


class TxnPrepare(msgspec.Struct, frozen=True, array_like=True, tag="txn_prepare"):
    """Validate and lock the ``parts`` (this group's shards) of transaction ``txn``, whose
    every participant is listed (a recoverer asks them all); each shard votes. ``now_ms``:
    the leader's wall clock when it logged the entry (how old ``txn`` is: see
    ``model/txn.MAX_TXN_AGE_MS``)."""

    txn: str
    participants: tuple[ShardId, ...]
    parts: tuple[TxnPart, ...]
    now_ms: Int64
    user: str = ""
    """The user the client logged in as ("" for a node): only that user, or a node, may
    resolve the transaction."""


class TxnResolve(msgspec.Struct, frozen=True, array_like=True, tag="txn_resolve"):
    """Commit (apply the writes kept aside) or abort ``txn`` at ``shards``."""

    txn: str
    commit: bool
    shards: tuple[ShardId, ...]
    user: str = ""
    """Who asks ("" for a node): see :class:`TxnPrepare`."""


class TxnFence(msgspec.Struct, frozen=True, array_like=True, tag="txn_fence"):
    """A recoverer's question: what did ``shards`` record for ``txn``? Those that recorded
    nothing record ``fenced``, so ``txn`` can no longer prepare there."""

    txn: str
    shards: tuple[ShardId, ...]


class TxnExpire(msgspec.Struct, frozen=True, array_like=True, tag="txn_expire"):
    """The leader's clean-up: every shard serving here forgets the final records (not
    ``prepared``) of transactions too old to prepare any more at ``now_ms``."""

    now_ms: Int64


class TxnCommit(msgspec.Struct, frozen=True, array_like=True, tag="txn_commit"):
    """A transaction whose every part this group serves: validated and applied in this
    one entry, or refused whole. De-duplicated by ``client_id`` and ``seq`` in the first
    part's shard (a retry after a move asks the group that holds it now)."""

    client_id: str
    seq: Int64
    parts: tuple[TxnPart, ...]


Command: TypeAlias = (
    ClientOp
    | ClientBatch
    | Reconfigure
    | InstallChunk
    | InstallShard
    | InstallBase
    | InstallDelta
    | HandOffDone
    | AckDelivered
    | SqlWrite
    | CheckShards
    | TxnPrepare
    | TxnResolve
    | TxnFence
    | TxnExpire
    | TxnCommit
)

_FIRST_VERSION: Final[dict[type, int]] = {
    SqlWrite: 2,
    InstallBase: 3,
    InstallDelta: 3,
    ClientBatch: 4,
    CheckShards: 7,
    TxnPrepare: 8,
    TxnResolve: 8,
    TxnFence: 8,
    TxnExpire: 8,
    TxnCommit: 8,
}
"""The envelope version that introduced a command (1 when absent)."""

BYTES_VERSION: Final = 5
"""The envelope version from which a client operation may carry ``bytes``."""

CHECKED_SQL_VERSION: Final = 6
"""The envelope version from which a :class:`SqlWrite` carries ``max_steps``."""

TXN_SQL_VERSION: Final = 9
"""The envelope version from which a transaction's part may carry SQL."""

BATCHED_TXN_VERSION: Final = 10
"""The envelope version from which a :class:`ClientBatch` may carry transactions' commands."""

BATCHED_SQL_VERSION: Final = 11
"""The envelope version from which a :class:`ClientBatch` may carry SQL writes."""


class GroupCommand(msgspec.Struct, frozen=True, array_like=True):
    version: Int64
    command: Command


class _Envelope(msgspec.Struct, frozen=True, array_like=True):
    """A :class:`GroupCommand` with its command still encoded: the version is read first."""

    version: int
    command: msgspec.Raw


Outcome: TypeAlias = Literal["ok", "wrong_group", "ignored", "failed"]
"""``failed``: the entry could not be applied (it does not decode, or breaks a limit the
edge checks): the same on every replica, and nothing changed (see ``GroupResult.error``)."""


class SqlWriteResult(msgspec.Struct, frozen=True, array_like=True):
    """What a :class:`SqlWrite` came to. ``error``: the batch failed (a constraint, a
    type error) and changed nothing; a retry gets the same answer. ``stale``: a newer
    write of the same client id was applied, this one was not. ``schema``: refused before
    anything ran (not remembered, so a retry runs it once the tables match)."""

    rowcount: Int64 = 0
    error: str = ""
    stale: bool = False
    schema: SchemaVerdict = ""
    constraint: bool = False
    """With ``error``: the failure was a broken constraint (UNIQUE, NOT NULL)."""
    code: str = ""
    """With ``error``: the :class:`~shardwise.errors.SqlError` code when it is neither
    ``execution`` nor ``constraint``: ``nondeterministic`` (refused: it could differ
    between replicas) or ``statement_too_costly`` (over ``limit`` VM steps)."""
    limit: Int64 = 0
    """With ``statement_too_costly``: the limit it passed."""
    locked: str = ""
    """A prepared transaction holds the shard's SQL tables (its id): nothing ran and
    nothing was remembered, so a retry runs once it resolves."""


class GroupResult(msgspec.Struct, frozen=True, array_like=True):
    outcome: Outcome
    config_num: Int64
    result: KVResult | None = None
    sql: SqlWriteResult | None = None
    """For a :class:`SqlWrite` (a field of its own: results are never in the log, so
    adding one changes no stored format)."""
    batch: tuple[GroupResult, ...] = ()
    """For a :class:`ClientBatch`: each operation's result, in order."""
    error: str = ""
    """With outcome ``failed``: why."""
    index: Int64 = 0
    """For a :class:`CheckShards`: the entry's log index (the check's name)."""
    votes: tuple[TxnVote, ...] = ()
    """For a transaction's command: each shard's answer, in the command's order."""


_encode = msgspec.msgpack.Encoder().encode
_envelope_decoder = msgspec.msgpack.Decoder(_Envelope)
_command_decoder = msgspec.msgpack.Decoder(Command)
_result_decoder = msgspec.msgpack.Decoder(GroupResult)


def encode(command: Command) -> bytes:
    return _encode(GroupCommand(_version_for(command), command))


def _version_for(command: Command) -> int:
    """The lowest envelope version that can carry ``command``."""
    version = _FIRST_VERSION.get(type(command), 1)
    if _carries_bytes(command):
        version = max(version, BYTES_VERSION)
    if isinstance(command, SqlWrite) and command.max_steps:
        version = max(version, CHECKED_SQL_VERSION)
    if isinstance(command, TxnPrepare | TxnCommit) and any(p.sql for p in command.parts):
        version = max(version, TXN_SQL_VERSION)
    if isinstance(command, ClientBatch) and command.txns:
        version = max(version, BATCHED_TXN_VERSION)
    if isinstance(command, ClientBatch) and command.sql:
        version = max(version, BATCHED_SQL_VERSION)
    return version


def _carries_bytes(command: Command) -> bool:
    if isinstance(command, ClientOp):
        return has_bytes(command.op)
    if isinstance(command, ClientBatch):
        return any(has_bytes(op.op) for op in command.ops)
    return False


def decode(data: bytes) -> Command:
    """The command in a committed entry: :class:`CommandVersionError` if its version is
    newer than this code (halt), :class:`CommandDecodeError` if it is not a command of
    its version (the same on every replica of this version: answered, not halted on)."""
    try:
        envelope = _envelope_decoder.decode(data)
    except msgspec.DecodeError as exc:  # (ValidationError is one)
        raise CommandDecodeError(f"undecodable group command: {exc}") from None
    if envelope.version > GROUP_COMMAND_VERSION:
        raise CommandVersionError(f"group command version {envelope.version} is unknown")
    if envelope.version < 1:
        raise CommandDecodeError(f"group command version {envelope.version} is not one")
    try:
        command: Command = _command_decoder.decode(envelope.command)
    except msgspec.DecodeError as exc:
        raise CommandDecodeError(f"undecodable group command: {exc}") from None
    first = _version_for(command)
    if envelope.version < first:
        raise CommandDecodeError(
            f"a group command of version {envelope.version} cannot carry "
            f"{_what(command)} (version {first} and later)"
        )
    return command


def _what(command: Command) -> str:
    name = type(command).__name__
    if isinstance(command, ClientBatch) and command.sql:
        return f"{name} with SQL writes"
    if isinstance(command, ClientBatch) and command.txns:
        return f"{name} with transactions' commands"
    if isinstance(command, TxnPrepare | TxnCommit) and any(p.sql for p in command.parts):
        return f"{name} with SQL"
    return f"{name} with bytes keys or values" if _carries_bytes(command) else name


def encode_result(result: GroupResult) -> bytes:
    return _encode(result)


def decode_result(data: bytes) -> GroupResult:
    return _result_decoder.decode(data)
