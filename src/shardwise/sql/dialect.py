"""The SQL dialect shardwise accepts and the one its shards run.

Input is PostgreSQL-flavoured (``$1`` parameters, ``::`` casts, ``ILIKE``, ``now()``), but
the semantics are SQLite's, because SQLite executes every fragment: NULLs sort first in
ascending order (:class:`Shardwise` tells sqlglot so, else it would add ``NULLS LAST`` to
every ``ORDER BY`` to mimic PostgreSQL), integer division truncates, comparisons follow
SQLite's type affinity. Output for shards is SQLite with every identifier quoted, so a
column named ``order`` or ``key`` needs no care.

``NUMERIC`` and ``DECIMAL`` (with or without a precision) mean what they mean in SQLite:
NUMERIC affinity, in a column declaration and in a ``CAST`` alike, so an integral value
stays an INTEGER (``7 / 2`` is 3) and a fractional one is a REAL. There is no exact
decimal type; ``docs/sql.md`` says so.
"""

from __future__ import annotations

from typing import Final

from sqlglot import exp
from sqlglot.dialects.postgres import Postgres
from sqlglot.dialects.sqlite import SQLite
from sqlglot.errors import ErrorLevel, UnsupportedError

from shardwise.errors import UnsupportedSqlError


class Shardwise(Postgres):
    """PostgreSQL syntax with SQLite's NULL ordering (NULL is the smallest value)."""

    NULL_ORDERING = "nulls_are_small"


DIALECT: Final = Shardwise
"""What :func:`sqlglot.parse` reads."""

SHARD_DIALECT: Final = "sqlite"
"""What shards run."""

_DECIMAL_TYPES: Final = frozenset(
    {
        exp.DataType.Type.DECIMAL,
        exp.DataType.Type.BIGDECIMAL,
        exp.DataType.Type.DECIMAL32,
        exp.DataType.Type.DECIMAL64,
        exp.DataType.Type.DECIMAL128,
        exp.DataType.Type.DECIMAL256,
        exp.DataType.Type.UDECIMAL,
    }
)


def _numeric_affinity(node: exp.Expr) -> exp.Expr:
    # sqlglot writes DECIMAL as SQLite's REAL; SQLite's own rule is NUMERIC affinity.
    if isinstance(node, exp.DataType) and node.this in _DECIMAL_TYPES:
        return exp.DataType(this=exp.DataType.Type.USERDEFINED, kind="NUMERIC")
    return node


class _BacktickSQLite(SQLite):
    """SQLite quoting identifiers with backticks: SQLite reads a double-quoted name that
    matches no column as a string (its "double-quoted string literal" quirk, which
    Python 3.11 cannot switch off), a backticked one never."""


# (Set after the class is made: sqlglot's dialect metaclass derives them from the
# tokenizer while making it.)
_BacktickSQLite.IDENTIFIER_START = _BacktickSQLite.IDENTIFIER_END = "`"


def to_sqlite(expression: exp.Expr, *, backticks: bool = False) -> str:
    """SQLite text for ``expression``; a construct SQLite cannot express is refused here
    rather than silently dropped (sqlglot only warns by default). ``backticks``: quote
    identifiers so, for SQL whose column names nothing checked before SQLite does (a
    misspelt name is then an error, not a string)."""
    if any(t.this in _DECIMAL_TYPES for t in expression.find_all(exp.DataType)):
        expression = expression.transform(_numeric_affinity, copy=True)
    try:
        return expression.sql(
            dialect=_BacktickSQLite if backticks else SHARD_DIALECT,
            identify=True,
            unsupported_level=ErrorLevel.RAISE,
        )
    except UnsupportedError as exc:
        raise UnsupportedSqlError("this construct on SQLite", str(exc)) from exc
    except ValueError as exc:  # sqlglot's own, e.g. for the bit string B''
        raise UnsupportedSqlError("this literal on SQLite", str(exc)) from None


def to_text(expression: exp.Expr) -> str:
    """The expression as shardwise SQL (for column names and messages)."""
    return expression.sql(dialect=Shardwise)


def table_node(name: str) -> exp.Table:
    """A reference to the table called exactly ``name``, quoted (never parsed, as
    ``exp.to_table`` parses: a name may hold dots, quotes or dashes)."""
    return exp.Table(this=exp.to_identifier(name, quoted=True))
