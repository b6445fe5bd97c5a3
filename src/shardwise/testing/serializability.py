"""Serializability checking of list-append transaction histories, in the manner of Elle.

The workload (see :mod:`shardwise.testing.txn_history`): transactions append elements to
keys' lists, each element unique per key, and read whole lists. Because every element is
unique and a list only grows, a read names the transaction behind each element it holds
and the order in which they were applied, so the checker can *infer* the dependencies a
database would have to respect, rather than search for an order that explains the reads
(which is what makes :mod:`shardwise.testing.linearizability` exponential):

1. **Element-level anomalies**, each read of an ``ok`` transaction on its own:
   ``duplicate`` (an element twice in a list), ``garbage`` (an element nobody appended),
   ``G1a`` (an element appended only by a failed transaction: an aborted read),
   ``G1b`` (a list ending in an element that its transaction followed with another
   append to the same key: an intermediate read) and ``internal`` (a read that does not
   reflect the transaction's own earlier reads and appends of the key).
2. **Version orders.** A key's order is its longest read (reads with duplicates left
   out); every other read of it must be a prefix of that one, else the key's reads are
   ``incompatible-order`` and the key is left out of the graph.
3. **The dependency graph** over the ``ok`` transactions and the ``info`` ones whose
   appends were seen (a failed transaction never took effect; an ``info`` one nobody
   saw has no dependency we know of). For each key with order ``x0, x1, ...``:
   ``ww``: the writer of ``x(i)`` precedes the writer of ``x(i+1)``; ``wr``: the writer
   of a read's last element precedes the reader; ``rw``: a reader precedes the writer of
   the first element after the ones it saw that another transaction appended (``x0``'s,
   for an empty read). With ``realtime=True``, also: a transaction precedes every one
   called after it returned, without the edges others imply (a transaction gets edges
   from those that returned before its call, except those known to precede another of
   them).
4. **Cycles** (:mod:`shardwise.testing.txn_graph`): each strongly connected component of
   the ww/wr/rw graph is reported once, as a short cycle of its most severe class
   (``G0``, ``G1c``, ``G-single``, ``G2``). With real-time edges, a component of the
   whole graph that holds no such cycle is reported as the ``-realtime`` variant: the
   history is serializable there, but not strictly.

The inference is sound (each anomaly is a real violation) but not complete: a stale read
that no other read contradicts leaves no trace in the graph, as in Elle.

Work is bounded: ``max_steps`` (:data:`MAX_CYCLE_SEARCH_STEPS` by default) steps of the
cycle search, and ``timeout`` seconds for the whole check. A component whose search runs
out is still reported, with the first cycle a single search finds (its class is right for
that cycle, but a more severe one may hide in the component). A deadline passed before
the graph is built ends the check: ``UNKNOWN``, or ``INVALID`` if an anomaly was already
found.

Command line::

    python -m shardwise.testing.serializability [--realtime] [--timeout S] [--explain] FILE...

checks JSON-lines histories (:func:`~shardwise.testing.txn_history.load_history`) and
prints ``FILE valid``, ``FILE invalid`` or ``FILE unknown`` (also for a file that cannot
be read or parsed; the reason goes to stderr). Exit status: 0 if every file is valid; 1
if any is invalid; otherwise 2 if any is unknown or unreadable.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import math
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final, NamedTuple

from shardwise.errors import HistoryFormatError
from shardwise.testing.txn_graph import (
    ALL_KINDS,
    REALTIME_CLASSES,
    RT,
    RW,
    SERIALIZABILITY_CLASSES,
    SERIALIZABLE_KINDS,
    WR,
    WW,
    Budget,
    BudgetExhaustedError,
    Cycle,
    CycleClass,
    DependencyGraph,
    any_cycle,
    cycle_class,
    most_severe_cycle,
    strongly_connected_components,
)
from shardwise.testing.txn_history import (
    Anomaly,
    Append,
    Key,
    Read,
    Txn,
    TxnCheckResult,
    Verdict,
    index_history,
    load_history,
    show_list,
    verdict_of,
)

__all__ = [
    "MAX_CYCLE_SEARCH_STEPS",
    "Anomaly",
    "TxnCheckResult",
    "Verdict",
    "check_list_append",
    "main",
]

MAX_CYCLE_SEARCH_STEPS: Final = 10_000_000
"""Default bound on the cycle search, in edges looked at: a few seconds of Python. Building
the graph and finding its components is linear and bounded by the timeout only."""


EXPLAIN_CYCLE_EDGES: Final = 10
"""Edges of a cycle spelled out in its explanation; a longer cycle shows its two ends."""


class _Observed(NamedTuple):
    """A read of an ``ok`` transaction that can take part in a version order."""

    txn: int
    key: Key
    value: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class _Why:
    """Why an edge exists, for its explanation: ``element`` is the later append (ww), the
    element a read ended in (wr), or the append a read missed (rw); ``prior`` the earlier
    append (ww); ``read`` the list read (wr, rw)."""

    key: Key
    element: int = 0
    prior: int = 0
    read: tuple[int, ...] = ()


_REALTIME: Final = _Why("")
"""The reason of every real-time edge: its explanation comes from the two transactions."""


@dataclass
class _History:
    """The facts about a history that every step uses."""

    txns: dict[int, Txn]
    writer: dict[tuple[Key, int], int]
    """(key, element) -> the transaction that appended it."""
    last_append: dict[tuple[int, Key], int]
    """(transaction, key) -> the last element it appended to the key."""
    committable: dict[Key, set[int]]
    """key -> the elements appended to it by transactions that did not fail."""


def check_list_append(
    history: Iterable[Txn],
    *,
    realtime: bool = False,
    timeout: float | None = None,
    max_steps: int | None = MAX_CYCLE_SEARCH_STEPS,
    clock: Callable[[], float] = time.monotonic,
) -> TxnCheckResult:
    """Check a list-append history for serializability (with ``realtime``, strict
    serializability) as the module docstring describes.

    ``timeout`` (seconds of ``clock``) bounds the whole check and ``max_steps`` the cycle
    search; ``None`` means unbounded. A malformed history (a duplicate index or append, a
    bank operation, an ``ok`` read without a value) raises :class:`HistoryFormatError`.
    """
    facts = _facts(history)
    deadline = math.inf if timeout is None else clock() + timeout
    search = Budget(deadline, math.inf if max_steps is None else max_steps, clock)
    found: list[Anomaly] = []
    observed: list[_Observed] = []
    for txn in facts.txns.values():
        if txn.status == "ok":
            found.extend(_internal(txn))
            observed.extend(_read_anomalies(txn, facts, found))
    orders = _version_orders(observed, found)

    def result(complete: bool, note: str = "") -> TxnCheckResult:
        return TxnCheckResult(
            verdict_of(found, complete),
            tuple(found),
            transactions=len(facts.txns),
            steps=search.steps,
            complete=complete,
            note=note,
        )

    try:
        linear = Budget(deadline, math.inf, clock)
        graph = _graph(facts, orders, observed, realtime, linear)
        components = strongly_connected_components(graph, SERIALIZABLE_KINDS, linear)
        realtime_components = (
            strongly_connected_components(graph, ALL_KINDS, linear) if realtime else []
        )
    except BudgetExhaustedError:
        return result(False, "timed out while building the dependency graph")

    cyclic = {node for component in components for node in component}
    # A component with a cycle that needs no real-time edge is explained by that cycle.
    realtime_only = [c for c in realtime_components if cyclic.isdisjoint(c)]
    for classes, mask, group in (
        (SERIALIZABILITY_CLASSES, SERIALIZABLE_KINDS, components),
        (REALTIME_CLASSES, ALL_KINDS, realtime_only),
    ):
        for component in group:
            anomaly = _cycle_anomaly(
                graph, facts, component, classes=classes, mask=mask, budget=search
            )
            found.append(anomaly)
    note = ""
    if search.exhausted:
        note = "the cycle search ran out of budget: a component may hold a more severe cycle"
    return result(not search.exhausted, note)


# --- the facts and the element-level anomalies -------------------------------------------


def _facts(history: Iterable[Txn]) -> _History:
    txns = index_history(history)
    writer: dict[tuple[Key, int], int] = {}
    last_append: dict[tuple[int, Key], int] = {}
    committable: dict[Key, set[int]] = {}
    for txn in txns.values():
        for mop in txn.mops:
            if isinstance(mop, Append):
                other = writer.get((mop.key, mop.element))
                if other is not None:
                    # Unique elements are the workload's contract: without it a read
                    # could not name the transaction behind an element.
                    raise HistoryFormatError(
                        f"{mop.element} is appended to {mop.key} twice (T{other}, {txn.name})"
                    )
                writer[mop.key, mop.element] = txn.index
                last_append[txn.index, mop.key] = mop.element
                if txn.status != "fail":
                    committable.setdefault(mop.key, set()).add(mop.element)
            elif isinstance(mop, Read):
                if txn.status == "ok" and mop.value is None:
                    raise HistoryFormatError(f"{txn.name}: an ok transaction's read has no value")
            else:
                raise HistoryFormatError(f"{txn.name}: {mop} is not a list-append operation")
    return _History(txns, writer, last_append, committable)


def _internal(txn: Txn) -> list[Anomaly]:
    """Reads that do not reflect the transaction's own earlier reads and appends."""
    found: list[Anomaly] = []
    # key -> (the last list read, or None before any read; appends since then)
    state: dict[Key, tuple[tuple[int, ...] | None, tuple[int, ...]]] = {}
    for mop in txn.mops:
        if not isinstance(mop, Read | Append):
            continue  # rejected by _facts already
        known, appended = state.get(mop.key, (None, ()))
        if isinstance(mop, Append):
            state[mop.key] = (known, (*appended, mop.element))
            continue
        value = mop.value
        assert value is not None  # checked by _facts
        if known is not None and value != known + appended:
            expected = show_list(known + appended)
        elif known is None and appended and value[-len(appended) :] != appended:
            # Without an earlier read only the end is known: its own appends, in order.
            expected = "a list ending in " + ", ".join(map(str, appended))
        else:
            expected = ""
        if expected:
            found.append(
                Anomaly(
                    "internal",
                    (txn.index,),
                    f"{txn.name} read {mop.key}={show_list(value)}, but its own earlier "
                    f"operations on {mop.key} imply {expected}",
                )
            )
        state[mop.key] = (value, ())
    return found


def _read_anomalies(txn: Txn, facts: _History, found: list[Anomaly]) -> list[_Observed]:
    """Append the element-level anomalies of ``txn``'s reads to ``found``; return the
    reads that can take part in version orders (those without duplicates)."""
    usable: list[_Observed] = []
    for mop in txn.mops:
        if not isinstance(mop, Read):
            continue
        key, value = mop.key, mop.value
        assert value is not None  # checked by _facts
        elements = set(value)
        # The common case, a read of distinct elements that transactions which may have
        # committed appended, is told by two set operations in C: the per-element
        # search below is for the rare read that is wrong.
        if len(elements) != len(value) or not elements <= facts.committable.get(key, set()):
            found.extend(_bad_elements(txn, key, value, facts))
        if len(elements) == len(value):
            usable.append(_Observed(txn.index, key, value))
        if not value:
            continue
        last = value[-1]
        writer = facts.writer.get((key, last))
        if writer is None or writer == txn.index or facts.txns[writer].status == "fail":
            continue  # garbage or G1a, reported; or its own intermediate state, fine
        final = facts.last_append[writer, key]
        if final != last:
            found.append(
                Anomaly(
                    "G1b",
                    (txn.index, writer),
                    f"{txn.name} read {key}={show_list(value)}, ending in {last}, which "
                    f"T{writer} followed with another append to {key} (its last was "
                    f"{final}): an intermediate read",
                )
            )
    return usable


def _bad_elements(txn: Txn, key: Key, value: tuple[int, ...], facts: _History) -> list[Anomaly]:
    """The duplicate, garbage and G1a anomalies of one read."""
    found: list[Anomaly] = []
    shown = f"{txn.name} read {key}={show_list(value)}"
    duplicates = sorted(e for e, n in Counter(value).items() if n > 1)
    if duplicates:
        explanation = f"{shown}, which holds {_elements(duplicates)} more than once"
        found.append(Anomaly("duplicate", (txn.index,), explanation))
    garbage = [e for e in value if (key, e) not in facts.writer]
    if garbage:
        explanation = f"{shown}, which holds {_elements(garbage)} that no transaction appended"
        found.append(Anomaly("garbage", (txn.index,), explanation))
    aborted: dict[int, list[int]] = {}
    for element in value:
        writer = facts.writer.get((key, element))
        if writer is not None and facts.txns[writer].status == "fail":
            aborted.setdefault(writer, []).append(element)
    for writer, elements in aborted.items():
        explanation = (
            f"{shown}, which holds {_elements(elements)} appended by T{writer}, "
            "a transaction that failed (aborted read)"
        )
        found.append(Anomaly("G1a", (txn.index, writer), explanation))
    return found


def _elements(elements: Sequence[int]) -> str:
    return ("element " if len(elements) == 1 else "elements ") + ", ".join(map(str, elements))


def _version_orders(
    observed: Sequence[_Observed], found: list[Anomaly]
) -> dict[Key, tuple[int, ...]]:
    """Each key's order: its longest read, if every other read is a prefix of it."""
    by_key: dict[Key, list[_Observed]] = {}
    for read in observed:
        by_key.setdefault(read.key, []).append(read)
    orders: dict[Key, tuple[int, ...]] = {}
    for key, reads in by_key.items():
        longest = max(reads, key=lambda read: len(read.value))  # the first of the longest
        order = longest.value
        conflicting = [r for r in reads if order[: len(r.value)] != r.value]
        if not conflicting:
            orders[key] = order
            continue
        first = conflicting[0]
        at = next(i for i, (a, b) in enumerate(zip(order, first.value, strict=False)) if a != b)
        more = (
            f" ({len(conflicting) - 1} more reads of {key} disagree)"
            if len(conflicting) > 1
            else ""
        )
        found.append(
            Anomaly(
                "incompatible-order",
                (longest.txn, *sorted({r.txn for r in conflicting} - {longest.txn})),
                f"T{longest.txn} read {key}={show_list(order)} and T{first.txn} read "
                f"{key}={show_list(first.value)}: they disagree at position {at} "
                f"({order[at]} vs {first.value[at]}), so no order of appends explains "
                f"both{more}",
            )
        )
    return orders


# --- the graph ---------------------------------------------------------------------------


def _graph(
    facts: _History,
    orders: Mapping[Key, tuple[int, ...]],
    observed: Sequence[_Observed],
    realtime: bool,
    budget: Budget,
) -> DependencyGraph[_Why]:
    graph: DependencyGraph[_Why] = DependencyGraph()
    # Only appends of transactions that may have committed order anything: a failed
    # transaction's element in a list is a G1a, reported already.
    writer = {
        (key, element): index
        for (key, element), index in facts.writer.items()
        if facts.txns[index].status != "fail"
    }
    for key, order in orders.items():
        for prior, element in itertools.pairwise(order):
            budget.spend()
            a, b = writer.get((key, prior)), writer.get((key, element))
            if a is not None and b is not None:
                graph.add(a, b, WW, _Why(key, element, prior))
    for read in observed:
        read_order = orders.get(read.key)
        if read_order is None:
            continue
        budget.spend()
        value = read.value
        source = writer.get((read.key, value[-1])) if value else None
        if source is not None:
            graph.add(source, read.txn, WR, _Why(read.key, value[-1], read=value))
        # The read saw its last element's transaction whole (if it saw part of it, that
        # is a G1b, reported already): what it missed is the next transaction's append.
        after = len(value)
        while after < len(read_order) and source is not None:
            if writer.get((read.key, read_order[after])) != source:
                break
            after += 1
        if after < len(read_order):
            missed = read_order[after]
            if (target := writer.get((read.key, missed))) is not None:
                graph.add(read.txn, target, RW, _Why(read.key, missed, read=value))
    if realtime:
        # An info transaction nobody saw may never have happened: it orders nothing.
        seen = {writer.get((key, e)) for key, order in orders.items() for e in order}
        nodes = [t for t in facts.txns.values() if t.status == "ok" or t.index in seen]
        _realtime_edges(graph, nodes, budget)
    return graph


def _realtime_edges(graph: DependencyGraph[_Why], nodes: Sequence[Txn], budget: Budget) -> None:
    """Real-time edges, without those that others imply (see the module docstring).

    ``frontier`` holds the transactions that have returned and are not known to precede
    another that has returned since: a transaction called now gets an edge from each of
    them. When one returns, those that were in the frontier at its call precede it, so
    their edges to what comes later are implied by its own: they leave the frontier.
    At equal times a call comes before a return: transactions that merely touch are
    taken as concurrent, the permissive reading.
    """
    events: list[tuple[float, int, int]] = []
    for txn in nodes:
        events.append((txn.call_time, 0, txn.index))
        if txn.status == "ok":  # an info transaction's return is no bound on its commit
            events.append((txn.return_time, 1, txn.index))
    events.sort()
    frontier: set[int] = set()
    before: dict[int, set[int]] = {}
    for _, is_return, index in events:
        budget.spend(1 + len(frontier))
        if is_return:
            frontier -= before.pop(index)
            frontier.add(index)
        else:
            before[index] = set(frontier)
            for source in frontier:
                graph.add(source, index, RT, _REALTIME)


# --- cycles ------------------------------------------------------------------------------


def _cycle_anomaly(
    graph: DependencyGraph[_Why],
    facts: _History,
    component: list[int],
    *,
    classes: Sequence[CycleClass],
    mask: int,
    budget: Budget,
) -> Anomaly:
    cycle: Cycle | None = None
    suffix = ""
    if not budget.exhausted:
        with contextlib.suppress(BudgetExhaustedError):
            cycle = most_severe_cycle(graph, frozenset(component), classes, budget)
    if cycle is None:
        # Out of budget (a component always holds a cycle of some class): report the cycle
        # one search finds; its class is right for it, if maybe not the most severe here.
        cycle = any_cycle(graph, component, mask)
        suffix = (
            f" (the search ran out of budget: a more severe cycle may exist among these "
            f"{len(component)} transactions)"
        )
    edges = cycle.edges()
    hidden = len(edges) - EXPLAIN_CYCLE_EDGES
    if hidden > 0:
        # The start and the end of a long cycle; its transactions are all in the anomaly.
        head, tail = edges[: EXPLAIN_CYCLE_EDGES // 2], edges[-(EXPLAIN_CYCLE_EDGES // 2) :]
        hops = " -> ".join(f"T{source}" for source, _, _ in head)
        hops += f" -> ... {hidden} more -> " + " -> ".join(f"T{t}" for _, t, _ in tail)
        clauses = [*_explain_edges(graph, facts, head), f"... {hidden} more edges"]
        clauses += _explain_edges(graph, facts, tail)
    else:
        hops = " -> ".join(f"T{node}" for node in (*cycle.nodes, cycle.nodes[0]))
        clauses = _explain_edges(graph, facts, edges)
    explanation = f"{hops}: {'; '.join(clauses)}{suffix}"
    return Anomaly(cycle_class(cycle.kinds), cycle.nodes, explanation)


def _explain_edges(
    graph: DependencyGraph[_Why], facts: _History, edges: Sequence[tuple[int, int, int]]
) -> list[str]:
    return [_explain_edge(graph, facts, source, target, kind) for source, target, kind in edges]


def _explain_edge(
    graph: DependencyGraph[_Why], facts: _History, source: int, target: int, kind: int
) -> str:
    why = graph.reasons[source, target, kind]
    a, b = f"T{source}", f"T{target}"
    if kind == WW:
        return f"{b} appended {why.element} to {why.key} after {a}'s {why.prior} (ww)"
    if kind == WR:
        return f"{b} read {why.key}={show_list(why.read)}, ending in {a}'s {why.element} (wr)"
    if kind == RW:
        return f"{a} read {why.key}={show_list(why.read)} without {b}'s {why.element} (rw)"
    assert kind == RT
    returned, called = facts.txns[source].return_time, facts.txns[target].call_time
    return f"{a} returned at {returned} before {b} was called at {called} (realtime)"


# --- command line ------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """The command line (see the module docstring); returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m shardwise.testing.serializability",
        description="Check list-append transaction histories (JSON lines) for serializability.",
    )
    parser.add_argument("files", nargs="+", metavar="FILE", help="JSON-lines history")
    parser.add_argument(
        "--realtime", action="store_true", help="check strict serializability (real-time order)"
    )
    parser.add_argument(
        "--timeout", type=float, default=None, metavar="SECONDS", help="time limit per file"
    )
    parser.add_argument("--explain", action="store_true", help="explain each verdict not valid")
    args = parser.parse_args(argv)

    verdicts: set[Verdict] = set()
    for name in args.files:
        try:
            history = load_history(name)
            result = check_list_append(history, realtime=args.realtime, timeout=args.timeout)
        except (OSError, UnicodeDecodeError, HistoryFormatError) as error:
            print(f"{name}: {error}", file=sys.stderr)
            verdict = Verdict.UNKNOWN
        else:
            verdict = result.verdict
            if args.explain and verdict is not Verdict.VALID:
                print(f"{name}: {result.explain()}", file=sys.stderr)
        verdicts.add(verdict)
        print(f"{name} {verdict.value}", flush=True)

    if Verdict.INVALID in verdicts:
        return 1
    if Verdict.UNKNOWN in verdicts:
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
