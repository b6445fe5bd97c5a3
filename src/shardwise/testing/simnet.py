"""A simulated network for running many real server nodes inside one event loop.

:class:`SimTransport` has the surface of :class:`shardwise.net.transport.Transport` that
servers use (``start``, ``close``, ``address``, ``set_peer``, ``serve``, ``call``,
``on_raft``, ``off_raft``, ``raft_sender``, ``send_raft``; :class:`~shardwise.net.endpoint.Endpoint`
names it), so the production code (Raft hosts, RPC handlers, background tasks) runs unchanged
with one :class:`SimTransport` per node, all joined by one :class:`SimNetwork`. Run it on
a :class:`~shardwise.testing.virtualtime.VirtualTimeLoop` and a run takes no real time
and, given one seed, replays exactly.

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
  Handlers run as in ``net/server.py``: bounded in number, cancelled at the deadline.
* **A node that is down** (:meth:`SimNetwork.down`, or its transport closed) sends and
  receives nothing. Calls it was serving fail promptly with ``ConnectionLostError`` (one
  network delay after the crash, the peer's kernel resets the connection; a transport
  that closes first answers its running handlers with ``shutting_down``), and new calls
  to it time out: the real transport does not fail a call to a dead peer quickly either,
  it keeps redialling with back-off until the call's deadline (``PeerUnreachableError``
  only after ``MAX_DIAL_ATTEMPTS``, about 90 s). Unlike the real transport, what is sent
  to a down node is lost rather than queued for its return; Raft retransmits, and a call
  times out.
* **Partitions and drops** lose messages silently, so calls across them time out. Cuts
  and down nodes are checked when a message is sent and again when it arrives: cutting a
  link also loses what is on it.
* **Order.** Each directed link delivers in the order it was sent by default, as one TCP
  connection does; ``SimFaults(reorder=True)`` lets messages overtake each other.
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
import functools
import heapq
import itertools
import logging
import math
import random
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any, Final, NamedTuple, TypeVar

from shardwise.clock import AsyncioClock
from shardwise.errors import (
    ConnectionLostError,
    FrameTooLargeError,
    NetError,
    RpcOverloadedError,
    RpcTimeoutError,
    TransportClosedError,
    UnknownPeerError,
)
from shardwise.net.base import RaftHandler
from shardwise.net.frames import HEADER_BYTES, decode_body, encode_frame
from shardwise.net.limits import DEFAULT_RPC_TIMEOUT_S, Limits
from shardwise.net.links import Address
from shardwise.net.rpc import CallContext, Handler, RawHandler, RpcMethod, erase, failure_error
from shardwise.net.server import handle_request, rpc_failure
from shardwise.net.timing import within
from shardwise.net.wire import (
    MAX_NODE_ID_CHARS,
    MAX_RPC_TIMEOUT_MS,
    FailureCode,
    RaftFrame,
    Role,
    RpcFailure,
    RpcRequest,
    RpcResponse,
    WireMessage,
)
from shardwise.raft.messages import Message

logger = logging.getLogger("shardwise.testing.simnet")

Req = TypeVar("Req")
Resp = TypeVar("Resp")

DEFAULT_MIN_DELAY_S: Final = 0.0005
DEFAULT_MAX_DELAY_S: Final = 0.005
"""One-way latency is uniform in [0.5, 5] ms by default: a data centre network, with
enough spread that concurrent messages on different links interleave."""

MAX_IN_FLIGHT: Final = 100_000
"""Messages on the wire at once, all links together; more are dropped (and counted). A
healthy simulation of dozens of nodes stays far below; a message storm fails visibly."""

MAX_NODES: Final = 4096
"""Node ids a network tracks (as ``Limits.max_peers`` for one real transport)."""

SIM_HOST: Final = "sim"
"""The host of a node's address when its id is not ``host:port``."""


# --- faults ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SimFaults:
    """What the network does to each message; replace it at any time during a run
    (:meth:`SimNetwork.set_faults`)."""

    min_delay_s: float = DEFAULT_MIN_DELAY_S
    max_delay_s: float = DEFAULT_MAX_DELAY_S
    """The wire's latency: uniform in [min, max] for every message."""
    extra_delay_s: tuple[float, float] = (0.0, 0.0)
    """A congested network: an extra delay uniform in this range, on top of the latency."""
    drop_rate: float = 0.0
    """Chance that a message (of any kind) is lost."""
    duplicate_rate: float = 0.0
    """Chance that a Raft message arrives twice (calls are never duplicated)."""
    reorder: bool = False
    """Let messages on one link overtake each other (off: per-link FIFO, like TCP)."""

    def __post_init__(self) -> None:
        low, high = self.extra_delay_s
        if not (0 <= self.min_delay_s <= self.max_delay_s and 0 <= low <= high):
            raise ValueError("delays need 0 <= min <= max")
        if not (0.0 <= self.drop_rate <= 1.0 and 0.0 <= self.duplicate_rate <= 1.0):
            raise ValueError("drop_rate and duplicate_rate are probabilities")


class TraceEvent(NamedTuple):
    """One thing the network did: ``event`` is ``send``, ``deliver`` or ``drop:<why>``;
    ``what`` names the message (``raft/AppendEntries``, ``call/kv.get``, ``reply``,
    ``fail/internal``, ``reset``)."""

    time: float
    event: str
    sender: str
    receiver: str
    what: str


@dataclass(frozen=True, slots=True)
class _InFlight:
    sender: str
    receiver: str
    sender_role: Role
    what: str
    frame: bytes | None
    """The encoded frame; ``None`` for a connection reset notice."""
    resets: tuple[int, ...] = ()
    """For a reset notice: the receiver's calls to the sender that it fails."""


# --- the network -------------------------------------------------------------------------


class SimNetwork:
    """The hub every :class:`SimTransport` of a simulation is attached to.

    Messages are delivered after a random delay (``faults``) by one loop timer set for
    the earliest message due, so the network works on any running loop (on real time it
    is just not deterministic); use one network per loop. ``trace_limit`` keeps the last that many
    :class:`TraceEvent` in :attr:`trace` (0: no trace); :attr:`stats` counts everything.
    """

    def __init__(
        self,
        rng: random.Random,
        *,
        faults: SimFaults | None = None,
        max_in_flight: int = MAX_IN_FLIGHT,
        trace_limit: int = 0,
    ) -> None:
        if max_in_flight < 1 or trace_limit < 0:
            raise ValueError("need max_in_flight >= 1 and trace_limit >= 0")
        self.rng = rng
        self.faults = faults or SimFaults()
        self.max_in_flight = max_in_flight
        self.stats: Counter[str] = Counter()
        self.trace: deque[TraceEvent] = deque(maxlen=trace_limit)
        self._nodes: dict[str, SimTransport] = {}
        self._down: set[str] = set()
        self._isolated: set[str] = set()
        self._cut: set[tuple[str, str]] = set()
        self._queue: list[tuple[float, int, _InFlight]] = []
        self._order = itertools.count()  # FIFO among messages due at the same time
        self._link_tail: dict[tuple[str, str], float] = {}  # per-link FIFO: last due time
        self._timer: asyncio.TimerHandle | None = None
        self._timer_due = math.inf

    # --- faults --------------------------------------------------------------------------

    def set_faults(self, **changes: Any) -> SimFaults:
        """Change some fields of :attr:`faults` (e.g. ``drop_rate=0.2``); returns the new
        faults. Messages already on the wire keep their delays."""
        self.faults = replace(self.faults, **changes)
        return self.faults

    def partition(self, *groups: Iterable[str]) -> None:
        """Replace the cuts so that, among the nodes named, only nodes in a common group
        can talk (groups may overlap: a bridge). Nodes not named are not cut."""
        sets = [set(group) for group in groups]
        everyone = sorted(set().union(*sets))
        self._cut = {
            (a, b)
            for a in everyone
            for b in everyone
            if a != b and not any(a in s and b in s for s in sets)
        }

    def isolate(self, node: str) -> None:
        """Cut ``node`` off from every other node, both ways, until :meth:`heal`."""
        self._isolated.add(node)

    def cut_one_way(self, sender: str, receiver: str) -> None:
        """Lose everything ``sender`` sends to ``receiver``; the other way still works."""
        self._cut.add((sender, receiver))

    def heal(self) -> None:
        """Remove every cut, partition and isolation (down nodes stay down)."""
        self._cut.clear()
        self._isolated.clear()

    def linked(self, sender: str, receiver: str) -> bool:
        """Whether no cut, partition or isolation stands between the two, this way."""
        return (
            (sender, receiver) not in self._cut
            and sender not in self._isolated
            and receiver not in self._isolated
        )

    def down(self, node: str) -> None:
        """Crash ``node`` as far as the network can tell: it sends and receives nothing,
        and calls in flight to it fail with ``ConnectionLostError`` (its peers' kernels
        reset the connections). Its server code keeps running until the test stops it."""
        if node not in self._down:
            self._down.add(node)
            self._reset_connections(node)

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

    def transport(self, node: str) -> SimTransport:
        return self._nodes[node]

    def in_flight(self) -> int:
        return len(self._queue)

    # --- used by SimTransport ------------------------------------------------------------

    def _attach(self, transport: SimTransport) -> None:
        current = self._nodes.get(transport.id)
        if current is not None and current.running:
            raise ValueError(f"node {transport.id!r} already has a running transport")
        if current is None and len(self._nodes) >= MAX_NODES:
            raise NetError(f"more than {MAX_NODES} nodes")
        self._nodes[transport.id] = transport

    def _knows(self, node: str) -> bool:
        return node in self._nodes

    def _role(self, node: str) -> Role:
        transport = self._nodes.get(node)
        return Role.NODE if transport is None else transport.role

    def _transmit(
        self, sender: str, receiver: str, frame: bytes, what: str, *, duplicable: bool = False
    ) -> None:
        """Put ``frame`` on the wire from ``sender`` to ``receiver``, or lose it."""
        self.stats["sent"] += 1
        self._record("send", sender, receiver, what)
        if sender in self._down or receiver in self._down or receiver not in self._nodes:
            self._drop("down", sender, receiver, what)
            return
        if not self.linked(sender, receiver):
            self._drop("cut", sender, receiver, what)
            return
        faults = self.faults
        if faults.drop_rate and self.rng.random() < faults.drop_rate:
            self._drop("random", sender, receiver, what)
            return
        item = _InFlight(sender, receiver, self._role(sender), what, frame)
        self._enqueue(item)
        if duplicable and faults.duplicate_rate and self.rng.random() < faults.duplicate_rate:
            self.stats["duplicated"] += 1
            self._enqueue(item)

    def _reset_connections(self, node: str) -> None:
        """``node`` crashed or closed: every peer with calls in flight to it learns (one
        delay later, behind what ``node`` sent before) that their connection broke."""
        for peer in sorted(self._nodes):
            if peer == node:
                continue
            calls = self._nodes[peer]._calls_to(node)
            if calls:
                self.stats["resets"] += 1
                self._enqueue(_InFlight(node, peer, self._role(node), "reset", None, calls))

    # --- the wire ------------------------------------------------------------------------

    def _enqueue(self, item: _InFlight) -> None:
        if len(self._queue) >= self.max_in_flight:
            self._drop("overflow", item.sender, item.receiver, item.what)
            return
        faults = self.faults
        loop = asyncio.get_running_loop()
        due = loop.time() + self.rng.uniform(faults.min_delay_s, faults.max_delay_s)
        low, high = faults.extra_delay_s
        if high > 0:
            due += self.rng.uniform(low, high)
        if not faults.reorder:
            link = (item.sender, item.receiver)
            due = max(due, self._link_tail.get(link, due))
            self._link_tail[link] = due
        heapq.heappush(self._queue, (due, next(self._order), item))
        self._wake_at(due)

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
        while self._queue and self._queue[0][0] <= now:
            _, _, item = heapq.heappop(self._queue)
            self._arrive(item)
        if self._queue:  # what arrived may have set the timer for a later message
            self._wake_at(self._queue[0][0])

    def _arrive(self, item: _InFlight) -> None:
        sender, receiver, what = item.sender, item.receiver, item.what
        transport = self._nodes.get(receiver)
        if transport is None or not transport.running or receiver in self._down:
            self._drop("down", sender, receiver, what)
            return
        # A reset notice leaves a node that just went down: only the receiver matters.
        if (item.frame is not None and sender in self._down) or not self.linked(sender, receiver):
            self._drop("down" if sender in self._down else "cut", sender, receiver, what)
            return
        self.stats["delivered"] += 1
        self._record("deliver", sender, receiver, what)
        if item.frame is None:
            transport._connection_reset(sender, item.resets)
        else:
            # Decoded per arrival: every copy is a new object, as off a real socket.
            transport._receive(sender, item.sender_role, decode_body(item.frame[HEADER_BYTES:]))

    def _drop(self, why: str, sender: str, receiver: str, what: str) -> None:
        self.stats[f"dropped_{why}"] += 1
        self._record(f"drop:{why}", sender, receiver, what)

    def _record(self, event: str, sender: str, receiver: str, what: str) -> None:
        if self.trace.maxlen:
            now = asyncio.get_running_loop().time()
            self.trace.append(TraceEvent(now, event, sender, receiver, what))


# --- one node's endpoint -----------------------------------------------------------------


@dataclass(slots=True)
class _PendingCall:
    future: asyncio.Future[bytes]
    method: str


@dataclass(slots=True)
class _Handlers:
    """Calls running here, in start order (a dict, not a set: cancelling them at close
    in a fixed order keeps the run deterministic)."""

    tasks: dict[asyncio.Task[None], None] = field(default_factory=dict)
    per_peer: Counter[str] = field(default_factory=Counter)


def _address_of(node_id: str) -> Address:
    host, sep, port = node_id.rpartition(":")
    if sep and host and port.isdigit() and int(port) < 1 << 16:
        return (host, int(port))
    return (SIM_HOST, 0)


def _describe(message: WireMessage) -> str:
    if isinstance(message, RaftFrame):
        return f"raft/{type(message.message).__name__}"
    if isinstance(message, RpcRequest):
        return f"call/{message.method}"
    if isinstance(message, RpcFailure):
        return f"fail/{message.code.name.lower()}"
    return "reply"


class SimTransport:
    """One node's endpoint on a :class:`SimNetwork` (see the module's docstring).

    Constructing it attaches it under ``node_id`` (replacing a transport of that id that
    is not running, as a restarted process does). ``limits`` bounds pending calls and
    running handlers as for the real transport. Time is the running loop's.
    """

    def __init__(
        self,
        node_id: str,
        network: SimNetwork,
        *,
        role: Role = Role.NODE,
        limits: Limits | None = None,
    ) -> None:
        if not 0 < len(node_id) <= MAX_NODE_ID_CHARS:
            raise ValueError(f"a node id must be 1 to {MAX_NODE_ID_CHARS} characters")
        self.id = node_id
        self.role = role
        self.network = network
        self.limits = limits or Limits()
        self.stats: Counter[str] = Counter()
        self._clock = AsyncioClock()
        self._peers: dict[str, Address | None] = {}
        self._methods: dict[str, RawHandler] = {}
        self._raft_handlers: dict[int, RaftHandler] = {}
        self._pending: dict[str, dict[int, _PendingCall]] = {}
        self._handlers = _Handlers()
        self._call_ids = itertools.count(1)
        self._started = False
        self._closing = False
        network._attach(self)

    # --- life cycle ----------------------------------------------------------------------

    @property
    def running(self) -> bool:
        """Started and not closing."""
        return self._started and not self._closing

    async def start(self) -> None:
        if self._started or self._closing:
            raise RuntimeError("a transport starts once")
        self._started = True

    async def __aenter__(self) -> SimTransport:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Shut down as the real transport does: refuse new work, answer running calls
        with ``SHUTTING_DOWN``, fail this node's own calls with ``TransportClosedError``,
        then close the connections (peers' calls still in flight here fail with
        ``ConnectionLostError``)."""
        if self._closing:
            return
        self._closing = True
        tasks = list(self._handlers.tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        closed = TransportClosedError(f"transport {self.id!r} closed")
        for calls in self._pending.values():
            for call in calls.values():
                if not call.future.done():
                    call.future.set_exception(closed)
        self.network._reset_connections(self.id)

    # --- peers ---------------------------------------------------------------------------

    @property
    def address(self) -> Address:
        """``host:port`` parsed from the node id, else ``("sim", 0)``."""
        if not self.running or self.role is not Role.NODE:
            raise RuntimeError("the transport is not listening")
        return _address_of(self.id)

    def set_peer(self, node_id: str, address: Address | None) -> None:
        """Learn (or forget, with ``None``) a peer's address: bookkeeping only, every
        node on the network can be reached by id."""
        if node_id == self.id:
            raise ValueError("a node is not its own peer")
        if address is None:
            self._peers.pop(node_id, None)
            return
        if node_id not in self._peers and len(self._peers) >= self.limits.max_peers:
            raise NetError(f"more than {self.limits.max_peers} peers")
        self._peers[node_id] = address

    # --- raft ----------------------------------------------------------------------------

    def on_raft(self, group: int, handler: RaftHandler) -> None:
        """Deliver ``group``'s incoming Raft messages to ``handler``; it must not block."""
        self._raft_handlers[group] = handler

    def off_raft(self, group: int) -> None:
        self._raft_handlers.pop(group, None)

    def raft_sender(self, group: int) -> Callable[[Message], None]:
        """The ``send(message)`` callable for one group's host."""
        return functools.partial(self.send_raft, group)

    def send_raft(self, group: int, message: Message) -> None:
        """Send a Raft message to ``message.to``; never blocks, never raises."""
        if not self.running:
            self.stats["raft_dropped_closed"] += 1
            return
        if message.to == self.id:
            asyncio.get_running_loop().call_soon(self._deliver_raft, group, message)
            return
        wire = RaftFrame(group=group, message=message)
        try:
            frame = encode_frame(wire)
        except FrameTooLargeError:
            logger.warning("%s: dropped a Raft message too large for a frame", self.id)
            self.stats["raft_dropped_too_large"] += 1
            return
        self.stats["raft_sent"] += 1
        self.network._transmit(self.id, message.to, frame, _describe(wire), duplicable=True)

    def _deliver_raft(self, group: int, message: Message) -> None:
        handler = self._raft_handlers.get(group)
        if not self.running or handler is None:
            self.stats["raft_dropped_unknown_group" if self.running else "raft_dropped_closed"] += 1
            return
        try:
            handler(message)
        except Exception:
            logger.exception("%s: the Raft handler of group %d failed", self.id, group)
            self.stats["raft_handler_errors"] += 1
            return
        self.stats["raft_delivered"] += 1

    # --- calls out -----------------------------------------------------------------------

    async def call(
        self,
        peer: str,
        method: RpcMethod[Req, Resp],
        request: Req,
        *,
        timeout_s: float = DEFAULT_RPC_TIMEOUT_S,
    ) -> Resp:
        """Call ``method`` at ``peer`` and wait for its answer for at most ``timeout_s``
        (loop time); errors as the real transport's (see the module's docstring)."""
        if not self.running:
            raise TransportClosedError(f"transport {self.id!r} is not running")
        if not 0 < timeout_s * 1000 <= MAX_RPC_TIMEOUT_MS:
            raise ValueError(f"timeout_s must be in (0, {MAX_RPC_TIMEOUT_MS // 1000}]")
        if peer == self.id or (peer not in self._peers and not self.network._knows(peer)):
            raise UnknownPeerError(peer)
        calls = self._pending.setdefault(peer, {})
        if len(calls) >= self.limits.max_pending_calls:
            self.stats["rpc_overloaded"] += 1
            raise RpcOverloadedError(f"{len(calls)} calls to {peer!r} are pending")
        call_id = next(self._call_ids)
        wire = RpcRequest(
            call_id=call_id,
            method=method.name,
            timeout_ms=max(1, math.ceil(timeout_s * 1000)),
            body=method.encode_request(request),
        )
        frame = encode_frame(wire)  # too large: FrameTooLargeError, nothing sent
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        calls[call_id] = _PendingCall(future, method.name)
        self.stats["rpc_calls"] += 1
        try:
            self.network._transmit(self.id, peer, frame, _describe(wire))
            body = await within(self._clock, timeout_s, future)
        except TimeoutError:
            self.stats["rpc_timeouts"] += 1
            raise RpcTimeoutError(
                f"{method.name} to {peer!r}: no answer in {timeout_s} s"
            ) from None
        finally:
            calls.pop(call_id, None)
            if not calls and self._pending.get(peer) is calls:
                del self._pending[peer]
        return method.decode_response(body)

    def _calls_to(self, peer: str) -> tuple[int, ...]:
        calls = self._pending.get(peer, {})
        return tuple(call_id for call_id, call in calls.items() if not call.future.done())

    def _connection_reset(self, peer: str, call_ids: tuple[int, ...]) -> None:
        calls = self._pending.get(peer, {})
        for call_id in call_ids:
            call = calls.get(call_id)
            if call is not None and not call.future.done():
                call.future.set_exception(ConnectionLostError(f"the connection to {peer!r} closed"))

    # --- arrivals ------------------------------------------------------------------------

    def _receive(self, sender: str, sender_role: Role, message: WireMessage) -> None:
        if isinstance(message, RaftFrame):
            inner = message.message
            if sender_role is not Role.NODE or inner.sender != sender or inner.to != self.id:
                self.stats["raft_dropped_misaddressed"] += 1
                return
            self._deliver_raft(message.group, inner)
        elif isinstance(message, RpcRequest):
            self._on_request(sender, sender_role, message)
        elif isinstance(message, RpcResponse | RpcFailure):
            self._on_reply(sender, message)
        else:  # pragma: no cover - SimTransport sends nothing else
            raise TypeError(f"unexpected {type(message).__name__}")

    def _on_reply(self, sender: str, reply: RpcResponse | RpcFailure) -> None:
        call = self._pending.get(sender, {}).get(reply.call_id)
        if call is None or call.future.done():
            self.stats["rpc_late_replies"] += 1
            return
        if isinstance(reply, RpcResponse):
            call.future.set_result(reply.body)
        else:
            call.future.set_exception(failure_error(reply.code, call.method, reply.message))

    # --- calls in (as net/server.py) -----------------------------------------------------

    def serve(self, method: RpcMethod[Req, Resp], handler: Handler[Req, Resp]) -> None:
        """Answer calls of ``method`` with ``await handler(request, context)``."""
        self._methods[method.name] = erase(method, handler)

    def _on_request(self, caller: str, role: Role, request: RpcRequest) -> None:
        call_id = request.call_id
        if self._closing:
            self.stats["rpc_refused"] += 1
            self._send_reply(
                caller, rpc_failure(call_id, FailureCode.SHUTTING_DOWN, "shutting down")
            )
            return
        raw = self._methods.get(request.method)
        if raw is None:
            failure = rpc_failure(
                call_id, FailureCode.UNKNOWN_METHOD, f"no method {request.method!r}"
            )
            self._send_reply(caller, failure)
            return
        handlers = self._handlers
        if (
            handlers.per_peer[caller] >= self.limits.max_handlers_per_link
            or len(handlers.tasks) >= self.limits.max_handlers
        ):
            self.stats["rpc_refused"] += 1
            running = len(handlers.tasks)
            failure = rpc_failure(call_id, FailureCode.OVERLOADED, f"{running} calls running")
            self._send_reply(caller, failure)
            return
        timeout_s = request.timeout_ms / 1000
        context = CallContext(caller, role, self._clock.now() + timeout_s)
        handlers.per_peer[caller] += 1
        task = asyncio.create_task(
            self._run_handler(caller, request, raw, context, timeout_s),
            name=f"{self.id}:call-{request.method}",
        )
        handlers.tasks[task] = None
        task.add_done_callback(self._handler_done)

    def _handler_done(self, task: asyncio.Task[None]) -> None:
        self._handlers.tasks.pop(task, None)

    async def _run_handler(
        self,
        caller: str,
        request: RpcRequest,
        raw: RawHandler,
        context: CallContext,
        timeout_s: float,
    ) -> None:
        try:
            reply = await handle_request(
                self._clock,
                request,
                raw,
                context,
                timeout_s,
                node_id=self.id,
                on_error=lambda: self.stats.update(rpc_handler_errors=1),
            )
        finally:
            self._handlers.per_peer[caller] -= 1
        self._send_reply(caller, reply)

    def _send_reply(self, caller: str, reply: RpcResponse | RpcFailure) -> None:
        try:
            frame = encode_frame(reply)
        except FrameTooLargeError as exc:
            reply = rpc_failure(reply.call_id, FailureCode.INTERNAL, str(exc))
            frame = encode_frame(reply)
        self.network._transmit(self.id, caller, frame, _describe(reply))
