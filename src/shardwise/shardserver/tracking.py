"""Change tracking in a shard's file: what a pre-copy's delta is made of.

Every write stamps what it changed with the shard's *write version*: one more than the
last, a counter that belongs to the shard's lineage (it travels with the file from group
to group, and never goes back). ``kv.ver`` is the version that last wrote a row; a
delete leaves a tombstone in ``kv_gone``; a SQL write or DDL records its version as
``meta.sql_changed_at``. So a copy taken at version ``b`` is brought up to date by the
rows and tombstones after ``b`` and the whole session and transaction tables
(:class:`ShardDelta`). Tombstones are bounded (:data:`MAX_TOMBSTONES`): the oldest are
pruned and ``meta.gone_horizon`` remembers the newest pruned version, below which no
delta can be made (the caller copies it all). SQL tables are not tracked row by row: a
delta cannot span a SQL change. The version is not stored: it is the largest of those
stamps (each write leaves one), so every replica, a restarted one too, derives the same
number from the same rows.

:class:`ChangeTracker` keeps the version and the tombstone count in memory; everything
here runs inside the store's transaction.
"""

from __future__ import annotations

import sqlite3
from typing import Any, Final

import msgspec

from shardwise.model.kv import Key, Value, check_type, key_bytes
from shardwise.shardserver.shardfile import put_meta

MAX_TOMBSTONES: Final = 100_000
"""Tombstones of deleted keys a shard keeps for deltas; past it the oldest half goes (and
a pre-copy older than them falls back to a full copy)."""

WRITE_VERSION: Final = """
SELECT max(
    coalesce((SELECT max(ver) FROM kv), 0),
    coalesce((SELECT max(ver) FROM kv_gone), 0),
    coalesce((SELECT v FROM meta WHERE k = 'gone_horizon'), 0),
    coalesce((SELECT v FROM meta WHERE k = 'sql_changed_at'), 0),
    coalesce((SELECT v FROM meta WHERE k = 'version_floor'), 0))
"""
"""A shard's write version: the largest stamp its writes left (see the module's docstring)."""


class ShardDelta(msgspec.Struct, frozen=True, array_like=True):
    """What changed in a shard after write version ``since``, up to ``version`` (framed
    for the wire by ``migration/image.py``)."""

    shard: str
    since: int
    version: int
    upserts: list[tuple[Key, Value, int]]
    """(key, value, version) of every row written after ``since``. Keys are bytes (a
    delta of format 1, from an older version, has str keys: their UTF-8 is the key)."""
    gone: list[tuple[Key, int]]
    """(key, version) of every key deleted after ``since``."""
    sessions: list[tuple[str, int, bytes, int]]
    """The whole de-duplication table (it is small, and evictions leave no trace)."""
    gone_horizon: int
    sql_changed_at: int
    txns: list[tuple[str, str, bytes, bytes, int, int, str]] | None = None
    """The whole ``txns`` table (``txn/state.py``), like the sessions: small and bounded,
    and not versioned row by row. ``None`` in a delta of format 2 (no transactions)."""
    txn_locks: list[tuple[bytes, str, int]] | None = None

    def __post_init__(self) -> None:
        # Keys and values decode as ``Any`` (see ``model/kv.py``): check them once here.
        for key, value, _ in self.upserts:
            check_type("key", key)
            check_type("value", value)
        for key, _ in self.gone:
            check_type("key", key)


class ChangeTracker:
    """A shard's write version and tombstones, as its store keeps them."""

    def __init__(self, conn: sqlite3.Connection, max_tombstones: int) -> None:
        self.max_tombstones = max_tombstones
        self.version: int = conn.execute(WRITE_VERSION).fetchone()[0]
        self._tombstones: int = conn.execute("SELECT count(*) FROM kv_gone").fetchone()[0]

    def next_version(self) -> int:
        """The version of a new write."""
        self.version += 1
        return self.version

    def deleted(self, conn: sqlite3.Connection, key: bytes) -> None:
        """A row was deleted: leave (or move up) its tombstone."""
        version = self.next_version()
        sql = "UPDATE kv_gone SET ver = ? WHERE key = ?"
        if conn.execute(sql, (version, key)).rowcount == 0:
            conn.execute("INSERT INTO kv_gone (key, ver) VALUES (?, ?)", (key, version))
            self._tombstones += 1
            if self._tombstones > self.max_tombstones:
                self._prune(conn)

    def sql_changed(self, conn: sqlite3.Connection) -> None:
        """A SQL write or DDL: no delta can span it."""
        put_meta(conn, "sql_changed_at", self.next_version())

    def changes_since(self, conn: sqlite3.Connection, shard: str, since: int) -> ShardDelta | None:
        """The changes after ``since``; None if this file cannot tell (tombstones after
        ``since`` were pruned, a SQL change came after it, or ``since`` is not in this
        file's past)."""
        horizon, sql_changed = meta_int(conn, "gone_horizon"), meta_int(conn, "sql_changed_at")
        if not 0 <= since <= self.version or horizon > since or sql_changed > since:
            return None
        return ShardDelta(
            shard,
            since,
            self.version,
            _rows(conn, "SELECT key, value, ver FROM kv WHERE ver > ?", since),
            _rows(conn, "SELECT key, ver FROM kv_gone WHERE ver > ?", since),
            _rows(conn, "SELECT client_id, seq, result, touched FROM sessions"),
            horizon,
            sql_changed,
            _rows(conn, "SELECT txn, state, participants, writes, at, created, owner FROM txns"),
            _rows(conn, "SELECT lock, txn, exclusive FROM txn_locks"),
        )

    def apply(self, conn: sqlite3.Connection, delta: ShardDelta) -> None:
        """Write ``delta``'s rows, tombstones, sessions and stamps (the caller has checked
        it fits this file)."""
        # Deletes first: a key deleted and then written again has both, and must stay.
        for key, ver in delta.gone:
            stored = key_bytes(key)
            conn.execute("DELETE FROM kv WHERE key = ?", (stored,))
            conn.execute("INSERT OR REPLACE INTO kv_gone (key, ver) VALUES (?, ?)", (stored, ver))
        sql = "INSERT OR REPLACE INTO kv (key, value, ver) VALUES (?, ?, ?)"
        conn.executemany(sql, [(key_bytes(k), v, ver) for k, v, ver in delta.upserts])
        conn.execute("DELETE FROM sessions")
        conn.executemany(
            "INSERT INTO sessions (client_id, seq, result, touched) VALUES (?, ?, ?, ?)",
            delta.sessions,
        )
        if delta.txns is not None:  # (the transactions in flight move with the shard)
            conn.execute("DELETE FROM txns")
            conn.executemany("INSERT INTO txns VALUES (?, ?, ?, ?, ?, ?, ?)", delta.txns)
            conn.execute("DELETE FROM txn_locks")
            conn.executemany("INSERT INTO txn_locks VALUES (?, ?, ?)", delta.txn_locks or [])
        put_meta(conn, "gone_horizon", delta.gone_horizon)
        put_meta(conn, "sql_changed_at", delta.sql_changed_at)
        put_meta(conn, "version_floor", delta.version)
        self._tombstones = conn.execute("SELECT count(*) FROM kv_gone").fetchone()[0]
        if self._tombstones > self.max_tombstones:
            self._prune(conn)
        self.version = delta.version

    def _prune(self, conn: sqlite3.Connection) -> None:
        """Keep the newest half of the tombstones; remember the newest version dropped.
        (Exact counts and unique versions: every replica prunes at the same write.)"""
        keep = self.max_tombstones // 2
        sql = "SELECT ver FROM kv_gone ORDER BY ver DESC LIMIT 1 OFFSET ?"
        horizon = conn.execute(sql, (keep,)).fetchone()[0]
        conn.execute("DELETE FROM kv_gone WHERE ver <= ?", (horizon,))
        put_meta(conn, "gone_horizon", horizon)
        self._tombstones = keep


def meta_int(conn: sqlite3.Connection, key: str) -> int:
    row = conn.execute("SELECT v FROM meta WHERE k = ?", (key,)).fetchone()
    return int(row[0]) if row else 0


def _rows(conn: sqlite3.Connection, sql: str, *params: object) -> list[Any]:
    return conn.execute(sql, params).fetchall()
