"""Secondary indexes on the cluster: lookups through a global index, a local index and
the distribution column, and a global index built online under a write load.

    python bench/sql_indexes.py                 # 1,000,000 rows
    python bench/sql_indexes.py --quick         # 50,000 rows, shorter phases

shardwise runs as ``bench/sql.py`` starts it: a controller of 3 and 3 groups of 3 on
loopback, fsync on, the default keyspace of 64 hash shards. The table ``people`` is
distributed by ``id``; ``email`` and ``alias`` hold the same values (unique per row), so
the two lookups differ only in their index. Rows are loaded by ``--loaders`` processes
(multi-row INSERTs with bound parameters), then ``alias`` gets a local index (every
shard's SQLite). Then:

1. a steady write load starts (``--writers`` clients, each an UPDATE of one row by
   ``id`` or an INSERT of a new row, back to back) and runs ``--phase`` seconds: its
   latencies before any global index;
2. ``CREATE INDEX by_email ON people (email) WITH (scope = 'global')`` runs while the
   load goes on: the build's time, and the load's latencies during it;
3. the load runs ``--phase`` seconds more with the index public (every write keeps it):
   the steady state of the same write path;
4. with the load stopped, ``--lookups`` point lookups of each kind: by ``email``
   (global index: its shard, then the row's), by ``alias`` (local index: every shard),
   by ``id`` (the distribution column: one shard). Reported: p50/p99 and the shards
   each read (``EXPLAIN ANALYZE`` of one of them).

The index is checked against its table at the end (``testing/index_check.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from peers import start_shardwise
from shardwise.client import Client
from shardwise.net import loop
from shardwise.net.leader import loop_time
from shardwise.net.links import Address
from shardwise.sql.values import SqlValue
from shardwise.testing.index_check import index_problems
from sql import load_average

Row = tuple[SqlValue, ...]

SEED: Final = 20261207
CREATE: Final = (
    "CREATE TABLE people (id INTEGER PRIMARY KEY, email TEXT, alias TEXT, city TEXT, "
    "score INTEGER) WITH (distribution = 'id')"
)
LOCAL_INDEX: Final = "CREATE INDEX by_alias ON people (alias)"
GLOBAL_INDEX: Final = "CREATE INDEX by_email ON people (email) WITH (scope = 'global')"
BATCH: Final = 1_500
LOADERS: Final = 3
IN_FLIGHT: Final = 2
DEADLINE_S: Final = 120.0
BUILD_DEADLINE_S: Final = 3_600.0
QUICK: Final = {"rows": 50_000, "phase": 10.0, "lookups": 200}


def email(i: int) -> str:
    return f"user{i * 7919 % 1_000_003:07d}@example.org"


def rows_of(chunk: int, total: int) -> list[Row]:
    first = chunk * BATCH
    return [
        (i, email(i), email(i), f"city{i % 500}", i % 1000)
        for i in range(first, min(total, first + BATCH))
    ]


def insert_sql(count: int) -> str:
    return "INSERT INTO people VALUES " + ", ".join("(?, ?, ?, ?, ?)" for _ in range(count))


@dataclass(frozen=True)
class LoadJob:
    controllers: dict[str, Address]
    secret: bytes
    chunks: tuple[int, ...]
    total: int


def load_worker(job: LoadJob) -> int:
    return loop.run(_load(job))


async def _load(job: LoadJob) -> int:
    async with Client(job.controllers, job.secret) as client:
        slots = asyncio.Semaphore(IN_FLIGHT)

        async def one(chunk: int) -> int:
            async with slots:
                rows = rows_of(chunk, job.total)
                params = [v for row in rows for v in row]
                result = await client.sql(insert_sql(len(rows)), params, deadline_s=DEADLINE_S)
                return result.rowcount

        return sum(await asyncio.gather(*(one(c) for c in job.chunks)))


async def load(controllers: dict[str, Address], secret: bytes, total: int, loaders: int) -> float:
    count = -(-total // BATCH)
    shares = [tuple(range(n, count, loaders)) for n in range(loaders)]
    jobs = [LoadJob(controllers, secret, share, total) for share in shares if share]
    started = time.monotonic()
    context = multiprocessing.get_context("spawn")
    running = asyncio.get_running_loop()
    with ProcessPoolExecutor(max_workers=len(jobs), mp_context=context) as pool:
        loaded = await asyncio.gather(
            *(running.run_in_executor(pool, load_worker, j) for j in jobs)
        )
    if sum(loaded) != total:
        raise RuntimeError(f"loaded {sum(loaded)} of {total} rows")
    return time.monotonic() - started


@dataclass
class WriteLoad:
    """Writers updating and inserting rows back to back; latencies by phase."""

    client: Client
    writers: int
    total: int
    phase: str = "before"
    latencies: dict[str, list[float]] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    next_id: int = 0

    async def run(self) -> None:
        self.next_id = self.total + 10_000_000
        await asyncio.gather(*(self._writer(random.Random(SEED + n)) for n in range(self.writers)))

    async def _writer(self, rng: random.Random) -> None:
        while not self.stop.is_set():
            if rng.random() < 0.8:
                sql, params = (
                    "UPDATE people SET score = score + 1, city = ? WHERE id = ?",
                    [
                        f"city{rng.randrange(500)}",
                        rng.randrange(self.total),
                    ],
                )
            else:
                self.next_id += 1
                i = self.next_id
                sql, params = insert_sql(1), [i, f"new{i}@example.org", f"new{i}", "new", 0]
            phase, started = self.phase, time.monotonic()
            try:
                await self.client.sql(sql, params, deadline_s=DEADLINE_S)
            except Exception as exc:
                self.errors[type(exc).__name__] = self.errors.get(type(exc).__name__, 0) + 1
                continue
            self.latencies.setdefault(phase, []).append(time.monotonic() - started)


def percentile(values: Sequence[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))] if ordered else float("nan")


async def lookups(client: Client, total: int, count: int) -> dict[str, tuple[float, float, str]]:
    rng = random.Random(SEED)
    kinds = {
        "global index (email)": "SELECT id, city FROM people WHERE email = ?",
        "local index (alias)": "SELECT id, city FROM people WHERE alias = ?",
        "distribution column (id)": "SELECT id, city FROM people WHERE id = ?",
    }
    out = {}
    for name, sql in kinds.items():
        keys = [rng.randrange(total) for _ in range(count)]
        values = [k if "id =" in sql else email(k) for k in keys]
        for value in values[:20]:  # warm up
            await client.sql(sql, [value])
        times = []
        for value, key in zip(values, keys, strict=True):
            started = time.monotonic()
            result = await client.sql(sql, [value])
            times.append(time.monotonic() - started)
            if [r[0] for r in result.rows] != [key]:
                raise RuntimeError(f"{name}: {value!r} answered {result.rows}")
        plan = await client.sql("EXPLAIN ANALYZE " + sql, [values[0]])
        visits = [str(r[0]).strip() for r in plan.rows if "shard(s) read" in str(r[0])]
        out[name] = (statistics.median(times), percentile(times, 0.99), "; ".join(visits))
    return out


async def run(args: argparse.Namespace) -> None:
    before = load_average()
    with tempfile.TemporaryDirectory(prefix="shardwise-bench-idx-") as tmp:
        cluster = await start_shardwise(Path(tmp) / "shardwise")
        try:
            async with Client(cluster.controllers, cluster.secret) as client:
                await client.sql(CREATE)
                load_s = await load(cluster.controllers, cluster.secret, args.rows, args.loaders)
                print(f"loaded {args.rows:,} rows in {load_s:.0f} s", flush=True)
                await client.sql(LOCAL_INDEX, deadline_s=BUILD_DEADLINE_S)
                async with Client(cluster.controllers, cluster.secret) as writer_client:
                    writes = WriteLoad(writer_client, args.writers, args.rows)
                    running = asyncio.ensure_future(writes.run())
                    await asyncio.sleep(args.phase)
                    writes.phase = "during build"
                    started = time.monotonic()
                    await client.sql(GLOBAL_INDEX, deadline_s=BUILD_DEADLINE_S)
                    build_s = time.monotonic() - started
                    print(f"built the global index in {build_s:.0f} s", flush=True)
                    writes.phase = "after (index public)"
                    await asyncio.sleep(args.phase)
                    writes.stop.set()
                    await running
                found = await lookups(client, args.rows, args.lookups)
                config = await client.latest_configuration()
                session = client.sql_session()

                async def read(keyspace: str, sql: str) -> list[list[tuple[Any, ...]]]:
                    return await session.read_every_shard(keyspace, sql, loop_time() + 600, 10**8)

                problems = await index_problems(config, read)
        finally:
            cluster.stop()
    print()
    print(f"# shardwise secondary indexes: {args.rows:,} rows, 3 groups x 3, 64 shards")
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores; load {before} -> {load_average()}"
    )
    print(f"load: {load_s:.0f} s; global index build under load: {build_s:.1f} s")
    print()
    print("| write load phase | writes | p50 ms | p99 ms |")
    print("|---|---:|---:|---:|")
    for phase, values in writes.latencies.items():
        print(
            f"| {phase} | {len(values):,} | {statistics.median(values) * 1e3:.1f} | "
            f"{percentile(values, 0.99) * 1e3:.1f} |"
        )
    print(f"write errors: {writes.errors or 'none'}")
    print()
    print("| lookup | p50 ms | p99 ms | shards read (EXPLAIN ANALYZE) |")
    print("|---|---:|---:|---|")
    for name, (p50, p99, visits) in found.items():
        print(f"| {name} | {p50 * 1e3:.2f} | {p99 * 1e3:.2f} | {visits} |")
    print()
    print(f"index check: {'consistent' if not problems else problems[:5]}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--loaders", type=int, default=LOADERS)
    parser.add_argument("--writers", type=int, default=8, help="clients of the write load")
    parser.add_argument("--phase", type=float, default=30.0, help="seconds before and after")
    parser.add_argument("--lookups", type=int, default=500, help="timed lookups of each kind")
    parser.add_argument("--quick", action="store_true", help="50,000 rows, shorter phases")
    if parser.parse_known_args(argv)[0].quick:
        parser.set_defaults(**QUICK)
    args = parser.parse_args(argv)
    loop.run(run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
