"""A SQL statement as it travels to a shard: planned SQLite text and its parameters.

Here rather than with the shard server's protocol because transactions (``model/txn.py``)
carry statements too, in a participant's part.
"""

from __future__ import annotations

from typing import Any

import msgspec


class SqlStatement(msgspec.Struct, frozen=True, array_like=True):
    """One planned SQLite statement with its named parameters (never spliced in). The
    values are SQLite's (None, int, float, str, bytes); ``Any`` because msgspec cannot
    tell ``str | bytes`` apart in a union. They are checked at the door
    (``sql_checks.check_params``) and, if one got through, fail to bind on every replica
    alike."""

    sql: str
    params: dict[str, Any] = {}
    rows: tuple[tuple[Any, ...], ...] = ()
    """Not empty: ``sql`` (its parameters ``?``, ``params`` empty) runs once for each row,
    bound to its values (``executemany``): a bulk INSERT, compiled once, not one text
    of thousands of parameters to compile on every replica."""

    def bindings(self) -> dict[str, Any] | tuple[Any, ...]:
        """The values ``sql`` is compiled with (the first row's, for ``rows``): what a
        check that prepares the statement without running it binds."""
        return self.rows[0] if self.rows else self.params


class RowCapture(msgspec.Struct, frozen=True, array_like=True):
    """What a transaction's visit records of the rows its statements change in one table
    (a table with global indexes, ``shardwise.sql.global_index``): for each row inserted,
    deleted, or updated in one of ``columns``, the row's ``row`` (a name of its rowid
    that no column shadows) and ``columns`` before (sign -1) and after (sign +1). The
    coordinator turns them into the index entries to delete and insert."""

    table: str
    """The physical table name (``sql_<table>``)."""
    row: str
    columns: tuple[str, ...]
