"""Client de-duplication: each client's latest command and its result, replicated.

A client numbers its commands ``seq = 1, 2, 3, ...`` and retries a command with the same
number until it gets an answer. The state machine remembers, per client, the latest
sequence number applied and its result: a retry returns that result without applying the
command again (exactly once), and an older number is refused as stale. The table is part
of the replicated state: it goes into snapshots, and (for shards) moves with the data.

Eviction is deterministic, least recently heard-from first, so every replica forgets the
same client at the same index.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from typing import Final

import msgspec

from shardwise.model.bounds import Int64

MAX_SESSIONS: Final = 65_536
"""Clients remembered. Past it the least recently heard-from one is forgotten (the same one
on every replica); a retry from a forgotten client would be applied again, so this must
exceed the number of live clients."""


class Session(msgspec.Struct, array_like=True):
    client_id: str
    seq: Int64
    result: bytes


class Verdict(msgspec.Struct, frozen=True):
    """What to do with a command: apply it, answer a retry from memory, or refuse it."""

    apply: bool
    result: bytes | None = None
    stale: bool = False


_APPLY: Final = Verdict(apply=True)


class SessionTable:
    def __init__(self, sessions: Iterable[Session] = (), limit: int | None = None) -> None:
        self._limit = MAX_SESSIONS if limit is None else limit
        self._sessions: OrderedDict[str, Session] = OrderedDict((s.client_id, s) for s in sessions)

    def __len__(self) -> int:
        return len(self._sessions)

    def last_seq(self, client_id: str) -> int:
        """The sequence number of the client's latest applied command (0 if none)."""
        session = self._sessions.get(client_id)
        return 0 if session is None else session.seq

    def check(self, client_id: str, seq: int) -> Verdict:
        """Decide on a command before applying it. ``client_id=""`` opts out."""
        session = self._sessions.get(client_id) if client_id else None
        if session is None or seq > session.seq:
            return _APPLY
        if seq == session.seq:
            self._sessions.move_to_end(client_id)
            return Verdict(apply=False, result=session.result)
        return Verdict(apply=False, stale=True)

    def remember(self, client_id: str, seq: int, result: bytes) -> None:
        if not client_id:
            return
        self._sessions[client_id] = Session(client_id, seq, result)
        self._sessions.move_to_end(client_id)
        while len(self._sessions) > self._limit:
            self._sessions.popitem(last=False)

    def export(self) -> list[Session]:
        """Least recently heard-from first, so eviction order survives a restore."""
        return list(self._sessions.values())
