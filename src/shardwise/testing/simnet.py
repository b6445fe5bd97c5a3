"""A simulated network for running many real server nodes inside one event loop.

:class:`~shardwise.testing.simtransport.SimTransport` has the surface of
:class:`shardwise.net.transport.Transport` that servers use (``start``, ``close``,
``address``, ``set_peer``, ``serve``, ``call``, ``on_raft``, ``off_raft``,
``raft_sender``, ``send_raft``; :class:`~shardwise.net.endpoint.Endpoint` names it), so
the production code (Raft hosts, RPC handlers, background tasks) runs unchanged with one
``SimTransport`` per node, all joined by one :class:`SimNetwork`, the event-loop adapter
of the one network model (:mod:`shardwise.testing.network`). Run it on a
:class:`~shardwise.testing.virtualtime.VirtualTimeLoop` and a run takes no real time and,
given one seed, replays exactly.

What travels is what the real transport would write: every Raft message, request, reply
and failure is turned into a frame by the wire codec (``net/frames.py``) when it is sent
and decoded from it when it arrives. Each copy is therefore an independent object, frame
size limits apply as in production (an oversized Raft message is dropped, an oversized
reply becomes an ``internal`` failure) and bodies are validated by the ``RpcMethod``.

How it mirrors the real transport, and where it deliberately simplifies:

* **Errors.** ``call`` raises ``TransportClosedError`` when the transport is not running,
  ``UnknownPeerError`` for a node it has never heard of, ``RpcOverloadedError`` past
  ``Limits.max_pending_calls`` (or when the callee runs too many handlers),
  ``RpcTimeoutError`` at its deadline, ``RemoteCallError`` for a failure the callee
  reports (``unknown_method``, ``bad_request``, ``internal``, ``shutting_down``), and
  ``ConnectionLostError`` when the callee crashed or closed with the call in flight.
  Calls are dispatched by the real transport's own parts (``net/dispatch.py``): handlers
  are bounded in number and cancelled at the deadline, replies are matched alike.
* **A node that is down** (:meth:`SimNetwork.down`, or its transport closed) sends and
  receives nothing. Calls it was serving fail promptly with ``ConnectionLostError`` (one
  network delay after the crash, the peer's kernel resets the connection; a transport
  that closes first answers its running handlers with ``shutting_down``), and new calls
  to it time out. Here the simulator is slower than the real transport, which fails the
  calls queued for a peer as soon as a dial to it fails (``PeerUnreachableError``, never
  sent) and new calls to it until the next dial is due: a simulated client waits out its
  attempt timeout where a real one moves on at once, so simulated runs overstate
  failover pauses (``bench/failover.py`` measures the real ones). Unlike the real
  transport, what is sent to a down node is lost rather than queued for its return; Raft
  retransmits, and a call times out.
* **Partitions and drops** lose messages silently, so calls across them time out. Cuts
  and down nodes are checked when a message is sent and again when it arrives: cutting a
  link also loses what is on it.
* **Order.** Each directed link delivers in the order it was sent by default, as one TCP
  connection does; ``set_faults(reorder=True)`` lets messages overtake each other.
* **Duplicates** are Raft messages only. TCP never duplicates, and the transport's calls
  are at-most-once; servers may rely on that, so duplicating calls would test a contract
  the real transport does not have. Raft must (and does) tolerate duplicates.
* **No addresses.** ``set_peer`` is bookkeeping; every node attached to the network can
  be called whether or not it was introduced. ``address`` is parsed from a node id of
  the form ``host:port``, else ``("sim", 0)``.

Determinism: every random choice comes from the network's ``rng``, messages due at the
same time arrive in the order they were sent, and nothing iterates over an unordered set,
so the same seed replays the same run (given deterministic user code and a virtual time
loop). :attr:`SimNetwork.trace` records what happened, for comparing runs.
"""

from __future__ import annotations

import asyncio
import math
import random
from collections import Counter, deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final, NamedTuple, Protocol

from shardwise.errors import NetError
from shardwise.net.frames import HEADER_BYTES, decode_body
from shardwise.net.wire import PeerRole, RaftFrame, RpcFailure, RpcRequest, WireMessage
from shardwise.testing.network import Draws, Faults, Network, Packet

DEFAULT_MIN_DELAY_S: Final = 0.0005
DEFAULT_MAX_DELAY_S: Final = 0.005
"""One-way latency is uniform in [0.5, 5] ms by default: a data centre network, with
enough spread that concurrent messages on different links interleave."""

DEFAULT_FAULTS: Final = Faults(
    min_delay=DEFAULT_MIN_DELAY_S, max_delay=DEFAULT_MAX_DELAY_S, reorder=False
)
"""A healthy data centre network: no loss, per-link FIFO (delays in seconds)."""

MAX_IN_FLIGHT: Final = 100_000
"""Messages on the wire at once, all links together; more are dropped (and counted). A
healthy simulation of dozens of nodes stays far below; a message storm fails visibly."""

MAX_NODES: Final = 4096
"""Node ids a network tracks (as ``Limits.max_peers`` for one real transport)."""


class TraceEvent(NamedTuple):
    """One thing the network did: ``event`` is ``send``, ``deliver`` or ``drop:<why>``;
    ``what`` names the message (``raft/AppendEntries``, ``call/kv.get``, ``reply``,
    ``fail/internal``, ``reset``)."""

    time: float
    event: str
    sender: str
    receiver: str
    what: str


class SimNode(Protocol):
    """What the network needs of a node's endpoint (``SimTransport``)."""

    @property
    def id(self) -> str: ...

    @property
    def role(self) -> PeerRole: ...

    @property
    def running(self) -> bool: ...

    def receive(self, sender: str, sender_role: PeerRole, message: WireMessage) -> None: ...

    def calls_to(self, peer: str) -> tuple[int, ...]: ...

    def connection_reset(self, peer: str, call_ids: tuple[int, ...]) -> None: ...


def _describe(message: WireMessage) -> str:
    if isinstance(message, RaftFrame):
        return f"raft/{type(message.message).__name__}"
    if isinstance(message, RpcRequest):
        return f"call/{message.method}"
    if isinstance(message, RpcFailure):
        return f"fail/{message.code.name.lower()}"
    return "reply"


@dataclass(frozen=True, slots=True)
class _Wire:
    sender_role: PeerRole
    frame: bytes | None
    """The encoded frame; ``None`` for a connection reset notice."""
    resets: tuple[int, ...] = ()
    """For a reset notice: the receiver's calls to the sender that it fails."""


class SimNetwork:
    """The hub every ``SimTransport`` of a simulation is attached to.

    Messages are delivered after a random delay (:attr:`faults`, in seconds) by one loop
    timer set for the earliest message due, so the network works on any running loop
    (on real time it is just not deterministic); use one network per loop.
    ``trace_limit`` keeps the last that many :class:`TraceEvent` in :attr:`trace` (0: no
    trace); :attr:`stats` counts everything.
    """

    def __init__(
        self,
        rng: random.Random,
        *,
        faults: Faults | None = None,
        max_in_flight: int = MAX_IN_FLIGHT,
        trace_limit: int = 0,
    ) -> None:
        if max_in_flight < 1 or trace_limit < 0:
            raise ValueError("need max_in_flight >= 1 and trace_limit >= 0")
        self.trace: deque[TraceEvent] = deque(maxlen=trace_limit)
        self.wire: Network[_Wire] = Network(
            rng,
            faults or DEFAULT_FAULTS,
            draws=Draws.CONTINUOUS,
            max_in_flight=max_in_flight,
            lost_at_send=self._lost_at_send,
            lost_at_arrival=self._lost_at_arrival,
            on_event=self._record,
            on_enqueue=self._wake_at,
        )
        """The messages in flight, the cuts and the faults."""
        self._nodes: dict[str, SimNode] = {}
        self._down: set[str] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_due = math.inf

    @property
    def rng(self) -> random.Random:
        return self.wire.rng

    @property
    def stats(self) -> Counter[str]:
        return self.wire.stats

    # --- faults --------------------------------------------------------------------------

    @property
    def faults(self) -> Faults:
        return self.wire.faults

    @faults.setter
    def faults(self, faults: Faults) -> None:
        self.wire.faults = faults

    def set_faults(self, **changes: Any) -> Faults:
        """Change some fields of :attr:`faults` (e.g. ``drop=0.2``); returns the new
        faults. Messages already on the wire keep their delays."""
        return self.wire.set_faults(**changes)

    def partition(self, *groups: Iterable[str]) -> None:
        """See :meth:`Network.partition <shardwise.testing.network.Network.partition>`."""
        self.wire.partition(*groups)

    def isolate(self, node: str) -> None:
        """Cut ``node`` off from every other node, both ways, until :meth:`heal`."""
        self.wire.isolate(node)

    def cut_one_way(self, sender: str, receiver: str) -> None:
        self.wire.cut_one_way(sender, receiver)

    def heal(self) -> None:
        """Remove every cut, partition and isolation (down nodes stay down)."""
        self.wire.heal()

    def linked(self, sender: str, receiver: str) -> bool:
        return self.wire.linked(sender, receiver)

    def down(self, node: str) -> None:
        """Crash ``node`` as far as the network can tell: it sends and receives nothing,
        and calls in flight to it fail with ``ConnectionLostError`` (its peers' kernels
        reset the connections). Its server code keeps running until the test stops it."""
        if node not in self._down:
            self._down.add(node)
            self.reset_connections(node)

    def up(self, node: str) -> None:
        """Let ``node`` send and receive again."""
        self._down.discard(node)

    def is_down(self, node: str) -> bool:
        transport = self._nodes.get(node)
        return node in self._down or transport is None or not transport.running

    # --- observing -----------------------------------------------------------------------

    def nodes(self) -> list[str]:
        """The ids of the transports attached, sorted."""
        return sorted(self._nodes)

    def transport(self, node: str) -> SimNode:
        return self._nodes[node]

    def in_flight(self) -> int:
        return self.wire.in_flight()

    # --- used by SimTransport ------------------------------------------------------------

    def attach(self, node: SimNode) -> None:
        current = self._nodes.get(node.id)
        if current is not None and current.running:
            raise ValueError(f"node {node.id!r} already has a running transport")
        if current is None and len(self._nodes) >= MAX_NODES:
            raise NetError(f"more than {MAX_NODES} nodes")
        self._nodes[node.id] = node

    def knows(self, node: str) -> bool:
        return node in self._nodes

    def _role(self, node: str) -> PeerRole:
        transport = self._nodes.get(node)
        return PeerRole.NODE if transport is None else transport.role

    def transmit(
        self,
        sender: str,
        receiver: str,
        frame: bytes,
        message: WireMessage,
        *,
        duplicable: bool = False,
    ) -> None:
        """Put ``frame`` (``message``, encoded) on the wire from ``sender`` to
        ``receiver``, or lose it."""
        wire = _Wire(self._role(sender), frame)
        packet = Packet(sender, receiver, wire, _describe(message))
        now = asyncio.get_running_loop().time()
        self.wire.send(packet, now, duplicable=duplicable, bulky=False)

    def reset_connections(self, node: str) -> None:
        """``node`` crashed or closed: every peer with calls in flight to it learns (one
        delay later, behind what ``node`` sent before) that their connection broke."""
        for peer in sorted(self._nodes):
            if peer == node:
                continue
            calls = self._nodes[peer].calls_to(node)
            if calls:
                self.stats["resets"] += 1
                notice = _Wire(self._role(node), None, calls)
                now = asyncio.get_running_loop().time()
                self.wire.enqueue(Packet(node, peer, notice, "reset"), now)

    # --- the wire ------------------------------------------------------------------------

    def _lost_at_send(self, packet: Packet[_Wire]) -> str | None:
        sender, receiver = packet.sender, packet.receiver
        if sender in self._down or receiver in self._down or receiver not in self._nodes:
            return "down"
        return None

    def _lost_at_arrival(self, packet: Packet[_Wire]) -> str | None:
        if self.is_down(packet.receiver):
            return "down"
        # A reset notice leaves a node that just went down: only the receiver matters.
        if packet.sender in self._down and (
            packet.payload.frame is not None or not self.linked(packet.sender, packet.receiver)
        ):
            return "down"
        return None

    def _wake_at(self, due: float) -> None:
        """Keep the one timer set for the earliest message due."""
        if due < self._timer_due:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = asyncio.get_running_loop().call_at(due, self._on_timer)
            self._timer_due = due

    def _on_timer(self) -> None:
        # Deliver what the timer was set for even if float rounding left the clock a hair
        # short of it, then whatever else is due by now.
        now = max(asyncio.get_running_loop().time(), self._timer_due)
        self._timer = None
        self._timer_due = math.inf
        while (packet := self.wire.pop_arrival(now)) is not None:
            self._arrive(packet)
        if self.wire.in_flight():  # what arrived may have set the timer for a later message
            self._wake_at(self.wire.next_due())

    def _arrive(self, packet: Packet[_Wire]) -> None:
        transport = self._nodes[packet.receiver]
        wire = packet.payload
        if wire.frame is None:
            transport.connection_reset(packet.sender, wire.resets)
        else:
            # Decoded per arrival: every copy is a new object, as off a real socket.
            message = decode_body(wire.frame[HEADER_BYTES:])
            transport.receive(packet.sender, wire.sender_role, message)

    def _record(self, event: str, packet: Packet[Any]) -> None:
        if self.trace.maxlen:
            now = asyncio.get_running_loop().time()
            self.trace.append(TraceEvent(now, event, packet.sender, packet.receiver, packet.what))
