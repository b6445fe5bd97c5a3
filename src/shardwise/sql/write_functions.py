"""The functions a SQL write may call, applied to SQLite connections: the allow-list's
check before a write is sent or proposed (:func:`refused_function`) and the date and
time functions that check their arguments as they run (:class:`TimeFunctions`). The
rules themselves, and why, are in :mod:`shardwise.sql.write_rules`. Imports no SQL
parser, so a shard server can load it.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from shardwise.sql.write_rules import TIME_FUNCTIONS, function_refusal, time_refusal


def refused_function(
    ddl: Sequence[str], statements: Iterable[tuple[str, Mapping[str, Any] | Sequence[Any]]]
) -> str:
    """Why ``statements`` may not be written ("" if they may): the first function off
    the allow-list they call. Each is prepared (``EXPLAIN``: nothing runs) against a
    private in-memory database with the tables ``ddl`` makes, with the same authorizer
    check as a shard's; any other error is left for the shard to report."""
    from shardwise.sql.functions import register  # noqa: PLC0415 - the shards' functions too

    refused: list[str] = []

    def authorize(action: int, arg1: str | None, arg2: str | None, *_: object) -> int:
        if action == sqlite3.SQLITE_FUNCTION:
            why = function_refusal(arg2 or "")
            if why:
                refused.append(why)
                return sqlite3.SQLITE_DENY
        return sqlite3.SQLITE_OK

    with contextlib.closing(sqlite3.connect(":memory:", isolation_level=None)) as conn:
        register(conn)
        for statement in ddl:
            conn.execute(statement)
        conn.set_authorizer(authorize)
        for sql, params in statements:
            with contextlib.suppress(sqlite3.Error, ValueError, OverflowError):
                bound = dict(params) if isinstance(params, Mapping) else tuple(params)
                conn.execute("EXPLAIN " + sql, bound).close()
            if refused:
                return refused[0]
    return ""


class NondeterministicCall(Exception):  # noqa: N818 - an internal signal, not an error
    """Raised inside SQLite by a checked function; SQLite reports it as its own error,
    and :attr:`TimeFunctions.refusal` says why."""


class TimeFunctions:
    """SQLite's date and time functions on ``conn``, replaced by checked ones.

    While :attr:`enforcing` (during a write), a call that reads the clock or the time zone
    fails and :attr:`refusal` says why; otherwise (a read) the call runs as SQLite's own.
    Schema expressions keep SQLite's own functions, but a shard's schema has none (column
    defaults are literals)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.enforcing = False
        self.refusal = ""
        self._private: sqlite3.Connection | None = None
        for name in TIME_FUNCTIONS:
            if self._builtin_exists(name):
                conn.create_function(name, -1, self._checked(name), deterministic=True)

    def _builtin(self) -> sqlite3.Connection:
        if self._private is None:
            # Outside any write's transaction and authorizer; only ever evaluates calls.
            self._private = sqlite3.connect(":memory:", check_same_thread=False)
        return self._private

    def _builtin_exists(self, name: str) -> bool:
        sql = "SELECT 1 FROM pragma_function_list WHERE name = ?"
        return self._builtin().execute(sql, (name,)).fetchone() is not None

    def _checked(self, name: str) -> Callable[..., str | int | float | None]:
        def call(*args: object) -> str | int | float | None:
            if self.enforcing:
                why = time_refusal(name, args)
                if why:
                    self.refusal = why
                    raise NondeterministicCall(why)
            marks = ", ".join("?" * len(args))
            row = self._builtin().execute(f"SELECT {name}({marks})", args).fetchone()
            value: str | int | float | None = row[0]
            return value

        return call
