"""KV operations on a shard's file, inside the store's transaction: the SQL of ``Get``,
``Put``, ``Append``, ``Delete`` and ``Cas``, each write stamped with a new write version
(``tracking.py``), and of a scan."""

from __future__ import annotations

import sqlite3

from shardwise.model.kv import MAX_VALUE_BYTES, Append, Delete, Get, KVOp, KVResult, Put
from shardwise.shardserver.tracking import ChangeTracker


def execute(conn: sqlite3.Connection, op: KVOp, changes: ChangeTracker) -> KVResult:
    """Run ``op``. An ``Append`` that would grow a value past ``MAX_VALUE_BYTES`` and a
    ``Cas`` that does not find its expected value change nothing and answer ``ok=False``."""
    if isinstance(op, Get):
        return KVResult(value=get(conn, op.key))
    if isinstance(op, Put):
        _put(conn, op.key, op.value, changes)
    elif isinstance(op, Append):
        value = (get(conn, op.key) or "") + op.value
        if _utf8_len(value) > MAX_VALUE_BYTES:
            return KVResult(ok=False)
        _put(conn, op.key, value, changes)
    elif isinstance(op, Delete):
        if conn.execute("DELETE FROM kv WHERE key = ?", (op.key,)).rowcount != 0:
            changes.deleted(conn, op.key)  # (nothing deleted: no version, no tombstone)
    else:
        if get(conn, op.key) != op.expected:
            return KVResult(ok=False)
        _put(conn, op.key, op.new, changes)
    return KVResult()


def scan(
    conn: sqlite3.Connection, prefix: str | None, start: str | None, end: str | None, limit: int
) -> list[tuple[str, str]]:
    """Up to ``limit`` pairs in key order, ``start <= key < end``, starting with ``prefix``."""
    # Keys with the prefix are contiguous from the prefix on: read from there and stop
    # at the first key without it.
    sql = "SELECT key, value FROM kv WHERE key >= ?"
    params: list[object] = [max(start or "", prefix or "")]
    if end is not None:
        sql += " AND key < ?"
        params.append(end)
    rows: list[tuple[str, str]] = conn.execute(
        sql + " ORDER BY key LIMIT ?", (*params, limit)
    ).fetchall()
    if prefix is None:
        return rows
    for i, (key, _) in enumerate(rows):
        if not key.startswith(prefix):
            return rows[:i]
    return rows


def get(conn: sqlite3.Connection, key: str) -> str | None:
    row = conn.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
    return None if row is None else str(row[0])


def _put(conn: sqlite3.Connection, key: str, value: str, changes: ChangeTracker) -> None:
    conn.execute(
        "INSERT OR REPLACE INTO kv (key, value, ver) VALUES (?, ?, ?)",
        (key, value, changes.next_version()),
    )


def _utf8_len(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode())
