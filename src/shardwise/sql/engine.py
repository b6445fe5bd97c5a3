"""The coordinator's own SQLite: an in-memory database for the final step of a merge.

After partial aggregates are combined, the rest of a query (expressions over aggregates,
HAVING, DISTINCT, ORDER BY, LIMIT) runs here over the merged groups, so it has SQLite's
semantics exactly, the same as on a shard. Statements without a table run here too.
Nothing is written to disk.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from contextlib import closing

from shardwise.errors import SqlExecutionError
from shardwise.sql.functions import register
from shardwise.sql.plans import Fragment
from shardwise.sql.select_plan import MERGED_TABLE
from shardwise.sql.values import SqlValue

Row = tuple[SqlValue, ...]


def _connect() -> sqlite3.Connection:
    conn = sqlite3.connect(":memory:", isolation_level=None)
    register(conn)
    return conn


def run_final(
    rows: Sequence[Row],
    groups: int,
    aggregates: int,
    query: Fragment,
    group_types: Sequence[str] = (),
) -> list[Row]:
    """``query`` over ``_sw_merged``, which holds ``rows`` (group keys, then aggregates).

    A group key's column is declared with ``group_types`` (the key's own affinity on the
    shards, which its values already have, so storing them changes none), and compares
    with a literal as the key does on a shard; aggregates have no affinity, as in SQLite.
    """
    types = list(group_types) + [""] * (groups - len(group_types))
    names = [f"_sw_g{i} {types[i]}".rstrip() for i in range(groups)]
    names += [f"_sw_a{j}" for j in range(aggregates)]
    with closing(_connect()) as conn:
        try:
            if names:
                conn.execute(f"CREATE TABLE {MERGED_TABLE} ({', '.join(names)})")
                marks = ", ".join("?" * len(names))
                conn.executemany(f"INSERT INTO {MERGED_TABLE} VALUES ({marks})", rows)
            else:
                conn.execute(f"CREATE TABLE {MERGED_TABLE} (_sw_none)")
                conn.executemany(f"INSERT INTO {MERGED_TABLE} VALUES (NULL)", [()] * len(rows))
            return [tuple(r) for r in conn.execute(query.sql, dict(query.params))]
        except sqlite3.Error as exc:
            raise SqlExecutionError(str(exc)) from None


def run_local(query: Fragment) -> list[Row]:
    with closing(_connect()) as conn:
        try:
            return [tuple(r) for r in conn.execute(query.sql, dict(query.params))]
        except sqlite3.Error as exc:
            raise SqlExecutionError(str(exc)) from None
