"""KV operations on a shard's file, inside the store's transaction: the SQL of ``Get``,
``Put``, ``Append``, ``Delete`` and ``Cas``, each write stamped with a new write version
(``tracking.py``), and of a scan.

Keys are bound as bytes (a str key as its UTF-8), so SQLite stores them as BLOBs and
compares them with ``memcmp``: keys sort by their bytes, a key that is not UTF-8
included, and ``"k"`` and ``b"k"`` are one row. Values are bound as given, so SQLite
keeps a str as TEXT and bytes as a BLOB, and a read returns the type that was written.
"""

from __future__ import annotations

import sqlite3

from shardwise.errors import ShardLimitError
from shardwise.model.kv import (
    MAX_VALUE_BYTES,
    Append,
    Delete,
    Get,
    Key,
    KVOp,
    KVResult,
    Put,
    Value,
    check_op,
    data_size,
    key_bytes,
)
from shardwise.shardserver.tracking import ChangeTracker


def execute(conn: sqlite3.Connection, op: KVOp, changes: ChangeTracker) -> KVResult:
    """Run ``op``. An ``Append`` that would grow a value past ``MAX_VALUE_BYTES`` and a
    ``Cas`` that does not find its expected value change nothing and answer ``ok=False``."""
    key = key_bytes(op.key)
    if isinstance(op, Get):
        return KVResult(value=get(conn, key))
    if isinstance(op, Put):
        _put(conn, key, op.value, changes)
    elif isinstance(op, Append):
        value = concatenate(get(conn, key), op.value)
        if data_size(value) > MAX_VALUE_BYTES:
            return KVResult(ok=False)
        _put(conn, key, value, changes)
    elif isinstance(op, Delete):
        if conn.execute("DELETE FROM kv WHERE key = ?", (key,)).rowcount != 0:
            changes.deleted(conn, key)  # (nothing deleted: no version, no tombstone)
    else:
        if not same_value(get(conn, key), op.expected):
            return KVResult(ok=False)
        _put(conn, key, op.new, changes)
    return KVResult()


def concatenate(current: Value | None, tail: Value) -> Value:
    """``current`` followed by ``tail``: a str if both are, else bytes (a str as UTF-8)."""
    if current is None:
        return tail
    if isinstance(current, str) and isinstance(tail, str):
        return current + tail
    return key_bytes(current) + key_bytes(tail)


def same_value(current: Value | None, expected: Value | None) -> bool:
    """Whether a stored value is the one a ``Cas`` expects, compared as bytes."""
    if current is None or expected is None:
        return current is None and expected is None
    return key_bytes(current) == key_bytes(expected)


def scan(
    conn: sqlite3.Connection, prefix: Key | None, start: Key | None, end: Key | None, limit: int
) -> list[tuple[Key, Value]]:
    """Up to ``limit`` pairs in key (byte) order, ``start <= key < end``, starting with
    ``prefix``. A key comes back as a str if it is valid UTF-8, else as bytes."""
    # Keys with the prefix are contiguous from the prefix on: read from there and stop
    # at the first key without it.
    head = key_bytes(prefix) if prefix is not None else b""
    sql = "SELECT key, value FROM kv WHERE key >= ?"
    params: list[object] = [max(key_bytes(start) if start is not None else b"", head)]
    if end is not None:
        sql += " AND key < ?"
        params.append(key_bytes(end))
    rows: list[tuple[bytes, Value]] = conn.execute(
        sql + " ORDER BY key LIMIT ?", (*params, limit)
    ).fetchall()
    out: list[tuple[Key, Value]] = []
    for key, value in rows:
        if not key.startswith(head):
            break
        out.append((key_for_reply(key), value))
    return out


def key_for_reply(key: bytes) -> Key:
    """A stored key as a reply carries it: a str if it is valid UTF-8 (what a client of
    an older version can read), else the bytes."""
    try:
        return key.decode()
    except UnicodeDecodeError:
        return key


def get(conn: sqlite3.Connection, key: bytes) -> Value | None:
    row = conn.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
    return None if row is None else as_value(row[0])


def as_value(stored: object) -> Value:
    """A value as the file holds it: TEXT (str) or BLOB (bytes)."""
    if isinstance(stored, str | bytes):
        return stored
    return str(stored)  # (no write makes anything else; a number from a foreign file)


def _put(conn: sqlite3.Connection, key: bytes, value: Value, changes: ChangeTracker) -> None:
    conn.execute(
        "INSERT OR REPLACE INTO kv (key, value, ver) VALUES (?, ?, ?)",
        (key, value, changes.next_version()),
    )


def refusal(op: KVOp) -> str:
    """Why a logged KV operation is refused (over a limit the edge checks: a leader of
    another version, or a planted entry): before anything changes, the same on every
    replica, and a retry is refused alike, so there is nothing to de-duplicate."""
    try:
        check_op(op)
    except ShardLimitError as exc:
        return str(exc)
    return ""
