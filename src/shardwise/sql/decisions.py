"""What a plan depends on besides the statement's text and the catalog: the decisions the
planner took from parameter values, noted while it plans.

The planner reads a parameter's value in one place only, :func:`~shardwise.sql.params.constant`
(and :func:`~shardwise.sql.params.decided`, which derives something coarser from it:
the shards a value pins). Everywhere else values are copied, unread, into the fragments'
parameters. So a plan made for some values is the plan for other values whenever every
decision comes out the same for them, once those fragments carry the new values: what
the plan cache (:mod:`shardwise.sql.plan_cache`) relies on. Planning under
:func:`recording` notes each decision, in order, as (parameter, derivation, result);
anything that makes a plan depend on the moment or a seed (``now()``, ``random()`` fixed
at the coordinator) marks the recording as bound to its context.

Pure: no I/O. The recorder is a context variable, so concurrent plannings (threads,
tasks) never note into each other's recordings.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Hashable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Final, TypeAlias

Derivation: TypeAlias = Callable[[object], Hashable]
"""What the planner derives from a value and then uses (two are the same if ``==``)."""


@dataclass(frozen=True, slots=True)
class Exact:
    """The value itself, told apart by storage class (``1``, ``1.0`` and ``'1'`` are three
    decisions; ``0.0`` and ``-0.0`` two; a NaN never equals itself, so never reused)."""

    def __call__(self, value: object, /) -> Hashable:
        if isinstance(value, float):
            return (float, value.hex())
        return (type(value), value)


EXACT: Final = Exact()


@dataclass(frozen=True, slots=True)
class Decision:
    name: str
    """The parameter (``p1``, ``n_email``) whose value was read."""
    derivation: Derivation
    result: Hashable


@dataclass(slots=True)
class Recording:
    decisions: list[Decision] = field(default_factory=list)
    contextual: bool = False
    """The plan holds a value fixed from the statement's context (its instant, its seed):
    it holds for this execution only."""


_current: ContextVar[Recording | None] = ContextVar("shardwise_plan_recording", default=None)


@contextlib.contextmanager
def recording() -> Iterator[Recording]:
    """Note the decisions of the planning inside the ``with``."""
    found = Recording()
    token = _current.set(found)
    try:
        yield found
    finally:
        _current.reset(token)


def note(name: str, derivation: Derivation, result: Hashable) -> None:
    found = _current.get()
    if found is not None:
        found.decisions.append(Decision(name, derivation, result))


def note_contextual() -> None:
    found = _current.get()
    if found is not None:
        found.contextual = True
