"""The SQL dialect shardwise accepts and the one its shards run.

Input is PostgreSQL-flavoured (``$1`` parameters, ``::`` casts, ``ILIKE``, ``now()``), but
the semantics are SQLite's, because SQLite executes every fragment: NULLs sort first in
ascending order (:class:`Shardwise` tells sqlglot so, else it would add ``NULLS LAST`` to
every ``ORDER BY`` to mimic PostgreSQL), integer division truncates, comparisons follow
SQLite's type affinity. Output for shards is SQLite with every identifier quoted, so a
column named ``order`` or ``key`` needs no care.
"""

from __future__ import annotations

from typing import Final

from sqlglot import exp
from sqlglot.dialects.postgres import Postgres
from sqlglot.errors import ErrorLevel, UnsupportedError

from shardwise.errors import UnsupportedSqlError


class Shardwise(Postgres):
    """PostgreSQL syntax with SQLite's NULL ordering (NULL is the smallest value)."""

    NULL_ORDERING = "nulls_are_small"


DIALECT: Final = Shardwise
"""What :func:`sqlglot.parse` reads."""

SHARD_DIALECT: Final = "sqlite"
"""What shards run."""


def to_sqlite(expression: exp.Expr) -> str:
    """SQLite text for ``expression``; a construct SQLite cannot express is refused here
    rather than silently dropped (sqlglot only warns by default)."""
    try:
        return expression.sql(
            dialect=SHARD_DIALECT, identify=True, unsupported_level=ErrorLevel.RAISE
        )
    except UnsupportedError as exc:
        raise UnsupportedSqlError("this construct on SQLite", str(exc)) from exc


def to_text(expression: exp.Expr) -> str:
    """The expression as shardwise SQL (for column names and messages)."""
    return expression.sql(dialect=Shardwise)
