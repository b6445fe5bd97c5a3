"""Prometheus metrics for one server process (a controller replica or a group server).

``start_metrics(service, ("127.0.0.1", 9100))`` serves ``/metrics`` over HTTP from a
daemon thread (prometheus-client's WSGI server). What it exports:

* ``shardwise_rpc_requests_total{method,outcome}`` and
  ``shardwise_rpc_latency_seconds{method}``: every call the process answers, timed from
  request decoded to reply encoded, by RPC method (``shard.write``, ``shard.read``,
  ``ctl.change``, ...). ``outcome`` is ``answered`` (a reply went back, whatever its
  status), ``failed`` (the handler raised) or ``cancelled`` (shutdown).
* ``shardwise_raft_term``, ``_commit_index``, ``_applied_index``, ``_is_leader``,
  ``_halted``: the replica's Raft state.
* ``shardwise_replica_health{health,reason}``: 1 for this replica's health, ``ok`` or
  ``halted`` (``reason``: the error it halted on, cut to :data:`MAX_REASON_CHARS`).
* ``shardwise_consistency_checks_total``, ``shardwise_consistency_mismatches_total`` and
  ``shardwise_consistency_mismatched_shards``: the consistency checks this replica ran
  as leader, the shards they found differing between replicas, and how many differed in
  the last one (a group server only; alert on any mismatch).
* ``shardwise_config_num``: the configuration the replica is in (a group) or the latest
  it holds (the controller).
* ``shardwise_shard_keys{shard,state}``, ``shardwise_shard_bytes{shard,state}``,
  ``shardwise_shards{state}``: every shard the group holds; ``pulling`` and ``frozen``
  shards are migrations in flight.
* ``shardwise_transport_events_total{event}``: the transport's counters (connections,
  drops, refusals, timeouts).
* ``process_*``: CPU, memory and file descriptors of the process.

**Threads.** The HTTP server answers on its own thread, but the Raft host and the shard
databases belong to the event loop's thread (SQLite connections refuse other threads).
So a scrape asks the loop for one snapshot and waits for it (at most
:data:`SCRAPE_TIMEOUT_S`); nothing is sampled in the background between scrapes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import start_http_server
from prometheus_client.registry import Collector

from shardwise.errors import ShardwiseError
from shardwise.net.links import Address
from shardwise.net.rpc import CallContext, RawHandler
from shardwise.net.transport import Transport
from shardwise.raft.ready import Role

if TYPE_CHECKING:
    from shardwise.service import ReplicaService

logger = logging.getLogger(__name__)

MAX_REASON_CHARS: Final = 200
"""A halt reason as a label value: enough to say what failed, short enough for any
scraper's label limits."""

SCRAPE_TIMEOUT_S: Final = 2.0
"""How long a scrape waits for the event loop's snapshot before answering without it."""

MAX_SHARD_SERIES: Final = 4096
"""Most shards exported one by one (two series each); past it only the per-state counts,
so a group holding very many shards cannot blow up the scraper's memory."""

LATENCY_BUCKETS_S: Final = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
"""From half a millisecond (a read on an idle loopback group) to the 5 s a request may
wait inside a server (``REQUEST_TIMEOUT_S``) and the controller's long watches."""


@dataclass(frozen=True, slots=True)
class _ShardSample:
    shard: str
    state: str
    keys: int
    bytes: int


@dataclass(frozen=True, slots=True)
class _Sample:
    """Everything a scrape reports, read on the event loop's thread in one go."""

    node_id: str
    group: int
    term: int
    commit: int
    applied: int
    leader: bool
    halted: bool
    config_num: int
    shards: list[_ShardSample] = field(default_factory=list)
    halt_reason: str = ""
    checks: tuple[int, int, int] | None = None
    """Checks run, mismatches found, shards differing in the last check (a group)."""
    transport: dict[str, int] = field(default_factory=dict)


def _sample(service: ReplicaService[Any]) -> _Sample:
    status = service.host.status()
    sm: Any = service.state_machine
    # Duck-typed so the controller and the group servers share one exporter: a group's
    # state machine has ``config`` and ``held()``, the controller's has ``latest``.
    config = getattr(sm, "config", None)
    latest = getattr(sm, "latest", None)
    if config is None and callable(latest):
        config = latest()
    shards: list[_ShardSample] = []
    held = getattr(sm, "held", None)
    if held is not None:
        for shard, record in held():
            store = record.store
            keys = store.count() if store is not None else 0
            size = store.size_bytes() if store is not None else 0
            shards.append(_ShardSample(str(shard), record.state.value, keys, size))
    stats = getattr(service.transport, "stats", None)
    checker = getattr(service, "checker", None)
    checks = None
    if checker is not None:
        last = len(checker.last.mismatches) if checker.last is not None else 0
        checks = (checker.checks_run, checker.mismatches_found, last)
    return _Sample(
        node_id=status.node_id,
        group=service.group,
        term=status.term,
        commit=status.commit,
        applied=status.applied,
        leader=status.role is Role.LEADER,
        halted=status.halted,
        config_num=config.num if config is not None else 0,
        shards=shards,
        transport=stats.as_dict() if stats is not None else {},
        halt_reason=status.halt_reason,
        checks=checks,
    )


def _counter(name: str, doc: str, labels: dict[str, str], value: float) -> CounterMetricFamily:
    family = CounterMetricFamily(name, doc, labels=list(labels))
    family.add_metric(list(labels.values()), value)
    return family


class _ServiceCollector(Collector):
    """Reads the service's state at scrape time (see the module's note on threads)."""

    def __init__(self, service: ReplicaService[Any], loop: asyncio.AbstractEventLoop) -> None:
        self._service = service
        self._loop = loop

    def describe(self) -> list[Metric]:
        # Declared empty so registering does not call collect() (which would wait on the
        # loop from the loop's own thread).
        return []

    def collect(self) -> Iterator[Metric]:
        sample = self._snapshot()
        if sample is None:
            return
        labels = {"node": sample.node_id, "group": str(sample.group)}
        names, values = list(labels), list(labels.values())

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            family = GaugeMetricFamily(name, doc, labels=names)
            family.add_metric(values, value)
            return family

        yield gauge("shardwise_raft_term", "Current Raft term of this replica.", sample.term)
        yield gauge(
            "shardwise_raft_commit_index", "Highest log index known committed.", sample.commit
        )
        yield gauge(
            "shardwise_raft_applied_index",
            "Highest log index applied to the state machine.",
            sample.applied,
        )
        yield gauge("shardwise_raft_is_leader", "1 while this replica leads.", sample.leader)
        yield gauge("shardwise_raft_halted", "1 if the replica stopped on an entry.", sample.halted)
        yield gauge("shardwise_config_num", "Configuration number held.", sample.config_num)
        health = GaugeMetricFamily(
            "shardwise_replica_health",
            "1 for the replica's health (ok, halted) and why it halted.",
            labels=[*names, "health", "reason"],
        )
        state = "halted" if sample.halted else "ok"
        health.add_metric([*values, state, sample.halt_reason[:MAX_REASON_CHARS]], 1)
        yield health
        if sample.checks is not None:
            run, found, last = sample.checks
            yield _counter(
                "shardwise_consistency_checks", "Consistency checks run as leader.", labels, run
            )
            yield _counter(
                "shardwise_consistency_mismatches",
                "Shards the consistency checks found differing between replicas.",
                labels,
                found,
            )
            yield gauge(
                "shardwise_consistency_mismatched_shards",
                "Shards whose replicas differed in the last consistency check.",
                last,
            )

        if sample.shards:
            by_state: dict[str, int] = {}
            for shard in sample.shards:
                by_state[shard.state] = by_state.get(shard.state, 0) + 1
            counts = GaugeMetricFamily(
                "shardwise_shards", "Shards this group holds, by state.", labels=[*names, "state"]
            )
            for state, count in sorted(by_state.items()):
                counts.add_metric([*values, state], count)
            yield counts
            keys = GaugeMetricFamily(
                "shardwise_shard_keys", "Keys in a shard.", labels=[*names, "shard", "state"]
            )
            size = GaugeMetricFamily(
                "shardwise_shard_bytes",
                "Size of a shard's database file.",
                labels=[*names, "shard", "state"],
            )
            for shard in sample.shards[:MAX_SHARD_SERIES]:
                keys.add_metric([*values, shard.shard, shard.state], shard.keys)
                size.add_metric([*values, shard.shard, shard.state], shard.bytes)
            yield keys
            yield size

        if sample.transport:
            events = CounterMetricFamily(
                "shardwise_transport_events",
                "Transport counters: connections, frames, drops, refusals, timeouts.",
                labels=[*names, "event"],
            )
            for event, count in sorted(sample.transport.items()):
                events.add_metric([*values, event], count)
            yield events

    def _snapshot(self) -> _Sample | None:
        if self._loop.is_closed():
            return None

        async def read() -> _Sample:
            return _sample(self._service)

        future = asyncio.run_coroutine_threadsafe(read(), self._loop)
        try:
            return future.result(timeout=SCRAPE_TIMEOUT_S)
        except Exception as exc:  # a stopping service or a busy loop: report what we can
            future.cancel()
            logger.info("metrics: no snapshot of the service: %r", exc)
            return None


class MetricsExporter:
    """The ``/metrics`` endpoint of one service; :meth:`stop` it before the loop ends."""

    def __init__(self, service: ReplicaService[Any], address: Address) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self._service = service
        self._address = address
        self._server: WSGIServer | None = None
        self.requests = Counter(
            "shardwise_rpc_requests",
            "Calls answered by this process, by method and outcome.",
            ["method", "outcome"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "shardwise_rpc_latency_seconds",
            "Time from a call's request decoded to its reply encoded.",
            ["method"],
            buckets=LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        ProcessCollector(registry=self.registry)

    @property
    def address(self) -> Address:
        """Where it listens (the real port when it was asked for port 0)."""
        if self._server is None:
            return self._address
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def start(self) -> None:
        """Start serving; call on the service's event loop thread, after the service's
        handlers are registered (they are wrapped now; later ones are not timed)."""
        loop = asyncio.get_running_loop()
        self.registry.register(_ServiceCollector(self._service, loop))
        transport = self._service.transport
        if isinstance(transport, Transport):
            transport.wrap_handlers(self._timed)
        host, port = self._address
        try:
            self._server, _thread = start_http_server(port, host, registry=self.registry)
        except OSError as exc:
            raise ShardwiseError(f"cannot serve metrics at {host}:{port}: {exc}") from exc

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def _timed(self, method: str, handler: RawHandler) -> RawHandler:
        requests, latency = self.requests, self.latency

        async def timed(body: bytes, context: CallContext) -> bytes:
            started = time.perf_counter()
            outcome = "failed"
            try:
                reply = await handler(body, context)
                outcome = "answered"
                return reply
            except asyncio.CancelledError:
                outcome = "cancelled"
                raise
            finally:
                requests.labels(method, outcome).inc()
                latency.labels(method).observe(time.perf_counter() - started)

        return timed


def start_metrics(service: ReplicaService[Any], address: Address) -> MetricsExporter:
    """Serve ``service``'s metrics at ``address`` (on its loop's thread; see
    :meth:`MetricsExporter.start`)."""
    exporter = MetricsExporter(service, address)
    exporter.start()
    return exporter
