"""Transactions across shards: what a client sends and what a participant shard answers.

A transaction reads keys (remembering the *version* each read saw: the write version
that last wrote the key, -1 if absent) and buffers its writes; at commit, each shard it
touched is a *participant* with a :class:`TxnPart`: the reads to validate there and the
writes to apply there. How a commit goes (one log entry when one group holds every
participant, else a prepare per group and a resolve) is in
``src/shardwise/shardserver/DESIGN.md``, "Transactions".

The states a participant records for a transaction (:class:`TxnState`) are final once
they are not ``prepared``: a shard that voted, was fenced or resolved answers the same
for as long as it remembers the transaction.
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import secrets
import time
from typing import Final, TypeAlias

import msgspec

from shardwise.errors import ClientError, ShardLimitError
from shardwise.model.bounds import Int64, UInt64
from shardwise.model.config import ShardId
from shardwise.model.kv import Delete, Key, Put, check_key, check_op, data_size, key_bytes
from shardwise.model.sql import SqlStatement


class TransactionError(ClientError):
    """A transaction did not commit (or may not have: see the subclasses)."""


class TransactionConflictError(TransactionError):
    """The transaction did not commit and changed nothing: a key it read changed, or
    another transaction held one of its keys. Retryable: run it again from the start
    (``Client.run_transaction`` does)."""


class TransactionOutcomeUnknownError(TransactionError):
    """The deadline passed before the client learnt whether the transaction committed
    (its servers were unreachable). It committed everywhere or nowhere: the servers
    settle it on their own (DESIGN.md, "Transactions"); read the keys to find out."""


TxnId: TypeAlias = str
"""A transaction attempt's id, 32 hex digits: the client's wall clock when it began, in
milliseconds (16 digits), then 8 random bytes. A retry after an abort is a new attempt
with a new id, so an id never names two outcomes. The time in it bounds the attempt's
life (:data:`MAX_TXN_AGE_MS`); the random half makes it unguessable, and it is never
shown to anyone but its client (a lock is reported by :func:`txn_tag`)."""

TXN_ID_BYTES: Final = 16

MAX_TXN_AGE_MS: Final = 30_000
"""How long after its id's time a transaction may still prepare. A shard refuses a prepare
past it, by the time the group's leader wrote into the entry (never going back within a
shard), so a record it keeps longer than this (a fence, an abort) can be forgotten: no
prepare of that transaction can come after it. A transaction's deadline is shorter
(:data:`MAX_TXN_DEADLINE_S`), and its client stops before."""

MAX_CLOCK_AHEAD_MS: Final = 10_000
"""How far a client's clock may run ahead of a leader's: a transaction whose id is dated
later than this after the leader's time is refused (its age could not be trusted)."""

MAX_TXN_DEADLINE_S: Final = 20.0
"""The longest deadline a transaction may have (it must end well before its id is
:data:`MAX_TXN_AGE_MS` old)."""

MAX_TXN_KEYS: Final = 1000
"""Reads plus writes in one transaction: they ride in one log entry per group (and in
every participant's lock table until it resolves)."""

MAX_TXN_BYTES: Final = 4 << 20
"""Keys and values one transaction writes, in bytes: its writes ride in one log entry
per group (as a SQL write batch's ``MAX_SQL_BATCH_BYTES``), far below a Raft record."""

MAX_TXN_STATEMENTS: Final = 1000
"""SQL write statements one transaction keeps for one shard (as a SQL write batch's
``MAX_SQL_STATEMENTS``): they are run again for each of its later visits to the shard,
at its prepare and at its commit."""

BLIND: Final = -2
"""The SQL version of a part whose SQL was never read (a statement on its own, made
atomic across shards: nothing to validate, see :class:`TxnSql`)."""

MAX_TXN_PARTICIPANTS: Final = 256
"""Shards one transaction that writes may touch: each records the list of the others,
to recover from (a few KiB at this bound). A transaction that only reads is not bound
by it (its commit only reads every shard's version again)."""

TxnWrite: TypeAlias = Put | Delete
"""What a transaction writes: its last put or delete of each key (an append or a
compare-and-set in a transaction is a read and a put, done by the client)."""


class TxnState(enum.StrEnum):
    """What a participant shard records for a transaction."""

    PREPARED = "prepared"
    """Validated, locks held, writes kept aside: waits for a resolve."""
    COMMITTED = "committed"
    """The writes applied, the locks released."""
    ABORTED = "aborted"
    """Refused at prepare (a conflict), or resolved as aborted: never applies here."""
    FENCED = "fenced"
    """A recoverer asked before any prepare arrived: a prepare that comes later is
    refused, so the transaction can no longer commit (see DESIGN.md)."""


class TxnRead(msgspec.Struct, frozen=True, array_like=True):
    """A key the transaction read, and the version it saw (negative: absent)."""

    key: Key
    version: Int64


class TxnSql(msgspec.Struct, frozen=True, array_like=True):
    """A transaction's SQL on one shard: the shard's SQL version it saw (the write version
    of the last change to any of the shard's tables; :data:`BLIND`: none seen), and the
    write statements to run there, in order. At prepare the version must be unchanged
    and the statements must run (they are tried, then rolled back); at commit they run."""

    version: Int64 = BLIND
    statements: tuple[SqlStatement, ...] = ()
    catalog_num: Int64 = 0
    schema: UInt64 = 0
    """The configuration the statements were planned with, and the digest of the shard
    keyspace's tables in it (as a SQL write carries them): a prepare whose group holds
    other tables refuses the part (``schema_changed``), so a statement planned on an old
    catalog is planned again rather than run against tables it never saw."""


class TxnPart(msgspec.Struct, frozen=True, array_like=True):
    """One participant shard's share of a transaction."""

    shard: ShardId
    reads: tuple[TxnRead, ...] = ()
    writes: tuple[TxnWrite, ...] = ()
    sql: TxnSql | None = None


class TxnVote(msgspec.Struct, frozen=True, array_like=True):
    """A participant's answer to a prepare, a fence or a resolve."""

    shard: ShardId
    state: str
    """A :class:`TxnState` value, ``wrong_group`` (the shard is not served there: nothing
    was recorded) or ``unknown`` (a resolve or fence found no record: see DESIGN.md)."""
    reason: str = ""
    """For a refused prepare: what conflicted (a key that changed, a lock), or the SQL
    error its statements met."""
    rowcount: Int64 = 0
    """For a prepare or a commit in one entry with SQL: the rows its statements change."""
    code: str = ""
    """With ``reason``, when the part's SQL statements failed (and will fail again): the
    :class:`~shardwise.errors.SqlError` code (``constraint``, ``execution``, ...)."""


_encode = msgspec.msgpack.Encoder().encode


def wall_ms() -> int:
    """The wall clock in milliseconds since the epoch; in a simulation, its virtual wall
    clock (an event loop that keeps virtual time says so with a ``wall_time()``)."""
    try:
        wall = getattr(asyncio.get_running_loop(), "wall_time", None)
    except RuntimeError:
        wall = None
    return int(wall() * 1000) if wall is not None else time.time_ns() // 1_000_000


def new_txn_id(now_ms: int | None = None) -> TxnId:
    """A new id, dated ``now_ms`` (default: :func:`wall_ms`). Its random half comes from
    ``secrets``, or from a simulation's seeded generator (an event loop with an ``rng``),
    so that a run replays."""
    when = wall_ms() if now_ms is None else now_ms
    try:
        rng = getattr(asyncio.get_running_loop(), "rng", None)
    except RuntimeError:
        rng = None
    bits = rng.getrandbits(64) if rng is not None else secrets.randbits(64)
    return f"{when:016x}{bits:016x}"


def txn_created_ms(txn: TxnId) -> int:
    """The time in a (checked) id, in milliseconds since the epoch."""
    return int(txn[:16], 16)


def txn_tag(txn: TxnId) -> str:
    """What a reply may say of a transaction holding a key: not its id (the id is what
    lets a caller resolve or fence it), a short digest of it."""
    return hashlib.blake2b(txn.encode(), digest_size=4).hexdigest()


def check_txn_id(txn: str) -> None:
    """A hex id of :data:`TXN_ID_BYTES` bytes, as :func:`new_txn_id` makes (checked at the
    door: the id names rows in every participant's file), dated below 2^63."""
    if len(txn) != 2 * TXN_ID_BYTES or not all(c in "0123456789abcdef" for c in txn):
        raise ShardLimitError(f"a transaction id is {2 * TXN_ID_BYTES} lowercase hex digits")
    if txn_created_ms(txn) >= 1 << 63:
        raise ShardLimitError("a transaction id's time is out of range")


def check_parts(parts: tuple[TxnPart, ...], participants: tuple[ShardId, ...] = ()) -> None:
    """The limits of one transaction (raises :class:`ShardLimitError`), and each
    participant listed once: the same checks at the client and at the door."""
    if len(participants) > MAX_TXN_PARTICIPANTS or len(parts) > MAX_TXN_PARTICIPANTS:
        raise ShardLimitError(f"a transaction touches at most {MAX_TXN_PARTICIPANTS} shards")
    if len(set(participants)) != len(participants):
        raise ShardLimitError("a transaction lists a participant twice")
    shards = [part.shard for part in parts]
    if len(set(shards)) != len(shards):
        raise ShardLimitError("a transaction has two parts for one shard")
    if participants and not set(shards) <= set(participants):
        raise ShardLimitError("a transaction part is for a shard it does not list")
    keys = sum(len(part.reads) + len(part.writes) for part in parts)
    if keys > MAX_TXN_KEYS:
        raise ShardLimitError(f"a transaction reads and writes at most {MAX_TXN_KEYS} keys")
    size = 0
    for part in parts:
        if not part.reads and not part.writes and part.sql is None:
            raise ShardLimitError(f"the transaction's part for shard {part.shard} is empty")
        if part.sql is not None:
            if len(part.sql.statements) > MAX_TXN_STATEMENTS:
                raise ShardLimitError(
                    f"a transaction runs at most {MAX_TXN_STATEMENTS} SQL statements on a shard"
                )
            if part.sql.version < BLIND:
                raise ShardLimitError(f"a SQL version of {part.sql.version} is not one")
            size += len(_encode(part.sql.statements))
        for write in part.writes:
            check_op(write)
            size += data_size(write.key) + (data_size(write.value) if isinstance(write, Put) else 0)
        written = [key_bytes(write.key) for write in part.writes]
        if len(set(written)) != len(written):
            raise ShardLimitError("a transaction part writes a key twice")
        for read in part.reads:
            check_key(read.key)
    if size > MAX_TXN_BYTES:
        raise ShardLimitError(
            f"a transaction writes {size} bytes, over the limit of {MAX_TXN_BYTES}"
        )
