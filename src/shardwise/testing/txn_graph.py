"""Dependency graphs of transactions and the search for their cycles.

A :class:`DependencyGraph` has one node per transaction (its index) and edges labelled
with the kinds of dependency between two transactions, as a bit mask: :data:`WW` (write
after write), :data:`WR` (a read saw a write), :data:`RW` (an anti-dependency: a read did
not see a write) and :data:`RT` (real time: one returned before the other was called).
A history is serializable only if the graph of its ww, wr and rw edges is acyclic, and
strictly serializable only if the graph with real-time edges too is acyclic (Adya).

Cycles are classified as Adya and Elle do, the most severe class first:

* ``G0``: ww edges only (write cycles);
* ``G1c``: ww and wr edges (circular information flow);
* ``G-single``: exactly one rw edge, the others ww or wr (read skew);
* ``G2``: any number of rw edges (write skew, and worse);

and, when real-time edges are present, the same classes with a ``-realtime`` suffix for
cycles that need at least one of them (violations of strict serializability only).

The search goes by strongly connected components (:func:`strongly_connected_components`,
Tarjan's algorithm): every cycle lies inside one. Within a component each class in turn
is looked for in the subgraph of the edges it allows, with breadth-first searches so that
the cycle reported is short (a few hops explain an anomaly; a path through a thousand
transactions does not). ``G-single`` needs its own search: for each rw edge ``a -> b``,
the shortest path back from ``b`` to ``a`` over the other kinds.

Every search charges a :class:`Budget`; when it runs out, :class:`BudgetExhaustedError`
is raised and the caller decides what an incomplete search means.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Final, Generic, NamedTuple, TypeVar

WW: Final = 1
WR: Final = 2
RW: Final = 4
RT: Final = 8
"""Edge kinds, as bits. Their order is also the preference when an edge has several kinds:
a cycle is explained with the least severe kind each of its edges has."""

SERIALIZABLE_KINDS: Final = WW | WR | RW
ALL_KINDS: Final = SERIALIZABLE_KINDS | RT

BUDGET_CHECK_INTERVAL_STEPS: Final = 1024
"""Steps between two looks at the clock: reading it on every step would cost about as much
as the step itself (the step count is compared every time, it is cheap)."""

CYCLE_SEARCH_STARTS: Final = 8
"""Nodes of a component that a class's search starts a breadth-first search from, keeping
the shortest cycle found. One start finds *a* cycle; a few find a shorter one in a large
component without paying a search from each of its nodes."""

R = TypeVar("R")


class BudgetExhaustedError(Exception):
    """The deadline passed or the step budget ran out."""


@dataclass
class Budget:
    """Steps and time a search may take: ``max_steps`` steps (``math.inf``: no limit)
    until ``deadline`` by ``clock``. Once spent it stays spent."""

    deadline: float = math.inf
    max_steps: float = math.inf
    clock: Callable[[], float] = time.monotonic
    steps: int = 0
    exhausted: bool = False
    _until_clock: int = BUDGET_CHECK_INTERVAL_STEPS

    def spend(self, steps: int = 1) -> None:
        """Take ``steps``; raise :class:`BudgetExhaustedError` if the budget is spent."""
        if self.exhausted:
            raise BudgetExhaustedError
        self.steps += steps
        self._until_clock -= steps
        if self.steps > self.max_steps:
            self.exhausted = True
        elif self._until_clock <= 0:
            self._until_clock = BUDGET_CHECK_INTERVAL_STEPS
            self.exhausted = self.clock() > self.deadline
        if self.exhausted:
            raise BudgetExhaustedError


class DependencyGraph(Generic[R]):
    """Edges between transactions, each with its kinds and, per kind, the first reason
    given for it (``R``: whatever the caller needs to explain the edge)."""

    __slots__ = ("reasons", "succ")

    def __init__(self) -> None:
        self.succ: dict[int, dict[int, int]] = {}
        """source -> target -> kinds (bit mask)."""
        self.reasons: dict[tuple[int, int, int], R] = {}
        """(source, target, kind) -> the reason recorded first."""

    def add(self, source: int, target: int, kind: int, reason: R) -> None:
        """Add a dependency ``source -> target``. One from a transaction to itself is
        dropped: a transaction is never ordered against itself, and without self-loops
        every cycle has two transactions at least."""
        if source == target:
            return
        targets = self.succ.setdefault(source, {})
        kinds = targets.get(target, 0)
        if not kinds & kind:
            targets[target] = kinds | kind
            self.reasons[source, target, kind] = reason

    def kinds(self, source: int, target: int) -> int:
        return self.succ.get(source, {}).get(target, 0)

    def edge_count(self) -> int:
        return sum(len(targets) for targets in self.succ.values())


@dataclass(frozen=True, slots=True)
class Cycle:
    """``nodes[0] -> nodes[1] -> ... -> nodes[-1] -> nodes[0]``; ``kinds[i]`` is the single
    kind used to explain the edge leaving ``nodes[i]``."""

    nodes: tuple[int, ...]
    kinds: tuple[int, ...]

    def edges(self) -> list[tuple[int, int, int]]:
        """(source, target, kind) of each edge, in order."""
        following = (*self.nodes[1:], self.nodes[0])
        return list(zip(self.nodes, following, self.kinds, strict=True))


def cycle_class(kinds: Sequence[int]) -> str:
    """The class of a cycle with edges of ``kinds`` (see the module docstring)."""
    rw = sum(1 for kind in kinds if kind == RW)
    if rw == 0:
        base = "G1c" if WR in kinds else "G0"
    elif rw == 1:
        base = "G-single"
    else:
        base = "G2"
    return base + ("-realtime" if RT in kinds else "")


class CycleClass(NamedTuple):
    """A class to search for: cycles over edges of ``mask``; with ``single_rw``, plus
    exactly one rw edge."""

    name: str
    mask: int
    single_rw: bool = False


SERIALIZABILITY_CLASSES: Final = (
    CycleClass("G0", WW),
    CycleClass("G1c", WW | WR),
    CycleClass("G-single", WW | WR, single_rw=True),
    CycleClass("G2", SERIALIZABLE_KINDS),
)
"""The classes of the module docstring, most severe first."""

REALTIME_CLASSES: Final = tuple(
    CycleClass(f"{c.name}-realtime", c.mask | RT, c.single_rw) for c in SERIALIZABILITY_CLASSES
)
"""The same with real-time edges allowed; searched only where no cycle without them
exists, so that each cycle found needs at least one."""


def _neighbours(
    graph: DependencyGraph[R], node: int, mask: int, within: frozenset[int] | None
) -> list[int]:
    return [
        target
        for target, kinds in graph.succ.get(node, {}).items()
        if kinds & mask and (within is None or target in within)
    ]


def strongly_connected_components(
    graph: DependencyGraph[R],
    mask: int,
    budget: Budget,
    within: frozenset[int] | None = None,
) -> list[list[int]]:
    """The components of more than one node (each sorted, in order of their smallest
    node) of the subgraph of edges of ``mask`` between nodes of ``within`` (``None``: all).

    Tarjan's algorithm, iterative: a history of thousands of transactions chained by
    dependencies would overflow Python's recursion limit. Components of one node are left
    out: without self-loops they hold no cycle.
    """
    roots: Iterable[int] = sorted(graph.succ if within is None else within)
    index: dict[int, int] = {}
    low: dict[int, int] = {}
    stack: list[int] = []
    on_stack: set[int] = set()
    found: list[list[int]] = []
    for root in roots:
        if root in index:
            continue
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        work = [(root, iter(_neighbours(graph, root, mask, within)))]
        while work:
            node, targets = work[-1]
            descended = False
            for target in targets:
                budget.spend()
                if target not in index:
                    index[target] = low[target] = len(index)
                    stack.append(target)
                    on_stack.add(target)
                    work.append((target, iter(_neighbours(graph, target, mask, within))))
                    descended = True
                    break
                if target in on_stack:
                    low[node] = min(low[node], index[target])
            if descended:
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component: list[int] = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    found.sort(key=lambda component: component[0])
    return found


def shortest_path(
    graph: DependencyGraph[R],
    source: int,
    target: int,
    *,
    mask: int,
    within: frozenset[int],
    budget: Budget,
) -> list[int] | None:
    """The nodes of a shortest path ``source -> ... -> target`` over edges of ``mask``
    between nodes of ``within``, both ends included; ``source == target`` asks for a
    shortest cycle through it (then ``target`` is not repeated). ``None`` if there is none."""
    parent: dict[int, int] = {}
    queue = deque([source])
    seen = {source}
    while queue:
        node = queue.popleft()
        targets = graph.succ.get(node, {})
        budget.spend(len(targets))
        for next_node, kinds in targets.items():
            if not kinds & mask or next_node not in within:
                continue
            if next_node == target:
                path = [node]
                while path[-1] != source:
                    path.append(parent[path[-1]])
                path.reverse()
                return path if source == target else [*path, target]
            if next_node not in seen:
                seen.add(next_node)
                parent[next_node] = node
                queue.append(next_node)
    return None


def _lowest_kind(kinds: int) -> int:
    return kinds & -kinds


def _cycle_of(graph: DependencyGraph[R], nodes: Sequence[int], mask: int) -> Cycle:
    following = [*nodes[1:], nodes[0]]
    kinds = tuple(
        _lowest_kind(graph.kinds(a, b) & mask) for a, b in zip(nodes, following, strict=True)
    )
    return Cycle(tuple(nodes), kinds)


def _shortest(cycles: Iterable[Cycle | None]) -> Cycle | None:
    best: Cycle | None = None
    for cycle in cycles:
        if cycle is not None and (best is None or len(cycle.nodes) < len(best.nodes)):
            best = cycle
            if len(best.nodes) == 2:  # without self-loops, no cycle is shorter
                break
    return best


def _cycles_over(
    graph: DependencyGraph[R], component: frozenset[int], mask: int, budget: Budget
) -> Iterable[Cycle | None]:
    for part in strongly_connected_components(graph, mask, budget, component):
        members = frozenset(part)
        for start in part[:CYCLE_SEARCH_STARTS]:
            path = shortest_path(graph, start, start, mask=mask, within=members, budget=budget)
            yield None if path is None else _cycle_of(graph, path, mask)


def _single_rw_cycles(
    graph: DependencyGraph[R], component: frozenset[int], mask: int, budget: Budget
) -> Iterable[Cycle | None]:
    # Grouped by the rw edge's target: one search from each target serves all the rw
    # edges into it (the distances back to their sources are the same search's).
    into: dict[int, list[int]] = {}
    for source in sorted(component):
        targets = graph.succ.get(source, {})
        budget.spend(len(targets))
        for target, kinds in targets.items():
            if kinds & RW and target in component:
                into.setdefault(target, []).append(source)
    for target, sources in into.items():
        parent = _search_from(graph, target, mask, component, budget)
        reached = [source for source in sources if source in parent]
        if not reached:
            continue
        # The nearest source closes the shortest cycle through this target.
        source = min(reached, key=lambda node: _depth(parent, node))
        path = [source]
        while path[-1] != target:
            path.append(parent[path[-1]])
        # path runs source <- ... <- target; the cycle is source -rw-> target -> ... -> source.
        nodes = [source, *reversed(path[1:])]
        cycle = _cycle_of(graph, nodes, mask)
        yield Cycle(cycle.nodes, (RW, *cycle.kinds[1:]))


def _search_from(
    graph: DependencyGraph[R], source: int, mask: int, within: frozenset[int], budget: Budget
) -> dict[int, int]:
    """Breadth-first search: each node reached (``source`` excluded) -> its parent."""
    parent: dict[int, int] = {}
    queue = deque([source])
    while queue:
        node = queue.popleft()
        targets = graph.succ.get(node, {})
        budget.spend(len(targets))
        for next_node, kinds in targets.items():
            if (
                kinds & mask
                and next_node in within
                and next_node not in parent
                and next_node != source
            ):
                parent[next_node] = node
                queue.append(next_node)
    return parent


def _depth(parent: dict[int, int], node: int) -> int:
    depth = 0
    while node in parent:
        node = parent[node]
        depth += 1
    return depth


def find_cycle(
    graph: DependencyGraph[R], component: frozenset[int], cls: CycleClass, budget: Budget
) -> Cycle | None:
    """A short cycle of class ``cls`` among the nodes of ``component``, if there is one.

    The classes must be searched in order (:data:`SERIALIZABILITY_CLASSES`): a search
    assumes none of the classes before it has a cycle here, which is what makes, say, a
    cycle found over ww and wr edges a ``G1c`` rather than a ``G0``.
    """
    if cls.single_rw:
        return _shortest(_single_rw_cycles(graph, component, cls.mask, budget))
    return _shortest(_cycles_over(graph, component, cls.mask, budget))


def most_severe_cycle(
    graph: DependencyGraph[R],
    component: frozenset[int],
    classes: Sequence[CycleClass],
    budget: Budget,
) -> Cycle | None:
    """The short cycle of the most severe of ``classes`` that ``component`` holds."""
    for cls in classes:
        cycle = find_cycle(graph, component, cls, budget)
        if cycle is not None:
            return cycle
    return None


def any_cycle(graph: DependencyGraph[R], component: Sequence[int], mask: int) -> Cycle:
    """A cycle through the first node of ``component``, a strongly connected component of
    the edges of ``mask``: one breadth-first search, never interrupted. What a caller
    reports when the budget for :func:`most_severe_cycle` ran out."""
    members = frozenset(component)
    path = shortest_path(
        graph, component[0], component[0], mask=mask, within=members, budget=Budget()
    )
    assert path is not None, "not a strongly connected component"
    return _cycle_of(graph, path, mask)
