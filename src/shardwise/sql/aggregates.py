"""Aggregates split into a partial (run by each shard) and a final (the coordinator's).

| aggregate | partial on each shard | combined at the coordinator |
|---|---|---|
| ``count(*)``, ``count(x)`` | ``count`` | sum |
| ``sum(x)`` | ``shardwise_sum(x)``: exact past 64 bits | sum (NULL if no value) |
| ``total(x)`` | ``total(x)`` | sum, a REAL |
| ``avg(x)`` | ``total(x)``, ``count(x)`` | sum / count (a REAL sum: no 64-bit overflow) |
| ``min(x)``, ``max(x)`` | ``min``, ``max`` | min, max in SQLite's order |
| ``count/sum/avg/total(DISTINCT x)`` | ``shardwise_distinct(x)``: a set | union, aggregate |
| ``approx_count_distinct(x)`` | ``shardwise_hll(x)``: a sketch | register maximum, estimate |
| ``variance``, ``stddev``, ... | ``shardwise_moments(x)``: n, mean, M2 | Chan's merge |

``group_concat``/``string_agg`` and SQLite's JSON aggregates depend on row order and do not
merge: they run only where the whole aggregation is pushed down (one shard, or a GROUP BY
on the distribution column). The shard functions are in :mod:`shardwise.sql.functions`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal, TypeAlias

from sqlglot import exp

from shardwise.errors import UnsupportedSqlError

Kind: TypeAlias = Literal[
    "count_star",
    "count",
    "sum",
    "total",
    "avg",
    "min",
    "max",
    "count_distinct",
    "sum_distinct",
    "total_distinct",
    "avg_distinct",
    "approx_distinct",
    "var_samp",
    "var_pop",
    "stddev_samp",
    "stddev_pop",
    "pushdown_only",
]

MOMENTS: Final = "shardwise_moments"
HLL: Final = "shardwise_hll"
DISTINCT_SET: Final = "shardwise_distinct"
EXACT_SUM: Final = "shardwise_sum"
APPROX_DISTINCT: Final = "approx_count_distinct"
PARTITION_FUNCTION: Final = "shardwise_partition"
"""Not an aggregate: the scalar function that places a repartition join's key in one
of its steps (named here with shardwise's other functions; see ``functions.py``)."""


_STATISTICS: Final[dict[type[exp.Expr], Kind]] = {
    exp.Variance: "var_samp",
    exp.VariancePop: "var_pop",
    exp.Stddev: "stddev_samp",
    exp.StddevSamp: "stddev_samp",
    exp.StddevPop: "stddev_pop",
}
_STATISTIC_NAMES: Final[dict[str, Kind]] = {
    "variance": "var_samp",
    "var_samp": "var_samp",
    "var_pop": "var_pop",
    "stddev": "stddev_samp",
    "stddev_samp": "stddev_samp",
    "stddev_pop": "stddev_pop",
}
_PUSHDOWN_ONLY_NAMES: Final = frozenset({"json_group_array", "json_group_object"})
_DISTINCT_KINDS: Final[dict[Kind, Kind]] = {
    "count": "count_distinct",
    "sum": "sum_distinct",
    "total": "total_distinct",
    "avg": "avg_distinct",
    "min": "min",  # MIN(DISTINCT x) is MIN(x)
    "max": "max",
}


@dataclass(frozen=True, slots=True)
class Aggregate:
    """One aggregate call: what it computes and over which argument."""

    kind: Kind
    arg: exp.Expr | None
    node: exp.Expr

    @property
    def mergeable(self) -> bool:
        return self.kind != "pushdown_only"


def is_aggregate(node: exp.Expr) -> bool:
    """Whether ``node`` is an aggregate call (``min(a, b)`` with two arguments is SQLite's
    scalar minimum, not an aggregate)."""
    if isinstance(node, exp.Min | exp.Max):
        return not node.expressions
    if isinstance(node, exp.Anonymous):
        name = node.name.lower()
        return (
            name in ("total", "count")
            or name in _STATISTIC_NAMES
            or name in (_PUSHDOWN_ONLY_NAMES | {APPROX_DISTINCT})
        )
    return isinstance(node, exp.AggFunc)


def classify(node: exp.Expr) -> Aggregate:
    """What aggregate ``node`` is (``is_aggregate(node)`` holds); unsupported ones are
    refused by name."""
    inner, distinct = _argument(node)
    kind = _kind(node)
    if distinct:
        if kind not in _DISTINCT_KINDS:
            raise UnsupportedSqlError(f"{_name(node)}(DISTINCT ...)")
        kind = _DISTINCT_KINDS[kind]
    if kind == "count" and inner is None:
        kind = "count_star"
    if kind not in ("count_star", "pushdown_only") and inner is None:
        raise UnsupportedSqlError(f"{_name(node)}() without an argument")
    return Aggregate(kind, inner, node)


def _kind(node: exp.Expr) -> Kind:
    if isinstance(node, exp.Count):
        return "count"
    if isinstance(node, exp.Sum):
        return "sum"
    if isinstance(node, exp.Avg):
        return "avg"
    if isinstance(node, exp.Min):
        return "min"
    if isinstance(node, exp.Max):
        return "max"
    if isinstance(node, exp.ApproxDistinct):
        return "approx_distinct"
    if type(node) in _STATISTICS:
        return _STATISTICS[type(node)]
    if isinstance(node, exp.GroupConcat):
        return "pushdown_only"
    if isinstance(node, exp.Anonymous):
        name = node.name.lower()
        if name == "total":
            return "total"
        if name == "count":
            return "count"
        if name == APPROX_DISTINCT:
            return "approx_distinct"
        if name in _STATISTIC_NAMES:
            return _STATISTIC_NAMES[name]
        if name in _PUSHDOWN_ONLY_NAMES:
            return "pushdown_only"
    raise UnsupportedSqlError(f"the aggregate {_name(node)}")


def _argument(node: exp.Expr) -> tuple[exp.Expr | None, bool]:
    if isinstance(node, exp.Anonymous):
        args = list(node.expressions)
        if len(args) > 1 and node.name.lower() not in _PUSHDOWN_ONLY_NAMES:
            raise UnsupportedSqlError(f"{_name(node)} with {len(args)} arguments")
        first = args[0] if args else None
    else:
        first = node.this if isinstance(node.this, exp.Expr) else None
    if isinstance(first, exp.Star):
        return None, False
    if isinstance(first, exp.Distinct):
        items = list(first.expressions)
        if len(items) != 1:
            raise UnsupportedSqlError(f"{_name(node)}(DISTINCT over several values)")
        return items[0], True
    return first, False


def _name(node: exp.Expr) -> str:
    if isinstance(node, exp.Anonymous):
        return node.name.upper()
    return node.sql_name() if isinstance(node, exp.Func) else type(node).__name__.upper()


def shard_function(node: exp.Expr) -> exp.Expr:
    """``node`` with shardwise's own aggregates renamed to the functions shards register
    (sqlglot would print ``VARIANCE(x)``, which SQLite does not have)."""

    def rename(n: exp.Expr) -> exp.Expr:
        if type(n) in _STATISTICS:
            kind = _STATISTICS[type(n)]
            return exp.Anonymous(this=kind, expressions=[n.this])
        if isinstance(n, exp.ApproxDistinct):
            # Python's sqlite3 returns NULL from an aggregate that saw no rows; a count
            # of nothing is 0, as the merged result is.
            call = exp.Anonymous(this=APPROX_DISTINCT, expressions=[n.this])
            return exp.Coalesce(this=call, expressions=[exp.Literal.number(0)])
        return n

    return node.transform(rename, copy=True)


def partials(aggregate: Aggregate) -> list[exp.Expr]:
    """The expressions a shard computes for ``aggregate``'s partial state."""
    x = aggregate.arg.copy() if aggregate.arg is not None else None

    def call(name: str) -> exp.Expr:
        assert x is not None
        return exp.Anonymous(this=name, expressions=[x.copy()])

    kind = aggregate.kind
    if kind == "count_star":
        return [exp.Count(this=exp.Star())]
    if kind == "sum":
        # Not SQLite's sum: one shard's part of a SUM may pass 64 bits where the whole
        # does not; the state stays exact.
        return [call(EXACT_SUM)]
    if kind in ("count", "total", "min", "max"):
        return [call(kind)]
    if kind == "avg":
        # total, not sum: a shard's integer SUM can overflow 64 bits where AVG (a REAL,
        # like SQLite's own running sum for it) cannot.
        return [call("total"), call("count")]
    if kind in ("count_distinct", "sum_distinct", "total_distinct", "avg_distinct"):
        return [call(DISTINCT_SET)]
    if kind == "approx_distinct":
        return [call(HLL)]
    if kind in ("var_samp", "var_pop", "stddev_samp", "stddev_pop"):
        return [call(MOMENTS)]
    raise UnsupportedSqlError(
        f"the aggregate {_name(aggregate.node)} across shards",
        "its result depends on row order; GROUP BY the distribution column or pin one shard",
    )
