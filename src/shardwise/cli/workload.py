"""``shardwise bench``: a quick mixed read/write workload against a running cluster.

A smoke-sized measurement (seconds, not minutes) of what this cluster does on this
machine: ``concurrency`` workers share ``ops`` operations, each a linearizable ``get``
or a ``put`` of a random key among ``keys`` (``bench:<n>``), and the latency of each
is recorded. The full comparisons with other stores stay in ``bench/``.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field
from typing import Final

from shardwise.client import MAX_WRITES_IN_FLIGHT, Client
from shardwise.errors import ClusterConfigError

MAX_OPS: Final = 1_000_000
MAX_CONCURRENCY: Final = MAX_WRITES_IN_FLIGHT
MAX_KEYS: Final = 10_000_000
MAX_VALUE_BYTES: Final = 64 * 1024


@dataclass(frozen=True)
class BenchOptions:
    ops: int = 2000
    concurrency: int = 16
    read_ratio: float = 0.5
    keys: int = 1000
    value_size: int = 100
    prefix: str = "bench:"
    seed: int = 0

    def check(self) -> None:
        if not 1 <= self.ops <= MAX_OPS:
            raise ClusterConfigError(f"--ops must be in [1, {MAX_OPS}]")
        if not 1 <= self.concurrency <= MAX_CONCURRENCY:
            raise ClusterConfigError(f"--concurrency must be in [1, {MAX_CONCURRENCY}]")
        if not 0.0 <= self.read_ratio <= 1.0:
            raise ClusterConfigError("--read-ratio must be in [0, 1]")
        if not 1 <= self.keys <= MAX_KEYS:
            raise ClusterConfigError(f"--keys must be in [1, {MAX_KEYS}]")
        if not 0 <= self.value_size <= MAX_VALUE_BYTES:
            raise ClusterConfigError(f"--value-size must be in [0, {MAX_VALUE_BYTES}]")


@dataclass
class BenchResult:
    seconds: float = 0.0
    latencies: dict[str, list[float]] = field(default_factory=lambda: {"get": [], "put": []})

    @property
    def total(self) -> int:
        return sum(len(v) for v in self.latencies.values())

    def percentile(self, op: str, q: float) -> float:
        values = sorted(self.latencies[op])
        if not values:
            return 0.0
        return values[min(len(values) - 1, int(q * len(values)))]


async def run_bench(client: Client, options: BenchOptions) -> BenchResult:
    options.check()
    rng = random.Random(options.seed)
    value = "x" * options.value_size
    plan = [
        ("get" if rng.random() < options.read_ratio else "put", rng.randrange(options.keys))
        for _ in range(options.ops)
    ]
    result = BenchResult()
    position = 0

    async def worker() -> None:
        nonlocal position
        while position < len(plan):
            op, n = plan[position]
            position += 1  # one event loop: no other worker runs between these lines
            key = f"{options.prefix}{n}"
            started = time.perf_counter()
            if op == "get":
                await client.get(key)
            else:
                await client.put(key, value)
            result.latencies[op].append(time.perf_counter() - started)

    await client.get(f"{options.prefix}0")  # the configuration fetch is not measured
    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(options.concurrency)))
    result.seconds = time.perf_counter() - started
    return result
