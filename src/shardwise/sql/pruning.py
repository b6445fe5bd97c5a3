"""Which shards can hold rows that satisfy a WHERE clause.

The analysis is conservative: it returns a set of shards only when every row outside them
is certain to fail the condition, and None ("all shards") otherwise. Leaves that pin the
distribution column are ``col = v``, ``col IN (v, ...)`` and, in keyspaces of ordered key
ranges on a TEXT column, ``<``, ``<=``, ``>``, ``>=`` and ``BETWEEN``; ``AND`` intersects,
``OR`` unites, anything else (``NOT``, functions of the column, comparisons between
columns) says nothing. ``v`` is a literal or a bound parameter; the comparison then
converts it with the column's affinity exactly as :func:`stored_key` does.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from sqlglot import exp

from shardwise.model.config import Keyspace
from shardwise.placement import Key
from shardwise.sql.catalog import Affinity
from shardwise.sql.distribution import Router, stored_key
from shardwise.sql.params import NOT_CONSTANT, constant, decided
from shardwise.sql.values import SqlValue

Shards = frozenset[int] | None
"""A set of shard indexes, or None for all of them."""


@dataclass(frozen=True, slots=True)
class Pin:
    """The shards a value compared equal to the column can be on: the decision of the
    plan (``decisions``) that a point query's parameter makes, so that any value on
    the same shard makes the same plan. Two are the same for the same keyspace."""

    column_affinity: Affinity
    router: Router = field(compare=False)
    keyspace: Keyspace = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "keyspace", self.router.keyspace)

    def __call__(self, value: object) -> Shards:
        if value is NOT_CONSTANT:
            return None
        if value is None:  # col = NULL is never true: no shard holds a match
            return frozenset()
        key = stored_key(value, self.column_affinity)
        return None if key is None else frozenset({self.router.shard_of(key)})


@dataclass(frozen=True, slots=True)
class Pruner:
    column: str
    column_affinity: Affinity
    router: Router
    values: Mapping[str, SqlValue]

    def shards(self, where: exp.Expr | None) -> Shards:
        return None if where is None else self._visit(where)

    def _visit(self, node: exp.Expr) -> Shards:
        if isinstance(node, exp.Paren):
            return self._visit(node.this)
        if isinstance(node, exp.And):
            left, right = self._visit(node.left), self._visit(node.right)
            if left is None:
                return right
            return left if right is None else left & right
        if isinstance(node, exp.Or):
            left, right = self._visit(node.left), self._visit(node.right)
            return None if left is None or right is None else left | right
        if isinstance(node, exp.EQ):
            return self._equal(node.left, node.right)
        if isinstance(node, exp.In) and self._is_column(node.this) and not node.args.get("query"):
            found: set[int] = set()
            for item in node.expressions:
                shards = self._pinned(item)
                if shards is None:
                    return None
                found |= shards
            return frozenset(found)
        if self.router.ordered and self.column_affinity == "TEXT":
            return self._range(node)
        return None

    def _is_column(self, node: exp.Expr) -> bool:
        return isinstance(node, exp.Column) and node.name == self.column and not node.table

    def _equal(self, left: exp.Expr, right: exp.Expr) -> Shards:
        if self._is_column(left):
            return self._pinned(right)
        if self._is_column(right):
            return self._pinned(left)
        return None

    def _pinned(self, node: exp.Expr) -> Shards:
        return decided(node, self.values, Pin(self.column_affinity, self.router))

    def _key(self, node: exp.Expr) -> Key | None:
        value = constant(node, self.values)
        return None if value is NOT_CONSTANT else stored_key(value, self.column_affinity)

    def _range(self, node: exp.Expr) -> Shards:
        if isinstance(node, exp.Between) and self._is_column(node.this):
            low, high = self._key(node.args["low"]), self._key(node.args["high"])
            if low is None or high is None:
                return None
            return self.router.shards_between(low, high)
        if not isinstance(node, exp.GT | exp.GTE | exp.LT | exp.LTE):
            return None
        left, right = node.left, node.right
        upper = isinstance(node, exp.LT | exp.LTE)  # col < v bounds from above
        if self._is_column(right):
            left, right, upper = right, left, not upper
        if not self._is_column(left):
            return None
        key = self._key(right)
        if key is None:
            return None
        return (
            self.router.shards_between(None, key)
            if upper
            else self.router.shards_between(key, None)
        )
