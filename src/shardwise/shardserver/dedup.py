"""Client de-duplication in a shard's file: the ``sessions`` table, as
:class:`~shardwise.raft.client_sessions.SessionTable` keeps it for a whole group.

Each client id has one row: its latest applied ``seq``, that command's encoded result, and
``touched``, the shard's own counter (the largest value plus one, not the group's log
index: a shard handed to another group keeps its least-recently-heard-from order although
the new group's indexes may be lower). Past ``max_sessions`` rows the least recently
touched go, the same way on every replica. The table moves with the shard, and KV and SQL
writes share it: a pooled client id numbers both kinds of write in one sequence.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import Final, TypeVar

import msgspec

_LAST_TOUCH: Final = "SELECT coalesce(max(touched), 0) FROM sessions"

_R = TypeVar("_R")
_encode = msgspec.msgpack.Encoder().encode


class ClientSessions:
    """What the store keeps in memory about its ``sessions`` table."""

    def __init__(self, conn: sqlite3.Connection, max_sessions: int) -> None:
        self.max_sessions = max_sessions
        self.count: int = 0
        self._last_touch = 0
        self._known_seqs: dict[str, int] = {}
        """Each client's latest applied ``seq``, as far as this process has seen it: a
        write with a higher one needs no look-up in ``sessions`` (the common case). Only
        clients with a row are here, so it is bounded like the table."""
        self.reload(conn)

    def reload(self, conn: sqlite3.Connection) -> None:
        """Read the counts again (the table was replaced)."""
        self.count = conn.execute("SELECT count(*) FROM sessions").fetchone()[0]
        self._last_touch = conn.execute(_LAST_TOUCH).fetchone()[0]
        self._known_seqs.clear()

    def next_touch(self) -> int:
        self._last_touch += 1
        return self._last_touch

    def take_new_seq(self, client_id: str, seq: int) -> bool:
        """Record ``seq`` as the client's latest if it is known to be new, without looking
        at the file; False (nothing recorded) for a client not seen yet, a retry or a
        stale ``seq``: those need the file."""
        known = self._known_seqs.get(client_id)
        if known is None or seq <= known:
            return False
        self._known_seqs[client_id] = seq
        return True

    def once(
        self,
        conn: sqlite3.Connection,
        client_id: str,
        seq: int,
        *,
        run: Callable[[], _R],
        decode: Callable[[bytes], _R],
        stale: _R,
    ) -> _R:
        """``run()``'s result, once per ``(client_id, seq)`` (inside the caller's
        transaction): a retry gets the first result, an older ``seq`` ``stale``.
        ``client_id=""`` opts out. (Generic since SQL batches share the table with KV
        operations.) :attr:`count` is the number of sessions afterwards."""
        row = None
        known = self._known_seqs.get(client_id)
        if client_id and (known is None or seq <= known):
            sql = "SELECT seq, result FROM sessions WHERE client_id = ?"
            row = conn.execute(sql, (client_id,)).fetchone()
        if row is not None and seq < row[0]:
            return stale
        if row is not None and seq == row[0]:  # a retry: the first result, touched
            sql = "UPDATE sessions SET touched = ? WHERE client_id = ?"
            conn.execute(sql, (self.next_touch(), client_id))
            try:
                return decode(row[1])
            except msgspec.ValidationError:
                # The number was used for a write of the other kind (a client bug): this
                # one is not applied, the same way on every replica, and nothing halts.
                return stale
        result = run()
        if not client_id:
            return result
        conn.execute(
            "INSERT OR REPLACE INTO sessions (client_id, seq, result, touched) VALUES (?,?,?,?)",
            (client_id, seq, _encode(result), self.next_touch()),
        )
        self._known_seqs[client_id] = seq
        sessions = self.count
        if row is None and known is None:
            sessions += 1
        if sessions > self.max_sessions:  # forget the least recently heard-from
            evicted = conn.execute(
                "DELETE FROM sessions WHERE client_id IN "
                "(SELECT client_id FROM sessions ORDER BY touched LIMIT ?) RETURNING client_id",
                (sessions - self.max_sessions,),
            ).fetchall()
            for (gone,) in evicted:
                self._known_seqs.pop(gone, None)
            sessions = self.max_sessions
        self.count = sessions
        return result
