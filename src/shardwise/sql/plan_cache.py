"""Plans kept by the statement's text, so a statement run again with new values is not
planned again.

A plan depends on the text, the catalog, and the parameter values only through the
decisions the planner took from them (:mod:`shardwise.sql.decisions`: a value that pins
a shard decides which shards; a LIMIT's value decides itself). So a plan made for some
values serves any values whose decisions come out the same, once its fragments carry
the new values. What is kept:

- per text, for one catalog: how its placeholders bind (``params.Placeholders``) and
  its *recipe*, the decisions of its first planning in order (parameter and derivation);
- per text and decision results: the plan, its user values blanked (each hit gives it
  its own: nothing of a user's data is held, and a plan's size is not its values').

An execution binds its values (the same checks and errors as planning), derives each
decision of the recipe from them, and looks the plan up. A hit is exactly the plan the
planner would make: planning takes the same branches for the same decision results
(the first decision is the same, so the second is reached by the same path, and so on),
and reads nothing else of the values. A planning whose recipe differs from its text's
(a different branch) is returned but not kept.

Not kept: plans that hold the statement's instant or seed (``now()``, ``random()`` in
a write), INSERTs (placed row by row from their values: the bulk path of
``param_insert`` is their fast path), ``INSERT ... SELECT``, DDL and ``ANALYZE``.

Invalidation is by identity: an entry holds its catalog, and a statement planned
against any other catalog object plans anew. Catalog stores hand out one object per
configuration (``ClusterSql`` keeps the last), so DDL and shard moves, which make a new
configuration, make new plans; plans name shards, never groups, so a shard move changes
no plan anyway.

Pure: no I/O. Shared by a process's clients (entries of different catalogs never meet);
like the statement cache, it tolerates threads without a lock (an entry dropped by
another thread meanwhile is planned again).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, TypeVar

from shardwise.sql import statement_cache
from shardwise.sql.decisions import Derivation, Recording, recording
from shardwise.sql.params import Params, Placeholders, bind_values, placeholders
from shardwise.sql.plans import Fragment, JoinPlan, Plan, ReadPlan, WritePlan
from shardwise.sql.values import SqlValue

if TYPE_CHECKING:
    from shardwise.sql.catalog import Catalog
    from shardwise.sql.planner import Planned

K = TypeVar("K")
V = TypeVar("V")

MAX_CACHED_TEXTS: Final = 1024
"""Statement texts whose recipe is kept (least recently used first out)."""

MAX_CACHED_PLANS: Final = 4096
"""Plans kept in all: a point query keeps one per shard its values reach (64 in the
default keyspace), so this holds the plans of dozens of hot statements."""


@dataclass(frozen=True, slots=True)
class _Text:
    catalog: Catalog
    written: Placeholders
    recipe: tuple[tuple[str, Derivation], ...] | None
    """None: the text's plans are not kept."""


@dataclass(frozen=True, slots=True)
class _Kept:
    catalog: Catalog
    planned: Planned


class PlanCache:
    def __init__(
        self, *, max_texts: int = MAX_CACHED_TEXTS, max_plans: int = MAX_CACHED_PLANS
    ) -> None:
        self._max_texts = max_texts
        self._max_plans = max_plans
        self._texts: OrderedDict[tuple[str, int], _Text] = OrderedDict()
        self._plans: OrderedDict[tuple[str, int, tuple[Hashable, ...]], _Kept] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def plan(
        self,
        sql: str,
        params: Params | None,
        catalog: Catalog,
        fresh: Callable[[], Planned],
    ) -> Planned:
        """The plan of ``sql`` for ``params``: kept, with their values, or ``fresh()``."""
        at = (sql, id(catalog))  # (several clients' catalogs in one process: one entry each)
        text = self._texts.get(at)
        if text is not None and text.catalog is catalog:
            if text.recipe is None:
                return fresh()
            values, _ = bind_values(text.written, params)
            key = (*at, tuple(derive(values[name]) for name, derive in text.recipe))
            kept = self._plans.get(key)
            if kept is not None and kept.catalog is catalog:
                self.hits += 1
                with contextlib.suppress(KeyError):  # (dropped meanwhile by another thread)
                    self._plans.move_to_end(key)
                    self._texts.move_to_end(at)
                return rebound(kept.planned, values)
        self.misses += 1
        with recording() as found:
            planned = fresh()
        self._keep(sql, params, catalog, found, planned)
        return planned

    def _keep(
        self,
        sql: str,
        params: Params | None,
        catalog: Catalog,
        found: Recording,
        planned: Planned,
    ) -> None:
        recipe = tuple((d.name, d.derivation) for d in found.decisions)
        at = (sql, id(catalog))
        text = self._texts.get(at)
        if text is None or text.catalog is not catalog:
            keep = (
                not found.contextual
                and len(sql) <= statement_cache.MAX_CACHED_CHARS
                and keepable(planned.plan)
            )
            written = placeholders(statement_cache.parse(sql).statement) if keep else Placeholders()
            text = _Text(catalog, written, recipe if keep else None)
            self._texts[at] = text
            _bound(self._texts, self._max_texts)
        if text.recipe is None or text.recipe != recipe:
            return  # (not kept, or a branch other than the recipe's: planned each time)
        # Kept without this execution's values (a hit gives each its own): no user data
        # held on to, and a plan's size not its values' (an UPDATE of a 1 MiB blob).
        values, _ = bind_values(text.written, params)
        blank = rebound(planned, dict.fromkeys(values))
        self._plans[(*at, tuple(d.result for d in found.decisions))] = _Kept(catalog, blank)
        _bound(self._plans, self._max_plans)

    def clear(self) -> None:
        self._texts.clear()
        self._plans.clear()


def keepable(plan: Plan) -> bool:
    """Whether plans of this kind are kept (see the module's note)."""
    if isinstance(plan, ReadPlan | JoinPlan):
        return True
    return isinstance(plan, WritePlan) and plan.kind != "INSERT"


def rebound(planned: Planned, values: Mapping[str, SqlValue]) -> Planned:
    """``planned`` with every fragment's parameters among ``values`` set to those."""
    found = _rebound(planned, values)
    assert isinstance(found, type(planned))
    return found


def _rebound(node: object, values: Mapping[str, SqlValue]) -> object:
    if isinstance(node, Fragment):
        if not any(name in values for name in node.params):
            return node
        params = {name: values.get(name, value) for name, value in node.params.items()}
        return dataclasses.replace(node, params=params)
    if isinstance(node, tuple):
        items = tuple(_rebound(item, values) for item in node)
        return node if all(a is b for a, b in zip(items, node, strict=True)) else items
    if dataclasses.is_dataclass(node) and not isinstance(node, type):
        changed: dict[str, object] = {}
        for field in dataclasses.fields(node):
            old = getattr(node, field.name)
            new = _rebound(old, values)
            if new is not old:
                changed[field.name] = new
        return dataclasses.replace(node, **changed) if changed else node
    return node


def _bound(entries: OrderedDict[K, V], most: int) -> None:
    while len(entries) > most:
        with contextlib.suppress(KeyError):  # (emptied meanwhile by another thread)
            entries.popitem(last=False)


PLANS: Final = PlanCache()
"""The process's plan cache (the planner's front door uses it)."""
