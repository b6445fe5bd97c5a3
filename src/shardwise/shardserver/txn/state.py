"""A shard's side of transactions, on its file, inside the store's transaction.

Two tables (``shardfile.TXN_TABLES``): ``txns`` holds what this shard recorded for each
transaction it takes part in (a :class:`~shardwise.model.txn.TxnState`, the list of
participants to recover from, the writes kept aside while prepared, and the index it was
recorded at); ``txn_locks`` the locks of prepared transactions: a read takes a shared
lock on its key, a write an exclusive one. A lock is named by its kind and key
(:func:`kv_lock`: ``b"k"`` and the key's bytes), so SQL tables can take locks of their
own later without meeting the keys'.

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
* **forget**: a record that is not ``prepared`` is dropped (its resolver has heard every
  participant resolve).
* **commit_local**: every part at once in one entry (one group holds every participant):
  validated as prepares are, then applied; nothing is recorded in ``txns``.

Plain operations meet the locks too (:func:`blocked`): a write to a locked key, or a read
of an exclusively locked one, is answered "locked" and retried by the client, so no one
sees a prepared transaction half done or writes under its validated reads.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

import msgspec

from shardwise.model.config import ShardId
from shardwise.model.kv import Delete, Key, Put, key_bytes
from shardwise.model.txn import TxnId, TxnPart, TxnState, TxnWrite
from shardwise.shardserver import kvops
from shardwise.shardserver.tracking import ChangeTracker

KV_LOCK: Final = b"k"
"""The kind byte of a key's lock."""

ABSENT_VERSION: Final = -1
"""The version a read of an absent key sees: apart from every row's, even a row of a
file written before change tracking (version 0), so a key that was there and is gone
does not pass for unchanged."""

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
    """The write version that last wrote ``key`` (:data:`ABSENT_VERSION`: absent)."""
    row = conn.execute("SELECT ver FROM kv WHERE key = ?", (key_bytes(key),)).fetchone()
    return ABSENT_VERSION if row is None else int(row[0])


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
    return wanted


def conflict(conn: sqlite3.Connection, txn: TxnId, part: TxnPart) -> str:
    """Why ``part`` cannot prepare now ("" if it can): a read whose key changed, or a
    lock another transaction holds."""
    for read in part.reads:
        now = version_of(conn, read.key)
        if now != read.version:
            return f"key {read.key!r} changed (version {read.version} read, {now} now)"
    for lock, exclusive in _locks(part).items():
        sql = "SELECT txn FROM txn_locks WHERE lock = ? AND txn != ?"
        held = conn.execute(
            sql + ("" if exclusive else " AND exclusive") + " LIMIT 1", (lock, txn)
        ).fetchone()
        if held is not None:
            return f"key {lock[1:]!r} is locked by transaction {held[0]}"
    return ""


def _record(
    conn: sqlite3.Connection,
    txn: TxnId,
    state: TxnState,
    index: int,
    *,
    participants: Sequence[ShardId] = (),
    writes: Sequence[TxnWrite] = (),
) -> None:
    shards, kept = _ENCODER.encode(tuple(participants)), _ENCODER.encode(tuple(writes))
    conn.execute(
        "INSERT OR REPLACE INTO txns (txn, state, participants, writes, at) VALUES (?, ?, ?, ?, ?)",
        (txn, state.value, shards, kept, index),
    )


def prepare(
    conn: sqlite3.Connection,
    txn: TxnId,
    part: TxnPart,
    participants: Sequence[ShardId],
    index: int,
) -> tuple[TxnState, str]:
    """Vote on ``part`` (see the module docstring): the state recorded, and the conflict
    that refused it."""
    known = recorded(conn, txn)
    if known is not None:
        return known.state, ""
    why = conflict(conn, txn, part)
    if why:
        _record(conn, txn, TxnState.ABORTED, index, participants=participants)
        return TxnState.ABORTED, why
    _record(conn, txn, TxnState.PREPARED, index, participants=participants, writes=part.writes)
    conn.executemany(
        "INSERT INTO txn_locks (lock, txn, exclusive) VALUES (?, ?, ?)",
        [(lock, txn, int(exclusive)) for lock, exclusive in _locks(part).items()],
    )
    return TxnState.PREPARED, ""


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
    conn: sqlite3.Connection, txn: TxnId, commit: bool, index: int, changes: ChangeTracker
) -> tuple[TxnState | None, list[bytes]]:
    """Commit or abort a prepared transaction; the state now recorded (``None``: a commit
    of a transaction never heard of) and the keys written."""
    row = conn.execute("SELECT state, writes FROM txns WHERE txn = ?", (txn,)).fetchone()
    if row is None:
        if not commit:
            _record(conn, txn, TxnState.ABORTED, index)
            return TxnState.ABORTED, []
        return None, []
    state = TxnState(row[0])
    if state is not TxnState.PREPARED:
        return state, []  # final already: a repeated resolve (or one that lost a race)
    keys = apply_writes(conn, _WRITES.decode(row[1]), changes) if commit else []
    conn.execute("DELETE FROM txn_locks WHERE txn = ?", (txn,))
    outcome = TxnState.COMMITTED if commit else TxnState.ABORTED
    conn.execute(
        "UPDATE txns SET state = ?, writes = ?, at = ? WHERE txn = ?",
        (outcome.value, _ENCODER.encode(()), index, txn),
    )
    return outcome, keys


def fence(conn: sqlite3.Connection, txn: TxnId, index: int) -> TxnState:
    """The state recorded for ``txn``, recording ``fenced`` if there was none."""
    known = recorded(conn, txn)
    if known is not None:
        return known.state
    _record(conn, txn, TxnState.FENCED, index)
    return TxnState.FENCED


def forget(conn: sqlite3.Connection, txn: TxnId) -> bool:
    """Drop a final record (never a prepared one); whether one was dropped."""
    done = conn.execute(
        "DELETE FROM txns WHERE txn = ? AND state != ?", (txn, TxnState.PREPARED.value)
    )
    return done.rowcount > 0


def record_count(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT count(*) FROM txns").fetchone()[0])
