"""A store's two caches in memory: plain puts held back from the file (write-behind), and
the values of recently read or written keys (for point reads).

**Held puts.** Inside a batch the store takes a plain ``Put`` (the bulk of a write load)
without SQL: its row and its session row wait here, a later put of the same key or by the
same client replaces them, and :meth:`HeldPuts.write_to` writes what is left in two
statements: when anything else uses the connection, and at the latest with the next
commit (on a cache disk, every ``CACHE_COMMIT_EVERY`` batches or past
:data:`MAX_PENDING_BYTES`). Until then point reads find them here. Applying a put costs a
few dictionary updates instead of two statements on a cold database, and a hot key is
written once per flush.

**The read cache** holds values as the file has them: filled by point reads and by
writing held puts, emptied by every other change (the store clears it whenever it opens a
transaction).
"""

from __future__ import annotations

import sqlite3
from typing import Final

import msgspec

from shardwise.model.kv import KVOp, KVResult, Put, Value, key_bytes
from shardwise.shardserver.dedup import ClientSessions
from shardwise.shardserver.tracking import ChangeTracker

MAX_PENDING_BYTES: Final = 4 << 20
"""Keys and values (in characters) of puts a store may hold in memory before it writes
them to its file."""

MAX_CACHED_VALUES: Final = 1024
"""Values of recently read or written keys a store keeps in memory for point reads (a
skewed load reads a few keys over and over); past it the cache starts afresh."""

MAX_CACHED_ITEM_CHARS: Final = 1024
"""Largest key plus value (in characters) the read cache takes: it stays under 1 MiB."""

_OK_ENCODED: Final = msgspec.msgpack.encode(KVResult())


class ReadCache:
    """Values of keys (their bytes) as the file has them."""

    def __init__(self) -> None:
        self._values: dict[bytes, Value] = {}

    def get(self, key: bytes) -> Value | None:
        return self._values.get(key)

    def remember(self, key: bytes, value: Value) -> None:
        if len(key) + len(value) > MAX_CACHED_ITEM_CHARS:
            return
        if len(self._values) >= MAX_CACHED_VALUES:
            self._values.clear()
        self._values[key] = value

    def clear(self) -> None:
        self._values.clear()


class HeldPuts:
    """Rows that plain puts wrote and the file does not have yet."""

    def __init__(self) -> None:
        self._rows: dict[bytes, tuple[Value, int]] = {}
        """(value, write version) by key (its bytes: how the file stores it)."""
        self._sessions: dict[str, tuple[int, bytes, int]] = {}
        """The session rows those puts wrote: (seq, result, touched) by client id."""
        self.pending_bytes = 0
        """Roughly, the keys and values held (an overwritten one still counts)."""

    def __bool__(self) -> bool:
        return bool(self._rows)

    def value(self, key: bytes) -> Value | None:
        held = self._rows.get(key)
        return None if held is None else held[0]

    def take_put(
        self,
        client_id: str,
        seq: int,
        op: KVOp,
        sessions: ClientSessions,
        changes: ChangeTracker,
    ) -> bool:
        """Hold ``op`` if it is a plain ``Put`` that needs no look at the file; False
        (nothing done) for an op other than ``Put``, a client the store has no session
        for yet, a retry or a stale ``seq``. A held put's result is what applying it
        gives (ok, remembered in its client's session), so the file ends up as it would
        have anyway."""
        if type(op) is not Put:
            return False
        if client_id:
            if not sessions.take_new_seq(client_id, seq):
                return False
            self._sessions[client_id] = (seq, _OK_ENCODED, sessions.next_touch())
        self._rows[key_bytes(op.key)] = (op.value, changes.next_version())
        self.pending_bytes += len(op.key) + len(op.value)
        return True

    def write_to(self, conn: sqlite3.Connection) -> list[tuple[bytes, Value]]:
        """Write what is held into ``conn``'s transaction (beginning one if none is open)
        and forget it; the ``(key, value)`` pairs written. Raises ``sqlite3.Error``."""
        rows, self._rows = self._rows, {}
        sessions, self._sessions = self._sessions, {}
        self.pending_bytes = 0
        if not conn.in_transaction:
            conn.execute("BEGIN IMMEDIATE")
        conn.executemany(
            "INSERT OR REPLACE INTO kv (key, value, ver) VALUES (?, ?, ?)",
            [(key, value, ver) for key, (value, ver) in rows.items()],
        )
        conn.executemany(
            "INSERT OR REPLACE INTO sessions (client_id, seq, result, touched) VALUES (?, ?, ?, ?)",
            [(client, *row) for client, row in sessions.items()],
        )
        return [(key, value) for key, (value, _) in rows.items()]
