"""A shard's side of transactions, on its file, inside the store's transaction.

Two tables (``shardfile.TXN_TABLES``): ``txns`` holds what this shard recorded for each
transaction it takes part in (a :class:`~shardwise.model.txn.TxnState`, the list of
participants to recover from, the writes kept aside while prepared, and the index it was
recorded at); ``txn_locks`` the locks of prepared transactions: a read takes a shared
lock on its key, a write an exclusive one. A lock is named by its kind and key
(:func:`kv_lock`: ``b"k"`` and the key's bytes); a part with SQL takes the shard's SQL
lock (:data:`SQL_LOCK`, ``b"s"``: all its tables at once), shared if it only read them,
exclusive if it writes.

**SQL** is validated and locked at the granularity of a shard's tables, by the shard's
*SQL version* (``meta.sql_changed_at``: the write version of the last SQL write, DDL or
transaction commit that changed any of its tables). A part carries the version it saw
(``TxnSql``) and its write statements; a prepare checks the version and *tries* the
statements (run, then rolled back: a constraint they break refuses the prepare, with
the error), and a commit runs them. While the lock is held nothing else changes the
shard's tables, so they run at commit exactly as they were tried.

The rules, each deterministic (the same on every replica, from the entry and the file):

* **prepare**: a shard that already recorded the transaction answers what it recorded
  (a retry, or a fence that came first). Otherwise the part is validated: every read's
  key must still be at the version the transaction saw, and no other transaction may
  hold a lock that conflicts (exclusive against anything, shared against exclusive).
  Valid: ``prepared``, locks taken, writes kept. Not: ``aborted``, recorded, so the
  vote never changes. Nobody waits: a conflict is a refusal (see DESIGN.md on
  deadlocks and livelock).
* **resolve**: a prepared transaction commits (its writes applied, stamped with new
  write versions) or aborts, and releases its locks. An abort of a transaction this
  shard never heard of is recorded (a prepare that arrives later is refused); a commit of
  one it never heard of is answered ``unknown`` and changes nothing.
* **fence**: a transaction this shard never heard of is recorded ``fenced``: it can no
  longer prepare here, so a recoverer knows it can no longer commit.
* **expire**: the records that are not ``prepared`` of transactions older than
  ``MAX_TXN_AGE_MS`` are dropped. A prepare is refused once its transaction is that old
  (by the shard's *transaction clock*: the largest leader time its entries carried, so it
  never goes back, and it moves with the shard), so no prepare can follow a dropped
  fence or abort and find no record.
* **commit_local**: every part at once in one entry (one group holds every participant):
  validated as prepares are, then applied; nothing is recorded in ``txns``.

Plain operations meet the locks too (:func:`blocked`): a write to a locked key, or a read
of an exclusively locked one, is answered "locked" and retried by the client, so no one
sees a prepared transaction half done or writes under its validated reads.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final, Protocol

import msgspec

from shardwise.model.config import ShardId
from shardwise.model.kv import Delete, Key, Put, key_bytes
from shardwise.model.sql import SqlStatement
from shardwise.model.txn import (
    BLIND,
    MAX_CLOCK_AHEAD_MS,
    MAX_TXN_AGE_MS,
    TxnId,
    TxnPart,
    TxnState,
    TxnVote,
    TxnWrite,
    txn_created_ms,
    txn_tag,
)
from shardwise.shardserver import kvops
from shardwise.shardserver.commands import SqlWriteResult
from shardwise.shardserver.shardfile import put_meta
from shardwise.shardserver.tracking import ChangeTracker, meta_int

logger = logging.getLogger(__name__)

KV_LOCK: Final = b"k"
"""The kind byte of a key's lock."""

SQL_LOCK: Final = b"s"
"""The lock on a shard's SQL tables (all of them)."""

ABSENT_VERSION: Final = -1
"""The version of a key that is absent and was never deleted since the tombstones began
(:func:`version_of`): apart from every row's, even a row of a file written before change
tracking (version 0), so a key that was there and is gone does not pass for unchanged."""


class Kept(msgspec.Struct, frozen=True, array_like=True):
    """What a prepared transaction keeps aside until it resolves (``txns.writes``)."""

    writes: tuple[Put | Delete, ...] = ()
    sql: tuple[SqlStatement, ...] = ()


class SqlRunner(Protocol):
    """Applies a committed part's SQL statements on a shard's connection, inside the
    store's transaction (the store's runner, so ``sqlshard`` loads only where SQL is
    used). The result's error is the statements' deterministic failure."""

    def __call__(
        self, conn: sqlite3.Connection, statements: Sequence[SqlStatement]
    ) -> SqlWriteResult: ...


_KEPT = msgspec.msgpack.Decoder(Kept)
_WRITES = msgspec.msgpack.Decoder(tuple[Put | Delete, ...])
_PARTICIPANTS = msgspec.msgpack.Decoder(tuple[ShardId, ...])
_ENCODER = msgspec.msgpack.Encoder()


def kv_lock(key: Key) -> bytes:
    return KV_LOCK + key_bytes(key)


@dataclass(frozen=True, slots=True)
class Recorded:
    """A transaction as this shard recorded it."""

    txn: TxnId
    state: TxnState
    participants: tuple[ShardId, ...]
    at: int
    """The log index it was recorded at."""


def recorded(conn: sqlite3.Connection, txn: TxnId) -> Recorded | None:
    row = conn.execute("SELECT state, participants, at FROM txns WHERE txn = ?", (txn,)).fetchone()
    if row is None:
        return None
    return Recorded(txn, TxnState(row[0]), _PARTICIPANTS.decode(row[1]), row[2])


def prepared(conn: sqlite3.Connection) -> list[Recorded]:
    """Every transaction prepared here, oldest first (what a recoverer looks at)."""
    rows = conn.execute(
        "SELECT txn, participants, at FROM txns WHERE state = ? ORDER BY at, txn",
        (TxnState.PREPARED.value,),
    ).fetchall()
    return [Recorded(t, TxnState.PREPARED, _PARTICIPANTS.decode(p), at) for t, p, at in rows]


def version_of(conn: sqlite3.Connection, key: Key) -> int:
    """The write version that last wrote ``key``; for an absent key, a negative number
    that changes whenever the key is written and deleted again: ``ABSENT_VERSION`` less
    the version of its tombstone, or, if that was pruned or never was, of the newest
    pruned tombstone (``gone_horizon``: a later delete's tombstone is newer). Without it
    every absent key would read -1, and a key created and deleted between a read-only
    transaction's two readings would pass for unchanged (an ABA)."""
    raw = key_bytes(key)
    row = conn.execute("SELECT ver FROM kv WHERE key = ?", (raw,)).fetchone()
    if row is not None:
        return int(row[0])
    gone = conn.execute("SELECT ver FROM kv_gone WHERE key = ?", (raw,)).fetchone()
    return ABSENT_VERSION - (int(gone[0]) if gone is not None else meta_int(conn, "gone_horizon"))


def lock_count(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT count(*) FROM txn_locks").fetchone()[0])


def blocked(conn: sqlite3.Connection, key: Key, *, write: bool) -> TxnId | None:
    """The prepared transaction that keeps a plain operation off ``key`` (a write: any
    lock; a read: an exclusive one), or ``None``."""
    sql = "SELECT txn FROM txn_locks WHERE lock = ?" + ("" if write else " AND exclusive")
    row = conn.execute(sql + " LIMIT 1", (kv_lock(key),)).fetchone()
    return None if row is None else str(row[0])


def _locks(part: TxnPart) -> dict[bytes, bool]:
    """The locks a part takes: lock name -> exclusive."""
    wanted = {kv_lock(read.key): False for read in part.reads}
    wanted.update((kv_lock(write.key), True) for write in part.writes)
    if part.sql is not None:
        wanted[SQL_LOCK] = bool(part.sql.statements)
    return wanted


def sql_version(conn: sqlite3.Connection) -> int:
    """The shard's SQL version (see the module docstring)."""
    return meta_int(conn, "sql_changed_at")


def sql_blocked(conn: sqlite3.Connection, *, write: bool) -> TxnId | None:
    """The prepared transaction that keeps a plain SQL statement off the shard's tables
    (a write: any lock on them; a read: an exclusive one), or ``None``."""
    sql = "SELECT txn FROM txn_locks WHERE lock = ?" + ("" if write else " AND exclusive")
    row = conn.execute(sql + " LIMIT 1", (SQL_LOCK,)).fetchone()
    return None if row is None else str(row[0])


def conflict(conn: sqlite3.Connection, txn: TxnId, part: TxnPart) -> str:
    """Why ``part`` cannot prepare now ("" if it can): a read whose key changed, or a
    lock another transaction holds."""
    for read in part.reads:
        now = version_of(conn, read.key)
        if now != read.version:
            return f"key {read.key!r} changed (version {read.version} read, {now} now)"
    if part.sql is not None and part.sql.version != BLIND:
        now = sql_version(conn)
        if now != part.sql.version:
            return f"the SQL tables changed (version {part.sql.version} read, {now} now)"
    for lock, exclusive in _locks(part).items():
        sql = "SELECT txn FROM txn_locks WHERE lock = ? AND txn != ?"
        held = conn.execute(
            sql + ("" if exclusive else " AND exclusive") + " LIMIT 1", (lock, txn)
        ).fetchone()
        if held is not None:
            what = "the SQL tables are" if lock == SQL_LOCK else f"key {lock[1:]!r} is"
            return f"{what} locked by transaction {txn_tag(held[0])}"
    return ""


def _record(
    conn: sqlite3.Connection,
    txn: TxnId,
    state: TxnState,
    index: int,
    *,
    participants: Sequence[ShardId] = (),
    writes: Sequence[TxnWrite] = (),
    sql: Sequence[SqlStatement] = (),
    owner: str = "",
) -> None:
    shards = _ENCODER.encode(tuple(participants))
    kept = _ENCODER.encode(Kept(tuple(writes), tuple(sql)) if sql else tuple(writes))
    conn.execute(
        "INSERT OR REPLACE INTO txns (txn, state, participants, writes, at, created, owner)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)",
        (txn, state.value, shards, kept, index, txn_created_ms(txn), owner),
    )


def not_owner(conn: sqlite3.Connection, txn: TxnId, caller: str) -> bool:
    """Whether ``caller`` (a user; "" for a node) may not resolve ``txn`` here: a
    transaction a user prepared is resolved by that user or by a node (its recovery)."""
    if not caller:
        return False
    row = conn.execute("SELECT owner FROM txns WHERE txn = ?", (txn,)).fetchone()
    return row is not None and row[0] != "" and row[0] != caller


def clock(conn: sqlite3.Connection, now_ms: int) -> int:
    """The shard's transaction clock after an entry stamped ``now_ms``: the largest stamp
    so far (a new leader's clock may be behind the last one's)."""
    floor = meta_int(conn, "txn_clock")
    if now_ms > floor:
        put_meta(conn, "txn_clock", now_ms)
        return now_ms
    return floor


def too_old(txn: TxnId, now_ms: int) -> str:
    """Why ``txn`` may not prepare at ``now_ms`` ("" if it may)."""
    created = txn_created_ms(txn)
    if now_ms - created > MAX_TXN_AGE_MS:
        return f"the transaction began {(now_ms - created) / 1000:.0f} s ago: too old to commit"
    if created - now_ms > MAX_CLOCK_AHEAD_MS:
        return "the transaction's client clock is ahead of the servers' by more than 10 s"
    return ""


def prepare(
    conn: sqlite3.Connection,
    txn: TxnId,
    part: TxnPart,
    participants: Sequence[ShardId],
    *,
    index: int,
    now_ms: int,
    owner: str = "",
    tried: SqlWriteResult | None = None,
) -> TxnVote:
    """Vote on ``part`` (see the module docstring): the state recorded, with the conflict
    or SQL error that refused it, and the rows its SQL statements change. ``tried``: what
    the part's SQL statements came to when the store tried them on the shard as it
    stands (required for a part with statements)."""
    now = clock(conn, now_ms)
    known = recorded(conn, txn)
    if known is not None:  # a retry: answered as the first (``tried`` again: same tables)
        if known.state is TxnState.PREPARED and tried is not None:
            return TxnVote(part.shard, known.state, rowcount=tried.rowcount)
        if known.state is TxnState.ABORTED and tried is not None and tried.error:
            return TxnVote(part.shard, known.state, tried.error, code=sql_code(tried))
        return TxnVote(part.shard, known.state)
    why = too_old(txn, now) or conflict(conn, txn, part)
    statements = part.sql.statements if part.sql is not None else ()
    if statements:
        assert tried is not None, "a part with SQL is tried before it is prepared"
    tried = tried or SqlWriteResult()
    why = why or tried.error
    if why:
        _record(conn, txn, TxnState.ABORTED, index, participants=participants, owner=owner)
        return TxnVote(part.shard, TxnState.ABORTED, why, code=sql_code(tried))
    _record(
        conn,
        txn,
        TxnState.PREPARED,
        index,
        participants=participants,
        writes=part.writes,
        sql=statements,
        owner=owner,
    )
    conn.executemany(
        "INSERT INTO txn_locks (lock, txn, exclusive) VALUES (?, ?, ?)",
        [(lock, txn, int(exclusive)) for lock, exclusive in _locks(part).items()],
    )
    return TxnVote(part.shard, TxnState.PREPARED, rowcount=tried.rowcount)


def sql_code(result: SqlWriteResult) -> str:
    if not result.error:
        return ""
    return result.code or ("constraint" if result.constraint else "execution")


def apply_writes(
    conn: sqlite3.Connection, writes: Iterable[TxnWrite], changes: ChangeTracker
) -> list[bytes]:
    """Apply a transaction's writes, each stamped with a new write version; the keys."""
    keys = []
    for write in writes:
        kvops.execute(conn, write, changes)
        keys.append(key_bytes(write.key))
    return keys


def resolve(
    conn: sqlite3.Connection,
    txn: TxnId,
    commit: bool,
    index: int,
    changes: ChangeTracker,
    *,
    run_sql: SqlRunner | None = None,
) -> tuple[TxnState | None, list[bytes]]:
    """Commit or abort a prepared transaction; the state now recorded (``None``: a commit
    of a transaction never heard of) and the keys written. ``run_sql`` runs the SQL
    statements a part kept (required if it kept any)."""
    row = conn.execute("SELECT state, writes FROM txns WHERE txn = ?", (txn,)).fetchone()
    if row is None:
        if not commit:
            _record(conn, txn, TxnState.ABORTED, index)
            return TxnState.ABORTED, []
        return None, []
    state = TxnState(row[0])
    if state is not TxnState.PREPARED:
        return state, []  # final already: a repeated resolve (or one that lost a race)
    keys: list[bytes] = []
    if commit:
        kept = kept_of(row[1])
        keys = apply_writes(conn, kept.writes, changes)
        if kept.sql:
            assert run_sql is not None, "a part with SQL is resolved with a SQL runner"
            apply_sql(conn, kept.sql, changes, run_sql)
    conn.execute("DELETE FROM txn_locks WHERE txn = ?", (txn,))
    outcome = TxnState.COMMITTED if commit else TxnState.ABORTED
    conn.execute(
        "UPDATE txns SET state = ?, writes = ?, at = ? WHERE txn = ?",
        (outcome.value, _ENCODER.encode(()), index, txn),
    )
    return outcome, keys


def kept_of(data: bytes) -> Kept:
    """What ``txns.writes`` holds: a :class:`Kept`, or (a part without SQL) the writes."""
    try:
        return Kept(_WRITES.decode(data))
    except msgspec.ValidationError:
        return _KEPT.decode(data)


def apply_sql(
    conn: sqlite3.Connection,
    statements: Sequence[SqlStatement],
    changes: ChangeTracker,
    run_sql: SqlRunner,
) -> None:
    """Run a committed part's SQL statements. They were tried at prepare on the tables
    they now meet (the shard's SQL lock kept every other change out), so they fail
    here only as they failed there, which refused the prepare: an error now is a bug,
    logged, and the same on every replica."""
    changes.sql_changed(conn)
    result = run_sql(conn, statements)
    if result.error:
        logger.error("a committed transaction's SQL failed on apply: %s", result.error)


def fence(conn: sqlite3.Connection, txn: TxnId, index: int) -> TxnState:
    """The state recorded for ``txn``, recording ``fenced`` if there was none."""
    known = recorded(conn, txn)
    if known is not None:
        return known.state
    _record(conn, txn, TxnState.FENCED, index)
    return TxnState.FENCED


def expire(conn: sqlite3.Connection, now_ms: int) -> int:
    """Drop the final records of transactions too old to prepare at ``now_ms`` (by the
    shard's clock); how many."""
    now = clock(conn, now_ms)
    done = conn.execute(
        "DELETE FROM txns WHERE state != ? AND created < ?",
        (TxnState.PREPARED.value, now - MAX_TXN_AGE_MS),
    )
    return done.rowcount


def has_final_records(conn: sqlite3.Connection) -> bool:
    row = conn.execute(
        "SELECT 1 FROM txns WHERE state != ? LIMIT 1", (TxnState.PREPARED.value,)
    ).fetchone()
    return row is not None


def record_count(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT count(*) FROM txns").fetchone()[0])
