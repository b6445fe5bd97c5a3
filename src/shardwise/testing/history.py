"""Client histories and the sequential models they are checked against.

A *history* is a sequence of :class:`Operation`: one client call each, with what it asked
(``input``), what it was told (``output``) and the real-time interval in which it was
outstanding. A *model* is the sequential specification the history must be explained by
(:class:`Model`): a register, a key-value map, ...

An operation whose outcome the client never learned (a Jepsen ``:info``, a client timeout)
may have taken effect at any moment after its call, or never. It is recorded with
``return_time = math.inf`` and ``output = UNKNOWN_OUTPUT``; models accept any output for it.
An operation that certainly did not take effect (a Jepsen ``:fail``) is simply left out.

:func:`parse_jepsen_register_history` reads the register logs Jepsen prints
(``INFO  jepsen.util - <process> :invoke :write 3``), the format of the etcd histories
kept beside the project for testing the checker.
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal, NamedTuple, Protocol, TypeVar

from shardwise.errors import HistoryFormatError


class _UnknownOutput(enum.Enum):
    # An enum member rather than ``object()``: it survives copying, compares by identity
    # and mypy can narrow on it; ``None`` would not do, a register legitimately reads nil.
    UNKNOWN_OUTPUT = "unknown output"

    def __repr__(self) -> str:
        return "UNKNOWN_OUTPUT"


UNKNOWN_OUTPUT: Final = _UnknownOutput.UNKNOWN_OUTPUT
"""The output of an operation whose outcome is unknown (it may or may not have happened)."""


@dataclass(frozen=True, slots=True)
class Operation:
    """One client call: ``input`` was invoked at ``call_time`` and got ``output`` back at
    ``return_time``. Times are in any unit, only their order matters; an operation that
    returned before another was called must be ordered before it.

    ``return_time = math.inf`` means the outcome is unknown; ``output`` must then be
    :data:`UNKNOWN_OUTPUT`.
    """

    client: Hashable
    input: Any
    output: Any
    call_time: float
    return_time: float = math.inf

    def __post_init__(self) -> None:
        if not math.isfinite(self.call_time):
            raise HistoryFormatError(f"call time must be finite: {self!r}")
        if math.isnan(self.return_time) or self.return_time < self.call_time:
            raise HistoryFormatError(f"operation returns before it is called: {self!r}")
        if self.return_time == math.inf and self.output is not UNKNOWN_OUTPUT:
            raise HistoryFormatError(
                f"an operation that never returned cannot have an output: {self!r}"
            )

    @property
    def completed(self) -> bool:
        """Whether the client learned the outcome (so the operation must be explained)."""
        return self.return_time != math.inf

    def __str__(self) -> str:
        output = "?" if self.output is UNKNOWN_OUTPUT else repr(self.output)
        return f"[{self.call_time}, {self.return_time}] {self.client}: {self.input} -> {output}"


StateT = TypeVar("StateT", bound=Hashable)


class Model(Protocol[StateT]):
    """A sequential specification. States must be hashable (and immutable): the checker
    memoizes the configurations it has explored as (set of operations, state) pairs.

    A class that subclasses :class:`Model` explicitly inherits :meth:`partition`, which
    keeps the history whole.
    """

    def init_state(self) -> StateT:
        """The state before any operation."""
        ...

    def step(self, state: StateT, input: Any, output: Any) -> tuple[bool, StateT]:
        """Apply ``input`` to ``state``: whether ``output`` is a possible answer, and the
        state after. ``output`` is :data:`UNKNOWN_OUTPUT` for an operation whose outcome is
        unknown; the step then succeeds if the operation can take effect at all."""
        ...

    def partition(self, history: Sequence[Operation]) -> list[list[Operation]]:
        """Split the history into independent sub-histories, each checked on its own.

        Linearizability is local (Herlihy & Wing): a history over independent objects is
        linearizable iff each object's sub-history is, and checking small pieces is
        exponentially cheaper than checking the whole.
        """
        return [list(history)]


# --- a single register -------------------------------------------------------------------

RegisterKind = Literal["read", "write", "cas"]


class RegisterOp(NamedTuple):
    """Input to :data:`register_model`.

    * ``read``: output is the value read (``None`` for the initial, unset register);
    * ``write value``: output is ignored;
    * ``cas value new``: set to ``new`` if the register holds ``value``; output is
      whether it did (``True``/``False``).
    """

    kind: RegisterKind
    value: Hashable = None
    new: Hashable = None

    def __str__(self) -> str:
        args = {"read": (), "write": (self.value,), "cas": (self.value, self.new)}[self.kind]
        return f"{self.kind}({', '.join(map(repr, args))})"


class RegisterModel(Model[Hashable]):
    """One register holding a hashable value, initially ``None``."""

    def init_state(self) -> Hashable:
        return None

    def step(self, state: Hashable, input: RegisterOp, output: Any) -> tuple[bool, Hashable]:
        kind = input.kind
        if kind == "read":
            return output is UNKNOWN_OUTPUT or output == state, state
        if kind == "write":
            return True, input.value
        if kind == "cas":
            swapped = state == input.value
            if output is not UNKNOWN_OUTPUT and output != swapped:
                return False, state
            return True, input.new if swapped else state
        raise HistoryFormatError(f"not a register operation: {input!r}")


register_model: Final = RegisterModel()


# --- a key-value map ---------------------------------------------------------------------

KvKind = Literal["get", "put", "append", "delete", "cas"]
KvState = frozenset[tuple[Hashable, Any]]


class KvOp(NamedTuple):
    """Input to :data:`kv_model`; an absent key reads as ``None``.

    * ``get key``: output is the value (``None`` if absent);
    * ``put key value``: output is ignored (``value=None`` deletes);
    * ``append key value``: concatenates ``value`` to the current one (or sets it if
      absent); output is ignored;
    * ``delete key``: output is ignored;
    * ``cas key value new``: set to ``new`` if the key holds ``value`` (``None``: is absent);
      output is whether it did.
    """

    kind: KvKind
    key: Hashable
    value: Any = None
    new: Any = None

    def __str__(self) -> str:
        args: tuple[Any, ...] = (self.key,)
        if self.kind in ("put", "append"):
            args += (self.value,)
        elif self.kind == "cas":
            args += (self.value, self.new)
        return f"{self.kind}({', '.join(map(repr, args))})"


class KvModel(Model[KvState]):
    """A map from keys to values, initially empty, partitioned by key.

    The state is a frozenset of ``(key, value)`` pairs without ``None`` values, so that
    equal maps are equal states. After partitioning it holds at most one pair, which keeps
    copying it on every step cheap.
    """

    def init_state(self) -> KvState:
        return frozenset()

    def step(self, state: KvState, input: KvOp, output: Any) -> tuple[bool, KvState]:
        kind, key = input.kind, input.key
        current = next((value for k, value in state if k == key), None)
        if kind == "get":
            return output is UNKNOWN_OUTPUT or output == current, state
        if kind == "put":
            new = input.value
        elif kind == "append":
            new = input.value if current is None else current + input.value
        elif kind == "delete":
            new = None
        elif kind == "cas":
            swapped = current == input.value
            if output is not UNKNOWN_OUTPUT and output != swapped:
                return False, state
            if not swapped:
                return True, state
            new = input.new
        else:
            raise HistoryFormatError(f"not a key-value operation: {input!r}")
        others = frozenset(pair for pair in state if pair[0] != key)
        return True, others if new is None else others | {(key, new)}

    def partition(self, history: Sequence[Operation]) -> list[list[Operation]]:
        by_key: dict[Hashable, list[Operation]] = {}
        for op in history:
            by_key.setdefault(op.input.key, []).append(op)
        return list(by_key.values())


kv_model: Final = KvModel()


# --- Jepsen register logs ----------------------------------------------------------------

_JEPSEN_LINE: Final = re.compile(
    r"INFO\s+jepsen\.util\s+-\s+(?P<process>\S+)\s+:(?P<type>\S+)\s+:(?P<f>\S+)\s*(?P<value>.*)"
)
_JEPSEN_TYPES: Final = frozenset({"invoke", "ok", "fail", "info"})
_INTEGER: Final = re.compile(r"-?\d+")


class _Invocation(NamedTuple):
    line: int
    f: str
    input: RegisterOp


def parse_jepsen_register_history(
    lines: Iterable[str], source: str = "<history>"
) -> list[Operation]:
    """Read a Jepsen register log into operations on :data:`register_model`.

    Times are line numbers. ``:fail`` operations are dropped; ``:info`` operations, and
    invocations still pending at the end of the log, get an unknown outcome (except reads,
    which are dropped: a read that may not have happened changes nothing and explains
    nothing). Jepsen retires a process after ``:info`` (its next operations come from a
    new process number), so a process is only matched against its own still-pending
    invocation. Nemesis lines and blank lines are skipped. A malformed line raises
    :class:`HistoryFormatError` naming ``source`` and the line number.
    """
    pending: dict[int, _Invocation] = {}
    found: list[Operation | None] = []
    for number, raw in enumerate(lines, start=1):
        line = raw.strip()
        try:
            found.append(_parse_jepsen_line(line, number, pending) if line else None)
        except ValueError as error:
            raise HistoryFormatError(f"{source}:{number}: {error}: {line!r}") from None
    found.extend(_unknown_outcome(process, call) for process, call in pending.items())
    return sorted((op for op in found if op is not None), key=lambda op: op.call_time)


def load_jepsen_register_history(path: str | Path) -> list[Operation]:
    """Parse the Jepsen register log at ``path`` (see :func:`parse_jepsen_register_history`)."""
    with open(path, encoding="utf-8") as lines:
        return parse_jepsen_register_history(lines, source=str(path))


def _parse_jepsen_line(line: str, number: int, pending: dict[int, _Invocation]) -> Operation | None:
    """The operation that ``line`` completes, if any; ``pending`` tracks invocations."""
    match = _JEPSEN_LINE.fullmatch(line)
    if match is None:
        raise ValueError("not a Jepsen history line")
    process_text, kind, f, value = match.group("process", "type", "f", "value")
    if process_text == ":nemesis":
        return None
    if not _INTEGER.fullmatch(process_text):
        raise ValueError(f"process {process_text!r} is not a number")
    process = int(process_text)
    if kind not in _JEPSEN_TYPES:
        raise ValueError(f"unknown event type :{kind}")

    if kind == "invoke":
        if process in pending:
            raise ValueError(
                f"process {process} invoked again while its call on line "
                f"{pending[process].line} is pending"
            )
        pending[process] = _Invocation(number, f, _register_input(f, value))
        return None

    invocation = pending.pop(process, None)
    if invocation is None:
        raise ValueError(f"process {process} completes an operation it never invoked")
    if invocation.f != f:
        raise ValueError(f"completes :{f} but line {invocation.line} invoked :{invocation.f}")
    if kind == "fail":
        return None
    if kind == "info":
        return _unknown_outcome(process, invocation)
    output = _register_output(invocation.input, value)
    return Operation(process, invocation.input, output, invocation.line, number)


def _unknown_outcome(process: int, invocation: _Invocation) -> Operation | None:
    if invocation.input.kind == "read":
        return None
    return Operation(process, invocation.input, UNKNOWN_OUTPUT, invocation.line)


def _register_input(f: str, text: str) -> RegisterOp:
    if f == "read":
        return RegisterOp("read")
    if f == "write":
        return RegisterOp("write", _scalar(text))
    if f == "cas":
        if not (text.startswith("[") and text.endswith("]")):
            raise ValueError(f"cas takes [expected new], not {text!r}")
        items = text[1:-1].split()
        if len(items) != 2:
            raise ValueError(f"cas takes [expected new], not {text!r}")
        return RegisterOp("cas", _scalar(items[0]), _scalar(items[1]))
    raise ValueError(f"unsupported register operation :{f}")


def _register_output(input: RegisterOp, text: str) -> Hashable:
    if input.kind == "read":
        return _scalar(text)
    # Jepsen echoes the invoked value on success; a different one means lines got mixed up.
    if _register_input(input.kind, text) != input:
        raise ValueError(f"completion value {text!r} differs from the invocation's")
    return None if input.kind == "write" else True


def _scalar(text: str) -> int | None:
    if text == "nil":
        return None
    if _INTEGER.fullmatch(text):
        return int(text)
    raise ValueError(f"unsupported register value {text!r} (expected nil or an integer)")
