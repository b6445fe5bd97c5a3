"""The one simulated network: messages in flight between named nodes, under one fault
vocabulary, for every simulator of this package.

A :class:`Network` knows nothing of what it carries (a Raft message, an encoded frame)
nor of how time moves: its callers pass ``now`` in their own unit (whole steps for the
tick-level and host-level simulators, loop seconds for the simulated transport) and ask
for what has arrived. What it does to a message is decided by :class:`Faults` and by
the cuts:

* **cuts** (:meth:`Network.partition`, :meth:`~Network.isolate`,
  :meth:`~Network.cut_one_way`, :meth:`~Network.heal`) stop a directed pair from
  talking; they are checked when a message is sent and again when it arrives, so a cut
  also loses what is already on the wire, as a cut cable does;
* **drop** loses a message, **duplicate** sends it twice (only messages the caller calls
  ``duplicable``), each copy gets its own **delay** (uniform in [min, max], plus
  ``extra_delay``, plus up to ``bulk_delay`` for ``bulky`` messages), and the spread
  reorders messages unless ``reorder`` is off (then each directed link is FIFO).

Every random choice comes from the network's ``rng``, and messages due at the same time
arrive in the order they were sent, so one seed replays one run. Two orders of drawing
exist (:class:`Draws`) so that the seeds recorded by each simulator before they shared
this model still replay the same runs.
"""

from __future__ import annotations

import enum
import heapq
import itertools
import math
import random
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any, Generic, TypeVar

P = TypeVar("P")


@dataclass(frozen=True, slots=True)
class Faults:
    """What the network does to each message; replace it at any time during a run
    (messages already on the wire keep their delays). Delays are in the network's unit
    of time: whole steps for the tick-level and host-level simulators, seconds for the
    simulated transport."""

    drop: float = 0.0
    """Chance that a message is lost."""
    duplicate: float = 0.0
    """Chance that a duplicable message arrives twice."""
    min_delay: float = 1
    max_delay: float = 5
    """Every copy's delay is uniform in [min_delay, max_delay]; the spread reorders."""
    extra_delay: tuple[float, float] = (0, 0)
    """A congested network: an extra delay uniform in this range, for every message."""
    bulk_delay: float = 0
    """Messages that carry log data (appends, snapshot chunks) take up to this much
    more: a transport streams them apart from, and behind, the small control messages,
    so a heartbeat or a read confirmation overtakes the entries it follows."""
    reorder: bool = True
    """Let messages on one link overtake each other (off: per-link FIFO, like TCP)."""

    def __post_init__(self) -> None:
        low, high = self.extra_delay
        if not (0 <= self.min_delay <= self.max_delay and 0 <= low <= high):
            raise ValueError("delays need 0 <= min <= max")
        if self.bulk_delay < 0:
            raise ValueError("bulk_delay must not be negative")
        if not (0.0 <= self.drop <= 1.0 and 0.0 <= self.duplicate <= 1.0):
            raise ValueError("drop and duplicate are probabilities")


class Draws(enum.Enum):
    """The order in which a network draws its random numbers for one message.

    ``STEPPED`` (the tick-level and host-level simulators): drop and duplicate chances
    are drawn for every message, even at zero, then a whole-number delay per copy.
    ``CONTINUOUS`` (the simulated transport): a chance is drawn only when it is not
    zero, the first copy's delay before the duplicate chance, delays as real numbers.
    The two produce the same distribution of runs; they differ only in which seed gives
    which run, and each keeps the seeds its simulator's tests were written with.
    """

    STEPPED = "stepped"
    CONTINUOUS = "continuous"


@dataclass(frozen=True, slots=True)
class Packet(Generic[P]):
    """One message on the wire: who sent it to whom, and what it carries."""

    sender: str
    receiver: str
    payload: P
    what: str = ""
    """A name for traces and counters (``raft/AppendEntries``, ``call/kv.get`` ...)."""


LossCheck = Callable[[Packet[Any]], str | None]
"""A simulator's own reason to lose a packet (its receiver is down ...), or ``None``."""

EventHook = Callable[[str, Packet[Any]], None]
"""Told of every ``send``, ``deliver`` and ``drop:<why>``, for traces."""


class Network(Generic[P]):
    """Messages in flight between named nodes (see the module's docstring).

    ``lost_at_send`` and ``lost_at_arrival`` let a simulator lose packets for reasons of
    its own before the cuts are checked; ``on_event`` sees everything the network does;
    ``on_enqueue`` is told each due time (a simulator on an event loop sets its timer).
    :attr:`stats` counts ``sent``, ``delivered``, ``duplicated`` and ``dropped_<why>``
    (``cut``, ``random``, ``overflow`` and the simulator's own reasons).
    """

    def __init__(
        self,
        rng: random.Random,
        faults: Faults,
        *,
        draws: Draws,
        max_in_flight: int | None = None,
        lost_at_send: LossCheck | None = None,
        lost_at_arrival: LossCheck | None = None,
        on_event: EventHook | None = None,
        on_enqueue: Callable[[float], None] | None = None,
    ) -> None:
        self.rng = rng
        self.draws = draws
        self.faults = faults
        self.max_in_flight = max_in_flight
        self.stats: Counter[str] = Counter()
        self.cut: set[tuple[str, str]] = set()
        """Directed (sender, receiver) pairs that cannot talk."""
        self.isolated: set[str] = set()
        """Nodes cut off from every other node, both ways."""
        self._lost_at_send = lost_at_send
        self._lost_at_arrival = lost_at_arrival
        self._on_event = on_event
        self._on_enqueue = on_enqueue
        self._queue: list[tuple[float, int, Packet[P]]] = []
        self._order = itertools.count()  # FIFO among messages due at the same time
        self._link_tail: dict[tuple[str, str], float] = {}  # per-link FIFO: last due time

    @property
    def faults(self) -> Faults:
        return self._faults

    @faults.setter
    def faults(self, faults: Faults) -> None:
        if self.draws is Draws.STEPPED:
            delays = (faults.min_delay, faults.max_delay, faults.bulk_delay, *faults.extra_delay)
            if any(delay != int(delay) for delay in delays):
                raise ValueError("a stepped network's delays are whole numbers of steps")
        self._faults = faults

    def set_faults(self, **changes: Any) -> Faults:
        """Change some fields of :attr:`faults` (e.g. ``drop=0.2``); returns the new
        faults. Messages already on the wire keep their delays."""
        self.faults = replace(self.faults, **changes)
        return self.faults

    @property
    def sent(self) -> int:
        return self.stats["sent"]

    @property
    def dropped(self) -> int:
        return sum(n for key, n in self.stats.items() if key.startswith("dropped_"))

    # --- cuts ----------------------------------------------------------------------------

    def partition(self, *groups: Iterable[str]) -> None:
        """Replace the cuts so that, among the nodes named, only nodes in a common group
        can talk (groups may overlap: a bridge). Nodes not named are not cut, and
        isolated nodes stay isolated."""
        sets = [set(group) for group in groups]
        everyone = sorted(set().union(*sets))
        self.cut = {
            (a, b)
            for a in everyone
            for b in everyone
            if a != b and not any(a in s and b in s for s in sets)
        }

    def isolate(self, node: str, others: Iterable[str] | None = None) -> None:
        """Cut ``node`` off, both ways, from ``others`` (adding to the other cuts, so a
        later :meth:`partition` replaces it), or from every node until :meth:`heal`."""
        if others is None:
            self.isolated.add(node)
            return
        for other in others:
            if other != node:
                self.cut |= {(node, other), (other, node)}

    def cut_one_way(self, sender: str, receiver: str) -> None:
        """Lose everything ``sender`` sends to ``receiver``; the other way still works."""
        self.cut.add((sender, receiver))

    def heal(self) -> None:
        """Remove every cut, partition and isolation."""
        self.cut = set()
        self.isolated.clear()

    def linked(self, sender: str, receiver: str) -> bool:
        """Whether no cut, partition or isolation stands between the two, this way."""
        return (
            (sender, receiver) not in self.cut
            and sender not in self.isolated
            and receiver not in self.isolated
        )

    # --- the wire ------------------------------------------------------------------------

    def send(self, packet: Packet[P], now: float, *, duplicable: bool, bulky: bool) -> None:
        """Put ``packet`` on the wire at ``now``, or lose it (see :class:`Faults`)."""
        self.stats["sent"] += 1
        self._event("send", packet)
        why = self._lost_at_send(packet) if self._lost_at_send is not None else None
        if why is None and not self.linked(packet.sender, packet.receiver):
            why = "cut"
        if why is not None:
            self._lose(why, packet)
            return
        faults, rng = self.faults, self.rng
        if self.draws is Draws.STEPPED:
            if rng.random() < faults.drop:
                self._lose("random", packet)
                return
            twice = rng.random() < faults.duplicate and duplicable
            for _ in range(2 if twice else 1):
                self.enqueue(packet, now, bulky=bulky)
        else:
            if faults.drop and rng.random() < faults.drop:
                self._lose("random", packet)
                return
            self.enqueue(packet, now, bulky=bulky)
            if duplicable and faults.duplicate and rng.random() < faults.duplicate:
                self.stats["duplicated"] += 1
                self.enqueue(packet, now, bulky=bulky)

    def enqueue(self, packet: Packet[P], now: float, *, bulky: bool = False) -> None:
        """Put one copy on the wire with a delay, past the cuts and the loss chance
        (a connection reset notice travels so)."""
        if self.max_in_flight is not None and len(self._queue) >= self.max_in_flight:
            self._lose("overflow", packet)
            return
        due = self._due(now, bulky)
        if not self.faults.reorder:
            link = (packet.sender, packet.receiver)
            due = max(due, self._link_tail.get(link, due))
            self._link_tail[link] = due
        heapq.heappush(self._queue, (due, next(self._order), packet))
        if self._on_enqueue is not None:
            self._on_enqueue(due)

    def _due(self, now: float, bulky: bool) -> float:
        # Summed in this order, one term at a time: float sums depend on their order, and
        # a due time a hair different could reorder two messages of a recorded seed.
        faults, rng = self.faults, self.rng
        low, high = faults.extra_delay
        stepped = self.draws is Draws.STEPPED
        draw: Callable[[float, float], float] = (
            (lambda a, b: rng.randint(int(a), int(b))) if stepped else rng.uniform
        )
        due = now + draw(faults.min_delay, faults.max_delay)
        if high > 0:
            due += draw(low, high)
        if bulky and faults.bulk_delay:
            due += draw(0, faults.bulk_delay)
        return due

    def next_due(self) -> float:
        """When the earliest message on the wire arrives (infinity: none is)."""
        return self._queue[0][0] if self._queue else math.inf

    def pop_arrival(self, now: float) -> Packet[P] | None:
        """The next message due by ``now`` that is not lost on arrival, or ``None``."""
        while self._queue and self._queue[0][0] <= now:
            _, _, packet = heapq.heappop(self._queue)
            why = self._lost_at_arrival(packet) if self._lost_at_arrival is not None else None
            if why is None and not self.linked(packet.sender, packet.receiver):
                why = "cut"
            if why is not None:
                self._lose(why, packet)
                continue
            self.stats["delivered"] += 1
            self._event("deliver", packet)
            return packet
        return None

    def arrivals(self, now: float) -> list[Packet[P]]:
        """Every message due by ``now`` that is not lost on arrival, in arrival order."""
        out = []
        while (packet := self.pop_arrival(now)) is not None:
            out.append(packet)
        return out

    def in_flight(self) -> int:
        return len(self._queue)

    def _lose(self, why: str, packet: Packet[P]) -> None:
        self.stats[f"dropped_{why}"] += 1
        self._event(f"drop:{why}", packet)

    def _event(self, event: str, packet: Packet[P]) -> None:
        if self._on_event is not None:
            self._on_event(event, packet)
