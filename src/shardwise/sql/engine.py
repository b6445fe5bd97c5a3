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
from dataclasses import dataclass
from typing import Final

from shardwise.errors import SqlCatalogError, SqlExecutionError, SqlLimitError
from shardwise.sql.functions import register
from shardwise.sql.join_plan import SINGLE_ROW
from shardwise.sql.merge import Budget, MergeLimits
from shardwise.sql.plans import Fragment
from shardwise.sql.select_plan import MERGED_TABLE
from shardwise.sql.values import SqlValue

Row = tuple[SqlValue, ...]

MAX_FINAL_STEPS: Final = 2_000_000_000
"""SQLite virtual-machine steps the coordinator may spend on one statement over the rows
of its scans (a join of large tables with no equality could run for hours; this is some
tens of seconds)."""

_STEPS_PER_CHECK: Final = 100_000
_FETCH_BATCH: Final = 1_000


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


@dataclass(frozen=True, slots=True)
class ScanRows:
    """The rows of one scan, as a table of the coordinator's SQLite."""

    name: str
    columns: Sequence[tuple[str, str]]
    """Each column's name and declared type."""
    rows: Sequence[Row]


def run_join(
    scans: Sequence[ScanRows],
    query: Fragment,
    max_rows: int,
    max_bytes: int,
    max_steps: int = MAX_FINAL_STEPS,
) -> tuple[list[str], list[Row]]:
    """``query`` over tables holding ``scans``' rows: SQLite's own column names and the
    rows, at most ``max_rows`` of them and ``max_bytes`` of values (counted as the
    coordinator's merges count them), in at most ``max_steps`` steps."""
    with closing(_connect()) as conn:
        budget = [max_steps]
        several = _SeveralRows()
        conn.create_aggregate(SINGLE_ROW, 1, several.aggregate())

        def spend() -> int:
            budget[0] -= _STEPS_PER_CHECK
            return 1 if budget[0] < 0 else 0  # non-zero: SQLite interrupts the statement

        rows: list[Row] = []
        answer = Budget(MergeLimits(max_rows, max_bytes), "the statement's answer")
        try:
            for scan in scans:
                declared = ", ".join(f"`{_quoted(n)}` {t}".rstrip() for n, t in scan.columns)
                conn.execute(f"CREATE TABLE `{scan.name}` ({declared})")
                marks = ", ".join("?" * len(scan.columns))
                conn.executemany(f"INSERT INTO `{scan.name}` VALUES ({marks})", scan.rows)
            conn.set_progress_handler(spend, _STEPS_PER_CHECK)
            cursor = conn.execute(query.sql, dict(query.params))
            names = [d[0] for d in cursor.description or ()]
            while batch := cursor.fetchmany(_FETCH_BATCH):
                answer.take(batch)
                rows.extend(tuple(r) for r in batch)
        except sqlite3.Error as exc:
            if budget[0] < 0:
                why = "the statement did too much work at the coordinator"
                raise SqlLimitError("MAX_FINAL_STEPS", max_steps, why) from None
            if several.seen:
                raise SqlExecutionError(
                    "more than one row returned by a subquery used as an expression"
                ) from None
            message = str(exc)
            if message.startswith(("no such column", "ambiguous column")):
                raise SqlCatalogError(message) from None
            raise SqlExecutionError(message) from None
        return names, rows


class _SeveralRows:
    """The ``_sw_single`` aggregate: the one value it saw (NULL for none), and an error
    on a second one, remembered so the error can say what SQLite's message cannot."""

    def __init__(self) -> None:
        self.seen = False

    def aggregate(self) -> type:
        owner = self

        class Single:
            def __init__(self) -> None:
                self.count = 0
                self.value: SqlValue = None

            def step(self, value: SqlValue) -> None:
                self.count += 1
                if self.count > 1:
                    owner.seen = True
                    raise ValueError("more than one row")
                self.value = value

            def finalize(self) -> SqlValue:
                return self.value

        return Single


def _quoted(name: str) -> str:
    """``name`` inside backticks (as the statements here quote names)."""
    return name.replace("`", "``")
