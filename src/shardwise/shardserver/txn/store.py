"""Transactions on a shard's store: the part of
:class:`~shardwise.shardserver.store.ShardStore` that runs a transaction's commands
(``txn_state.py`` holds the SQL) and keeps plain operations off locked keys.

Each command applies at one log index, in the store's transaction, like any other write;
an index applied before is skipped (``None``). The store keeps the number of locks in
memory, so a shard with no prepared transaction pays nothing for the checks.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Final, TypeVar

import msgspec

from shardwise.model.config import ShardId
from shardwise.model.kv import Key, Value, key_bytes
from shardwise.model.sql import SqlStatement
from shardwise.model.txn import TxnId, TxnPart, TxnState, TxnVote
from shardwise.shardserver import kvops
from shardwise.shardserver.commands import SqlWriteResult
from shardwise.shardserver.dedup import ClientSessions
from shardwise.shardserver.shardfile import ShardMeta, put_meta
from shardwise.shardserver.tracking import ChangeTracker
from shardwise.shardserver.txn import state as txn_state

MAX_TXN_RECORDS: Final = 10_000
"""Transactions a shard remembers at once (prepared, or final and not yet forgotten): past
it, new prepares are refused (the transaction aborts and its client retries), so the
tables stay small. Fences and resolves are always recorded: they keep outcomes safe."""

_R = TypeVar("_R")
_decode_votes = msgspec.msgpack.Decoder(tuple[TxnVote, ...]).decode


class TxnStoreMixin:
    """A shard's transactions; mixed into ``ShardStore``, whose state it uses."""

    _meta: ShardMeta
    _changes: ChangeTracker
    _batching: bool
    _applied_unwritten: bool
    _txn_locks: int
    _sessions: ClientSessions

    # (implemented by ShardStore)
    @property
    def shard(self) -> ShardId:
        raise NotImplementedError

    def _connection(self) -> sqlite3.Connection:
        raise NotImplementedError

    def _transaction(self) -> AbstractContextManager[sqlite3.Connection]:
        raise NotImplementedError

    def _error(self, exc: sqlite3.Error) -> Exception:
        raise NotImplementedError

    def try_sql(self, statements: Sequence[SqlStatement]) -> SqlWriteResult:
        raise NotImplementedError

    def _sql_runner(self) -> txn_state.SqlRunner:
        raise NotImplementedError

    # --- commands, through the log -------------------------------------------------------

    def _at(
        self, index: int, body: Callable[[sqlite3.Connection], _R], *, locks: bool = False
    ) -> _R | None:
        """``body`` in the store's transaction at log ``index`` (``None``: applied before);
        ``locks``: it may take or release locks (the count is read again)."""
        if index <= self._meta.applied_index:
            return None
        with self._transaction() as conn:
            result = body(conn)
            if locks:
                self._txn_locks = txn_state.lock_count(conn)
            self._meta.applied_index = index
            if self._batching:
                self._applied_unwritten = True
            else:
                put_meta(conn, "applied_index", index)
        return result

    def fresh(self, index: int) -> bool:
        """Whether the entry at ``index`` has yet to be applied here."""
        return index > self._meta.applied_index

    def txn_prepare(
        self,
        index: int,
        txn: TxnId,
        part: TxnPart,
        participants: Sequence[ShardId],
        *,
        now_ms: int,
        owner: str = "",
    ) -> TxnVote | None:
        # SQL is tried before the entry's transaction begins (a write stopped past its
        # work limit rolls back the whole SQLite transaction it is in), on the shard as
        # the body will find it: nothing runs in between.
        statements = part.sql.statements if part.sql is not None else ()
        tried = None
        if statements and index > self._meta.applied_index:
            tried = self.try_sql(statements)

        def body(conn: sqlite3.Connection) -> TxnVote:
            if (
                txn_state.recorded(conn, txn) is None
                and txn_state.record_count(conn) >= MAX_TXN_RECORDS
            ):
                return TxnVote(
                    self.shard,
                    TxnState.ABORTED,
                    f"shard {self.shard} has {MAX_TXN_RECORDS} transactions open",
                )
            return txn_state.prepare(
                conn,
                txn,
                part,
                participants,
                index=index,
                now_ms=now_ms,
                owner=owner,
                tried=tried,
            )

        return self._at(index, body, locks=True)

    def txn_resolve(self, index: int, txn: TxnId, commit: bool, caller: str = "") -> TxnVote | None:
        """``caller``: the user who asks ("" for a node); only the user who prepared it
        (or a node) may resolve a transaction (``state.not_owner``)."""

        def body(conn: sqlite3.Connection) -> TxnVote:
            if txn_state.not_owner(conn, txn, caller):
                return TxnVote(self.shard, "denied")
            state, _ = txn_state.resolve(
                conn, txn, commit, index, self._changes, run_sql=self._sql_runner()
            )
            return TxnVote(self.shard, "unknown" if state is None else state)

        return self._at(index, body, locks=True)

    def txn_fence(self, index: int, txn: TxnId) -> TxnVote | None:
        return self._at(index, lambda conn: TxnVote(self.shard, txn_state.fence(conn, txn, index)))

    def txn_expire(self, index: int, now_ms: int) -> int | None:
        """Drop the final records too old to matter (``state.expire``); how many (``None``:
        applied before)."""
        return self._at(index, lambda conn: txn_state.expire(conn, now_ms))

    def txn_commit_once(
        self,
        index: int,
        client_id: str,
        seq: int,
        part: TxnPart,
        run: Callable[[], tuple[TxnVote, ...]],
    ) -> tuple[TxnVote, ...] | None:
        """A commit in one entry, with this shard (its first part's) keeping the
        de-duplication: ``run`` validates every part and applies the others; this part's
        writes apply here if it answers committed. A retry gets the first answer."""

        def whole(conn: sqlite3.Connection) -> tuple[TxnVote, ...]:
            def once() -> tuple[TxnVote, ...]:
                votes = run()
                if votes and votes[0].state == TxnState.COMMITTED:
                    self._apply_part(conn, part)
                return votes

            return self._sessions.once(
                conn,
                client_id,
                seq,
                run=once,
                decode=_decode_votes,
                stale=(TxnVote(self.shard, "stale"),),
            )

        return self._at(index, whole)

    def txn_conflict(self, part: TxnPart) -> str:
        """Why ``part`` could not commit now ("" if it could): for a commit in one entry,
        checked for every part before any applies."""
        try:
            return txn_state.conflict(self._connection(), "", part)
        except sqlite3.Error as exc:
            raise self._error(exc) from exc

    def txn_apply(self, index: int, part: TxnPart) -> bool:
        """Apply a validated part's writes at ``index`` (False: applied before)."""
        done = self._at(index, lambda conn: self._apply_part(conn, part))
        return done is not None

    def _apply_part(self, conn: sqlite3.Connection, part: TxnPart) -> bool:
        txn_state.apply_writes(conn, part.writes, self._changes)
        if part.sql is not None and part.sql.statements:
            txn_state.apply_sql(conn, part.sql.statements, self._changes, self._sql_runner())
        return True

    def sql_locked(self, *, write: bool) -> TxnId | None:
        """The prepared transaction a plain SQL statement on this shard must wait for (a
        write: any lock on its tables; a read: an exclusive one), or ``None``."""
        if not self._txn_locks:
            return None
        try:
            return txn_state.sql_blocked(self._connection(), write=write)
        except sqlite3.Error as exc:
            raise self._error(exc) from exc

    def sql_version(self) -> int:
        """The shard's SQL version (``state.sql_version``)."""
        try:
            return txn_state.sql_version(self._connection())
        except sqlite3.Error as exc:
            raise self._error(exc) from exc

    # --- what the locks keep out ---------------------------------------------------------

    def locked(self, key: Key, *, write: bool) -> TxnId | None:
        """The prepared transaction a plain operation on ``key`` must wait for (a write:
        any lock on it; a read: an exclusive one), or ``None``."""
        if not self._txn_locks:
            return None
        try:
            return txn_state.blocked(self._connection(), key, write=write)
        except sqlite3.Error as exc:
            raise self._error(exc) from exc

    def locked_in_range(
        self, prefix: Key | None, start: Key | None, end: Key | None
    ) -> TxnId | None:
        """A prepared transaction that writes a key a scan of this range would see."""
        if not self._txn_locks:
            return None
        head = key_bytes(prefix) if prefix is not None else b""
        low = max(key_bytes(start) if start is not None else b"", head)
        high = key_bytes(end) if end is not None else None
        try:
            # Locks sort by kind, then key: the first exclusive one from ``low`` on is in
            # the range, or none is.
            row = (
                self._connection()
                .execute(
                    "SELECT lock, txn FROM txn_locks WHERE exclusive AND lock >= ?"
                    " ORDER BY lock LIMIT 1",
                    (txn_state.KV_LOCK + low,),
                )
                .fetchone()
            )
        except sqlite3.Error as exc:
            raise self._error(exc) from exc
        if row is None or bytes(row[0][:1]) != txn_state.KV_LOCK:
            return None
        key = bytes(row[0][1:])
        if not key.startswith(head) or (high is not None and key >= high):
            return None
        return str(row[1])

    # --- reads ---------------------------------------------------------------------------

    def versioned(self, key: Key) -> tuple[Value | None, int]:
        """``key``'s value and the write version that last wrote it (absent: the
        negative version ``state.version_of`` gives)."""
        try:
            conn = self._connection()
            row = conn.execute(
                "SELECT value, ver FROM kv WHERE key = ?", (key_bytes(key),)
            ).fetchone()
            if row is None:
                return None, txn_state.version_of(conn, key)
        except sqlite3.Error as exc:
            raise self._error(exc) from exc
        return kvops.as_value(row[0]), int(row[1])

    def prepared_txns(self) -> list[txn_state.Recorded]:
        """The transactions prepared here, oldest first."""
        if not self._txn_locks:  # (a prepared transaction holds at least one lock)
            return []
        try:
            return txn_state.prepared(self._connection())
        except sqlite3.Error as exc:
            raise self._error(exc) from exc

    def has_final_txns(self) -> bool:
        try:
            return txn_state.has_final_records(self._connection())
        except sqlite3.Error as exc:
            raise self._error(exc) from exc

    def txn_record(self, txn: TxnId) -> txn_state.Recorded | None:
        try:
            return txn_state.recorded(self._connection(), txn)
        except sqlite3.Error as exc:
            raise self._error(exc) from exc
