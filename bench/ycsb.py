"""A YCSB-style load generator: scrambled zipfian keys, workloads A/B/C, a load phase and
a timed run phase over any store with an async ``get``/``put``.

The key chooser follows YCSB's ``ScrambledZipfianGenerator``: a zipfian draw (theta 0.99)
over 10^10 items, with YCSB's precomputed zeta, then FNV-1a-64 of the draw modulo the
record count, so the hot keys are scattered over the key space (and over the shards)
rather than packed at its start. Keys are named as YCSB names them with hashed insert
order (``"user" + fnv64(i)``). Draws are precomputed with numpy from a seed, so every
system under test sees the same sequence of keys and operations.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final, Protocol

import numpy as np
import numpy.typing as npt

# --- YCSB's constants (site.ycsb.generator.ScrambledZipfianGenerator, Utils) -----------

ZIPFIAN_THETA: Final = 0.99
ZIPFIAN_ITEMS: Final = 10_000_000_000
"""YCSB draws from a fixed 10^10-item zipfian and folds it onto the records by hashing."""
ZIPFIAN_ZETAN: Final = 26.46902820178302
"""zeta(10^10, 0.99), precomputed by YCSB (summing 10^10 terms here is not an option)."""
FNV_OFFSET_BASIS_64: Final = 0xCBF29CE484222325
FNV_PRIME_64: Final = 1099511628211

SAMPLE_SIZE: Final = 1 << 20
"""Precomputed draws (8 MiB of key indexes); more ops than this in one run reuse them
from the start, which keeps the distribution and only repeats the order."""
VALUE_BYTES: Final = 100
INITIAL_LOG_CAPACITY: Final = 4096
"""Ops a worker's log holds before it doubles (most runs need a few doublings)."""


def fnv64(values: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """YCSB's ``Utils.fnvhash64`` over an array: FNV-1a over the 8 low-first bytes, then
    Java's ``Math.abs`` of the signed result."""
    v = values.astype(np.uint64)
    h = np.full(v.shape, FNV_OFFSET_BASIS_64, dtype=np.uint64)
    for _ in range(8):
        h ^= v & np.uint64(0xFF)
        h *= np.uint64(FNV_PRIME_64)  # wraps modulo 2^64, as Java's long multiply does
        v >>= np.uint64(8)
    return np.abs(h.view(np.int64))


def scrambled_zipfian(records: int, count: int, rng: np.random.Generator) -> npt.NDArray[np.int64]:
    """``count`` record indexes in ``[0, records)``, as YCSB's ScrambledZipfianGenerator."""
    theta = ZIPFIAN_THETA
    items = ZIPFIAN_ITEMS + 1  # YCSB's ZipfianGenerator(0, ITEM_COUNT) spans max - min + 1
    alpha = 1.0 / (1.0 - theta)
    zeta2 = 1.0 + 0.5**theta
    eta = (1.0 - (2.0 / items) ** (1.0 - theta)) / (1.0 - zeta2 / ZIPFIAN_ZETAN)
    u = rng.random(count)
    uz = u * ZIPFIAN_ZETAN
    draws = (items * np.power(eta * u - eta + 1.0, alpha)).astype(np.int64)
    draws = np.where(uz < 1.0 + 0.5**theta, 1, draws)
    draws = np.where(uz < 1.0, 0, draws)
    # Math.abs(Long.MIN_VALUE) stays negative in Java; numpy's % keeps the result in range.
    return fnv64(draws) % records


def key_names(records: int) -> list[str]:
    """YCSB's key for each record index with hashed insert order: ``"user" + fnv64(i)``."""
    return [f"user{h}" for h in fnv64(np.arange(records, dtype=np.int64)).tolist()]


# --- workloads -----------------------------------------------------------------------


@dataclass(frozen=True)
class Workload:
    name: str
    read_fraction: float
    """The rest are updates (puts of an existing key)."""


WORKLOADS: Final = {
    "a": Workload("A", 0.50),  # update heavy
    "b": Workload("B", 0.95),  # read mostly
    "c": Workload("C", 1.00),  # read only
}


class Store(Protocol):
    """What the load generator needs of a system under test. One object per concurrent
    worker; an adapter may share one connection pool between them."""

    async def get(self, key: str) -> str | None: ...

    async def put(self, key: str, value: str) -> None: ...

    async def close(self) -> None: ...


@dataclass
class Plan:
    """The seeded, precomputed choices of a run: which key, and read or update."""

    keys: list[str]
    sample: npt.NDArray[np.int64]
    reads: npt.NDArray[np.bool_]

    @classmethod
    def make(cls, keys: list[str], workload: Workload, seed: int) -> Plan:
        rng = np.random.default_rng(seed)
        sample = scrambled_zipfian(len(keys), SAMPLE_SIZE, rng)
        reads = rng.random(SAMPLE_SIZE) < workload.read_fraction
        return cls(keys, sample, reads)


@dataclass
class OpLog:
    """One worker's completed ops, in preallocated numpy arrays (cheaper to keep and to
    reduce than lists of floats at hundreds of thousands of ops)."""

    start: npt.NDArray[np.float64] = field(default_factory=lambda: np.empty(INITIAL_LOG_CAPACITY))
    latency: npt.NDArray[np.float64] = field(default_factory=lambda: np.empty(INITIAL_LOG_CAPACITY))
    record: npt.NDArray[np.int64] = field(
        default_factory=lambda: np.empty(INITIAL_LOG_CAPACITY, dtype=np.int64)
    )
    n: int = 0
    errors: int = 0

    def add(self, start: float, latency: float, record: int) -> None:
        if self.n == len(self.start):
            grow = len(self.start)
            self.start = np.concatenate([self.start, np.empty(grow)])
            self.latency = np.concatenate([self.latency, np.empty(grow)])
            self.record = np.concatenate([self.record, np.empty(grow, dtype=np.int64)])
        self.start[self.n] = start
        self.latency[self.n] = latency
        self.record[self.n] = record
        self.n += 1


@dataclass
class Ops:
    """All workers' ops of one run, merged: start times (``time.perf_counter``), latencies
    (seconds) and record indexes."""

    start: npt.NDArray[np.float64]
    latency: npt.NDArray[np.float64]
    record: npt.NDArray[np.int64]
    errors: int

    @classmethod
    def merge(cls, logs: Sequence[OpLog]) -> Ops:
        return cls(
            np.concatenate([log.start[: log.n] for log in logs]),
            np.concatenate([log.latency[: log.n] for log in logs]),
            np.concatenate([log.record[: log.n] for log in logs]),
            sum(log.errors for log in logs),
        )

    def where(self, mask: npt.NDArray[np.bool_]) -> Ops:
        return Ops(self.start[mask], self.latency[mask], self.record[mask], 0)

    def __len__(self) -> int:
        return len(self.latency)


def percentile_ms(latencies: npt.NDArray[np.float64], q: float) -> float:
    """The ``q``-th percentile (0-100) in milliseconds; NaN when there is nothing."""
    if len(latencies) == 0:
        return float("nan")
    return float(np.percentile(latencies, q)) * 1000


# --- phases --------------------------------------------------------------------------


async def load(stores: Sequence[Store], keys: list[str], value: str) -> float:
    """Insert every record once, spread over the workers; returns the seconds taken."""
    next_index = iter(range(len(keys)))

    async def worker(store: Store) -> None:
        for i in next_index:  # a shared iterator: each index is taken by one worker
            await store.put(keys[i], value)

    start = time.perf_counter()
    await asyncio.gather(*(worker(s) for s in stores))
    return time.perf_counter() - start


class Stop:
    """When workers stop: at a wall-clock time, after a number of ops, or when told."""

    def __init__(self, seconds: float | None = None, ops: int | None = None) -> None:
        self.deadline = None if seconds is None else time.perf_counter() + seconds
        self.remaining = ops
        self.flag = False

    def take(self) -> bool:
        """True if one more op may start (and counts it)."""
        if self.flag:
            return False
        if self.remaining is not None:
            if self.remaining <= 0:
                return False
            self.remaining -= 1
        return self.deadline is None or time.perf_counter() < self.deadline


async def run(stores: Sequence[Store], plan: Plan, value: str, stop: Stop) -> Ops:
    """Each store is one worker issuing one op at a time until ``stop``. Failed ops are
    counted, not timed: a run with errors is reported as such rather than aborted."""
    size = len(plan.sample)
    stride = size // max(1, len(stores))

    async def worker(store: Store, index: int, log: OpLog) -> None:
        i = index * stride  # workers walk disjoint stretches of the same sample
        keys, sample, reads = plan.keys, plan.sample, plan.reads
        clock = time.perf_counter
        while stop.take():
            j = i % size
            record = int(sample[j])
            t0 = clock()
            try:
                if reads[j]:
                    await store.get(keys[record])
                else:
                    await store.put(keys[record], value)
            except Exception:  # any failure of the system under test counts, none aborts
                log.errors += 1
            else:
                log.add(t0, clock() - t0, record)
            i += 1

    logs = [OpLog() for _ in stores]
    await asyncio.gather(
        *(worker(s, n, log) for n, (s, log) in enumerate(zip(stores, logs, strict=True)))
    )
    return Ops.merge(logs)
