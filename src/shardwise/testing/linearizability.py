"""Linearizability checking of client histories.

A history is linearizable when every operation can be given a single instant inside its
real-time interval such that, in the order of those instants, the operations are a legal
run of the sequential model. :func:`check` decides it with Wing & Gong's search, with
Lowe's memoization of explored configurations, as the Porcupine checker does:

* the calls and returns of a (sub-)history are kept in time order in doubly linked lists;
* the candidates to linearize next are the calls that precede the first pending return.
  The search tries one -- the model must accept its output -- and *lifts* its call and
  return out of the lists. When no candidate is left, the operation of the first pending
  return can no longer be placed in time: the last choice is undone and the next
  candidate tried (backtracking);
* a configuration -- the set of operations linearized so far and the model state -- is
  entered at most once, since what follows from it does not depend on how it was reached.

Operations whose outcome is unknown (``return_time = math.inf``) have no return: they may
be linearized at any point after their call, or never, and the search succeeds as soon as
every *completed* operation is linearized. Two refinements keep them from blowing up the
search (see :func:`_linearize` and :func:`_twin_masks`): completed candidates are tried
before unknown ones, and unknown operations with identical inputs are only linearized in
the order of their calls. A model that partitions its histories (:data:`kv_model`, by
key) has each part checked on its own.

The search is exponential in the worst case. A timeout (and a step budget) turns a search
that runs out of time into :attr:`Verdict.UNKNOWN`, never into a wrong verdict.

Command line::

    python -m shardwise.testing.linearizability [--timeout SECONDS] [--explain] FILE...

checks Jepsen register logs and prints one line per file, ``FILE linearizable``,
``FILE not-linearizable`` or ``FILE unknown`` (also for a file that cannot be read or
parsed; the reason goes to stderr). Exit status: 0 if every file is linearizable; 1 if
any is not linearizable (a definite violation outranks inconclusive files); otherwise 2
if any is unknown or unreadable (2 is also argparse's status for bad usage).
"""

from __future__ import annotations

import argparse
import enum
import itertools
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from shardwise.errors import HistoryFormatError
from shardwise.testing.history import (
    UNKNOWN_OUTPUT,
    KvModel,
    KvOp,
    Model,
    Operation,
    RegisterModel,
    RegisterOp,
    kv_model,
    load_jepsen_register_history,
    register_model,
)

__all__ = [
    "BUDGET_CHECK_INTERVAL_STEPS",
    "EXPLAIN_LAST_OPS",
    "UNKNOWN_OUTPUT",
    "CheckResult",
    "KvModel",
    "KvOp",
    "Model",
    "Operation",
    "RegisterModel",
    "RegisterOp",
    "Verdict",
    "check",
    "kv_model",
    "main",
    "register_model",
]

BUDGET_CHECK_INTERVAL_STEPS: Final = 1024
"""Search steps between two looks at the budget (clock and step count): reading the clock
on every step would cost about as much as the step itself."""

EXPLAIN_LAST_OPS: Final = 20
"""How much of the longest linearization :meth:`CheckResult.explain` shows: its end is
where the search got stuck, the rest is context."""


class Verdict(enum.Enum):
    """The outcome of a check; ``UNKNOWN`` when it ran out of time or steps first."""

    LINEARIZABLE = "linearizable"
    NOT_LINEARIZABLE = "not-linearizable"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class CheckResult:
    """The verdict, and for a history that is not linearizable (or whose check did not
    finish) where to look: the partition concerned, the longest linearization the search
    found for it, and the completed operation that could not be placed after it."""

    verdict: Verdict
    partition: int | None = None
    """Index, in the model's partition of the history, of the part concerned."""
    history: tuple[Operation, ...] = ()
    """The operations of that part."""
    linearized: tuple[Operation, ...] = ()
    """The longest sequence of that part's operations the search could linearize."""
    stuck: Operation | None = None
    """A completed operation whose return was reached while it could not be linearized
    after :attr:`linearized`: its output, or its effect, has no explanation there."""
    steps: int = 0
    """Search steps taken over the whole history."""

    def explain(self) -> str:
        """A human-readable account, for a test failure message or the command line."""
        lines = [f"{self.verdict.value} after {self.steps} search steps"]
        if self.partition is None:
            return lines[0]
        lines.append(f"partition {self.partition} ({len(self.history)} operations)")
        lines.append(f"longest linearization found ({len(self.linearized)} operations):")
        hidden = len(self.linearized) - EXPLAIN_LAST_OPS
        if hidden > 0:
            lines.append(f"  ... {hidden} earlier operations")
        lines.extend(f"  {op}" for op in self.linearized[max(hidden, 0) :])
        if self.stuck is not None:
            lines.append(f"then cannot place: {self.stuck}")
        return "\n".join(lines)


class _BudgetExhaustedError(Exception):
    """The deadline passed or the step budget ran out."""


@dataclass
class _Budget:
    deadline: float
    max_steps: float
    clock: Callable[[], float]
    steps: int = 0

    def spend(self, steps: int) -> None:
        self.steps += steps
        if self.steps > self.max_steps or self.clock() > self.deadline:
            raise _BudgetExhaustedError


@dataclass
class _Search:
    """The search state of one partition, kept so that a failed or interrupted search
    can still report how far it got."""

    ops: Sequence[Operation]
    best: tuple[int, ...] = ()
    stuck: int | None = None

    def reached(self, linearized: list[int], stuck: int | None) -> None:
        self.best = tuple(linearized)
        self.stuck = stuck


def check(
    model: Model[Any],
    history: Sequence[Operation],
    timeout: float | None = None,
    *,
    max_steps: int | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> CheckResult:
    """Decide whether ``history`` is linearizable with respect to ``model``.

    ``timeout`` (seconds of ``clock``) and ``max_steps`` bound the whole check, all
    partitions together; ``None`` means unbounded. When either runs out the verdict is
    :attr:`Verdict.UNKNOWN`. Both are looked at every :data:`BUDGET_CHECK_INTERVAL_STEPS`
    steps, so a search may overrun them by that much.
    """
    budget = _Budget(
        deadline=math.inf if timeout is None else clock() + timeout,
        max_steps=math.inf if max_steps is None else max_steps,
        clock=clock,
    )
    for index, part in enumerate(model.partition(history)):
        search = _Search(part)
        try:
            linearizable = _linearize(model, search, budget)
        except _BudgetExhaustedError:
            return _result(Verdict.UNKNOWN, index, search, budget)
        if not linearizable:
            return _result(Verdict.NOT_LINEARIZABLE, index, search, budget)
    return CheckResult(Verdict.LINEARIZABLE, steps=budget.steps)


def _result(verdict: Verdict, index: int, search: _Search, budget: _Budget) -> CheckResult:
    ops = search.ops
    return CheckResult(
        verdict,
        partition=index,
        history=tuple(ops),
        linearized=tuple(ops[i] for i in search.best),
        stuck=None if search.stuck is None else ops[search.stuck],
        steps=budget.steps,
    )


_NIL: Final = -1
# Fixed nodes: the heads of the two lists, and the tail of the optional one.
_CERTAIN_HEAD: Final = 0
_OPTIONAL_HEAD: Final = 1
_OPTIONAL_TAIL: Final = 2
# Node kinds.
_CALL: Final = 0
_RETURN: Final = 1
_OPTIONAL_CALL: Final = 2
_END: Final = 3


class _EventList:
    """The calls and returns of one partition, as two time-ordered doubly linked lists.

    The *certain* list holds the calls and returns of completed operations; the *optional*
    list the calls of operations whose outcome is unknown (they have no return). Each node
    has its rank in the single time order of all events, so the walk can tell which
    optional calls precede the first pending return.

    Kept in parallel arrays indexed by node: list indexing is the cheapest pointer chasing
    Python offers, and an unlinked node keeps its own links so that it can be put back in
    O(1), in the manner of dancing links.
    """

    __slots__ = ("kind", "next", "op_of", "prev", "rank", "return_of")

    def __init__(self, ops: Sequence[Operation]) -> None:
        # At equal times calls sort before returns: operations that merely touch are taken
        # as concurrent, the permissive reading when a clock cannot order them.
        events = sorted(
            [(op.call_time, _CALL, i) for i, op in enumerate(ops)]
            + [(op.return_time, _RETURN, i) for i, op in enumerate(ops) if op.completed]
        )
        certain = [(r, kind, i) for r, (_, kind, i) in enumerate(events) if ops[i].completed]
        optional = [
            (r, _OPTIONAL_CALL, i) for r, (_, _, i) in enumerate(events) if not ops[i].completed
        ]
        first = _OPTIONAL_TAIL + 1
        size = first + len(events)
        self.kind = [_END] * size
        self.rank = [math.inf] * size
        self.op_of = [_NIL] * size
        self.return_of = [_NIL] * size  # for a completed operation's call node
        self.next = [_NIL] * size
        self.prev = [_NIL] * size
        call_node: dict[int, int] = {}
        for node, (rank, kind, i) in enumerate(certain + optional, start=first):
            self.kind[node], self.rank[node], self.op_of[node] = kind, rank, i
            if kind == _RETURN:
                self.return_of[call_node[i]] = node
            else:
                call_node[i] = node
        self._chain([_CERTAIN_HEAD, *range(first, first + len(certain))])
        self._chain([_OPTIONAL_HEAD, *range(first + len(certain), size), _OPTIONAL_TAIL])

    def _chain(self, nodes: list[int]) -> None:
        for before, after in itertools.pairwise(nodes):
            self.next[before] = after
            self.prev[after] = before

    def lift(self, call: int) -> None:
        """Take a call and its return out of the list: the operation is linearized."""
        self._unlink(call)
        if self.return_of[call] != _NIL:
            self._unlink(self.return_of[call])

    def unlift(self, call: int) -> None:
        """Undo :meth:`lift` (links are restored in the reverse order they were cut)."""
        if self.return_of[call] != _NIL:
            self._relink(self.return_of[call])
        self._relink(call)

    def _unlink(self, node: int) -> None:
        after = self.next[node]
        self.next[self.prev[node]] = after
        if after != _NIL:
            self.prev[after] = self.prev[node]

    def _relink(self, node: int) -> None:
        after = self.next[node]
        self.next[self.prev[node]] = node
        if after != _NIL:
            self.prev[after] = node


# One long function on purpose: the loop is the hot path, and a Python call per step for
# the budget, the backtrack or the candidate test would cost a large share of its time.
def _linearize(model: Model[Any], search: _Search, budget: _Budget) -> bool:  # noqa: PLR0915
    """Wing & Gong's search with memoization over one partition (see the module docstring).

    The candidates to linearize next are the calls that precede the first pending return.
    All are tried in turn, so their order only matters for speed: completed operations
    first, because each must be placed before its return anyway, and those of unknown
    outcome after, so that they are linearized only when the history needs them to be.
    Trying them in plain time order instead lets a few dozen timed-out writes called early
    make the search exponential even when the history is trivially linearizable.
    """
    ops = search.ops
    events = _EventList(ops)
    # Locals rather than attribute lookups: this loop is where all the time goes.
    next_of, kind_of, rank, op_of = events.next, events.kind, events.rank, events.op_of
    inputs, outputs = [op.input for op in ops], [op.output for op in ops]
    waits_for = _twin_masks(ops)
    step, state = model.step, model.init_state()
    linearized, steps = 0, 0  # bit i of linearized set: ops[i] is linearized
    to_place = sum(op.completed for op in ops)
    seen: set[tuple[int, Any]] = set()
    stack: list[tuple[int, Any, int]] = []  # (lifted call node, state before it, bound)
    # The walk's position, and the first pending return once the walk has reached it.
    entry, bound = next_of[_CERTAIN_HEAD], _NIL

    # While a completed operation is unplaced its return is in the certain list, so the walk
    # of that list always stops at a return before running off its end.
    while to_place:
        steps += 1
        if steps >= BUDGET_CHECK_INTERVAL_STEPS:
            budget.spend(steps)
            steps = 0
        kind = kind_of[entry]
        if kind == _RETURN:
            bound = entry
            entry = next_of[_OPTIONAL_HEAD]
            continue

        if kind == _END or (kind == _OPTIONAL_CALL and rank[entry] > rank[bound]):
            # No candidate is left: the first pending return's operation must have taken
            # effect by now, and nothing linearizable after the current prefix makes it so.
            if len(stack) > len(search.best):
                search.reached([op_of[node] for node, _, _ in stack], stuck=op_of[bound])
            if not stack:
                break
            entry, state, bound = stack.pop()
            linearized &= ~(1 << op_of[entry])
            if kind_of[entry] == _CALL:
                to_place += 1
            events.unlift(entry)
            entry = next_of[entry]
            continue

        i = op_of[entry]
        if not waits_for[i] & ~linearized:
            ok, new_state = step(state, inputs[i], outputs[i])
            configuration = (linearized | 1 << i, new_state)
            if ok and configuration not in seen:
                seen.add(configuration)
                stack.append((entry, state, bound))
                linearized, state = configuration
                if kind == _CALL:
                    to_place -= 1
                events.lift(entry)
                entry = next_of[_CERTAIN_HEAD]
                continue
        entry = next_of[entry]

    # Counted but not charged: a verdict reached past the deadline is still a verdict.
    budget.steps += steps
    if not to_place:
        search.reached([op_of[node] for node, _, _ in stack], stuck=None)
    return not to_place


def _twin_masks(ops: Sequence[Operation]) -> list[int]:
    """For each operation of unknown outcome, the bit of the latest one called before it
    with the same input (0 if none, and for completed operations).

    Such twins are interchangeable: each may be linearized anywhere after its call, so in
    any linearization the earlier-called one can stand in for the later. The search only
    linearizes a twin once its predecessor is linearized, which removes the factorial
    of orders (and subsets) in which it would otherwise place a group of, say, timed-out
    writes of the same value.
    """
    masks = [0] * len(ops)
    latest: dict[Any, int] = {}
    for i in sorted(range(len(ops)), key=lambda i: ops[i].call_time):
        if ops[i].completed:
            continue
        try:
            twin = latest.get(ops[i].input)
            latest[ops[i].input] = i
        except TypeError:  # an unhashable input: no grouping, no harm
            continue
        if twin is not None:
            masks[i] = 1 << twin
    return masks


def main(argv: Sequence[str] | None = None) -> int:
    """The command line (see the module docstring); returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m shardwise.testing.linearizability",
        description="Check Jepsen register histories for linearizability.",
    )
    parser.add_argument("files", nargs="+", metavar="FILE", help="Jepsen register log")
    parser.add_argument(
        "--timeout", type=float, default=None, metavar="SECONDS", help="time limit per file"
    )
    parser.add_argument(
        "--explain", action="store_true", help="explain each verdict that is not linearizable"
    )
    args = parser.parse_args(argv)

    verdicts: set[Verdict] = set()
    for name in args.files:
        try:
            history = load_jepsen_register_history(name)
        except (OSError, UnicodeDecodeError, HistoryFormatError) as error:
            print(f"{name}: {error}", file=sys.stderr)
            verdict = Verdict.UNKNOWN
        else:
            result = check(register_model, history, timeout=args.timeout)
            verdict = result.verdict
            if args.explain and verdict is not Verdict.LINEARIZABLE:
                print(f"{name}: {result.explain()}", file=sys.stderr)
        verdicts.add(verdict)
        print(f"{name} {verdict.value}", flush=True)

    if Verdict.NOT_LINEARIZABLE in verdicts:
        return 1
    if Verdict.UNKNOWN in verdicts:
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
