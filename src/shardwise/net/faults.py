"""Fault injection on real connections, for tests: drop, delay or cut by rule.

A rule names a node pair (either end may be "any"), a direction, and optionally message
types (Raft message classes such as ``AppendEntries``, or wire classes such as
``RpcRequest``) and RPC method names. Rules are added and removed while the cluster runs.
A transport consults its injector for every frame it is about to send and whenever it
opens or holds a connection:

* **drop**: the frame is discarded (counted) instead of queued;
* **delay**: the frame is queued only after ``delay_s`` on the transport's clock;
* **cut**: the connection between the pair is closed at once and no new one is made or
  accepted until the rule is removed (then the normal reconnect back-off finds the peer).

Rules act where a frame is sent, so one injector can be shared by every transport of a
test to drive the whole network from one place without a frame being judged twice.
"""

from __future__ import annotations

import enum
import itertools
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Final, TypeVar

from shardwise.net.wire import RaftFrame, RpcRequest, WireMessage

T = TypeVar("T")

MAX_FAULT_RULES: Final = 1024
"""Rules active at once in one injector: every frame is checked against all of them."""


class FaultAction(enum.Enum):
    DROP = "drop"
    DELAY = "delay"
    CUT = "cut"


@dataclass(frozen=True, slots=True)
class FaultRule:
    """Which frames a fault hits. ``None`` matches anything."""

    action: FaultAction
    src: str | None = None
    dst: str | None = None
    both_ways: bool = False
    """Also match frames from ``dst`` to ``src``."""
    types: frozenset[type] | None = None
    """Raft message classes or wire message classes."""
    methods: frozenset[str] | None = None
    """RPC method names (matches requests only)."""
    delay_s: float = 0.0

    def __post_init__(self) -> None:
        if self.action is FaultAction.DELAY and not self.delay_s > 0:
            raise ValueError("a delay rule needs delay_s > 0")
        if self.action is not FaultAction.DELAY and self.delay_s:
            raise ValueError("only a delay rule takes delay_s")

    def matches_pair(self, src: str, dst: str) -> bool:
        forward = self.src in (None, src) and self.dst in (None, dst)
        backward = self.both_ways and self.src in (None, dst) and self.dst in (None, src)
        return forward or backward

    def matches(self, src: str, dst: str, message: WireMessage) -> bool:
        if not self.matches_pair(src, dst):
            return False
        if self.types is not None:
            inner = message.message if isinstance(message, RaftFrame) else None
            if type(message) not in self.types and type(inner) not in self.types:
                return False
        if self.methods is not None:
            return isinstance(message, RpcRequest) and message.method in self.methods
        return True


@dataclass(frozen=True, slots=True)
class Verdict:
    """What to do with one frame: drop it, or send it after ``delay_s`` (0: at once)."""

    drop: bool = False
    delay_s: float = 0.0


PASS: Final = Verdict()
DROP: Final = Verdict(drop=True)


class FaultInjector:
    """A switchable set of :class:`FaultRule`; listeners hear of every change."""

    def __init__(self) -> None:
        self._rules: dict[int, FaultRule] = {}
        self._ids = itertools.count(1)
        self._listeners: list[Callable[[], None]] = []

    # --- rules -------------------------------------------------------------------------

    def add(self, rule: FaultRule) -> int:
        """Activate ``rule``; returns a handle for :meth:`remove`."""
        if len(self._rules) >= MAX_FAULT_RULES:
            raise ValueError(f"more than {MAX_FAULT_RULES} fault rules")
        handle = next(self._ids)
        self._rules[handle] = rule
        self._changed()
        return handle

    def drop(
        self,
        src: str | None = None,
        dst: str | None = None,
        *,
        both_ways: bool = False,
        types: Iterable[type] | None = None,
        methods: Iterable[str] | None = None,
    ) -> int:
        return self.add(
            FaultRule(FaultAction.DROP, src, dst, both_ways, _set(types), _set(methods))
        )

    def delay(
        self,
        delay_s: float,
        src: str | None = None,
        dst: str | None = None,
        *,
        both_ways: bool = False,
        types: Iterable[type] | None = None,
        methods: Iterable[str] | None = None,
    ) -> int:
        return self.add(
            FaultRule(FaultAction.DELAY, src, dst, both_ways, _set(types), _set(methods), delay_s)
        )

    def cut(self, a: str | None, b: str | None = None) -> int:
        """Cut every connection between ``a`` and ``b`` (``None``: any node)."""
        return self.add(FaultRule(FaultAction.CUT, a, b, both_ways=True))

    def remove(self, handle: int) -> None:
        if self._rules.pop(handle, None) is not None:
            self._changed()

    def clear(self) -> None:
        if self._rules:
            self._rules.clear()
            self._changed()

    @property
    def rules(self) -> tuple[FaultRule, ...]:
        return tuple(self._rules.values())

    # --- decisions ---------------------------------------------------------------------

    def verdict(self, src: str, dst: str, message: WireMessage) -> Verdict:
        """Drop beats delay; several delays take the longest."""
        if not self._rules:
            return PASS
        delay_s = 0.0
        for rule in self._rules.values():
            if rule.action is FaultAction.CUT or not rule.matches(src, dst, message):
                continue
            if rule.action is FaultAction.DROP:
                return DROP
            delay_s = max(delay_s, rule.delay_s)
        return Verdict(delay_s=delay_s) if delay_s else PASS

    def is_cut(self, a: str, b: str) -> bool:
        return any(
            rule.action is FaultAction.CUT and rule.matches_pair(a, b)
            for rule in self._rules.values()
        )

    # --- listeners ---------------------------------------------------------------------

    def subscribe(self, listener: Callable[[], None]) -> Callable[[], None]:
        """Call ``listener`` after every change; returns the function that unsubscribes."""
        self._listeners.append(listener)

        def unsubscribe() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return unsubscribe

    def _changed(self) -> None:
        for listener in list(self._listeners):
            listener()


def _set(items: Iterable[T] | None) -> frozenset[T] | None:
    return None if items is None else frozenset(items)
