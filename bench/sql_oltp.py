"""Mixed OLTP through the DB-API beside the KV store's YCSB A, one cluster, one run.

The SQL side is pgbench-like: a table ``accounts (id INTEGER PRIMARY KEY, balance
INTEGER, note TEXT)`` distributed by ``id``, loaded with ``Client.copy_rows``; then
``--clients`` DB-API connections (autocommit, each on its own thread, all sessions of
one ``SyncClient``), each running one statement at a time: a point select by ``id``
(50%), an update of one balance by ``id`` (40%), an insert of a new row (10%), keys
drawn from the same scrambled Zipfian as YCSB. The KV side is YCSB A (50% reads, 50%
updates of 100-byte values) with as many concurrent workers on one ``Client``, on the
same cluster just before. Both print ops/s, p50/p99 and the servers' CPU per op;
issue 25's target is the SQL mix at 0.5x YCSB A's throughput or more.

    python bench/sql_oltp.py [--records 20000] [--seconds 10] [--clients 64] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np

import ycsb
from peers import ShardwiseCluster, ShardwiseStore, cpu_seconds, start_shardwise
from shardwise import dbapi
from shardwise.client import Client, SyncClient
from shardwise.net import loop

SEED: Final = 20261208
SELECT_SHARE: Final = 0.5
UPDATE_SHARE: Final = 0.4
"""The rest inserts new rows."""
DEADLINE_S: Final = 30.0
QUICK: Final = {"records": 2_000, "seconds": 2.0, "clients": 16}
CREATE: Final = (
    "CREATE TABLE accounts (id INTEGER PRIMARY KEY, balance INTEGER, note TEXT) "
    "WITH (distribution = 'id')"
)


@dataclass(frozen=True)
class Side:
    name: str
    ops: int
    errors: int
    seconds: float
    latencies: list[float]
    servers_cpu_s: float
    client_cpu_s: float

    @property
    def throughput(self) -> float:
        return self.ops / self.seconds

    def percentile_ms(self, q: float) -> float:
        return float(np.percentile(self.latencies, q)) * 1e3 if self.latencies else float("nan")


async def kv_side(cluster: ShardwiseCluster, records: int, seconds: float, clients: int) -> Side:
    keys = ycsb.key_names(records)
    value = "v" * ycsb.VALUE_BYTES
    stores = await ShardwiseStore.open(cluster.controllers, cluster.secret, clients)
    try:
        await ycsb.load(stores, keys, value)
        plan = ycsb.Plan.make(keys, ycsb.WORKLOADS["a"], SEED)
        cpu0, started = cpu_seconds(cluster.pids), time.perf_counter()
        client0 = time.process_time()
        ops = await ycsb.run(stores, plan, value, ycsb.Stop(seconds=seconds))
        wall = time.perf_counter() - started
        cpu = cpu_seconds(cluster.pids) - cpu0
        client_cpu = time.process_time() - client0
    finally:
        for store in stores:
            await store.close()
    return Side("KV YCSB A", len(ops), ops.errors, wall, list(ops.latency), cpu, client_cpu)


async def load_accounts(cluster: ShardwiseCluster, records: int) -> float:
    async with Client(cluster.controllers, cluster.secret) as client:
        await client.sql(CREATE)
        started = time.perf_counter()
        rows = ((n, 1_000, f"account {n}") for n in range(records))
        await client.copy_rows("accounts", None, rows, deadline_s=DEADLINE_S)
        return time.perf_counter() - started


def sql_side(cluster: ShardwiseCluster, records: int, seconds: float, clients: int) -> Side:
    """``clients`` DB-API connections on threads over one SyncClient, for ``seconds``."""
    client = SyncClient(cluster.controllers, cluster.secret)
    client.start()
    plan = ycsb.Plan.make(ycsb.key_names(records), ycsb.WORKLOADS["a"], SEED + 1)
    rng = np.random.default_rng(SEED)
    kinds = rng.random(len(plan.sample))
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors = [0] * clients
    fresh = iter(range(records, records * 1000))  # (next() of a range iterator: one owner)
    fresh_lock = threading.Lock()
    stop_at = time.perf_counter() + seconds

    def worker(n: int) -> None:
        connection = dbapi.Connection(client.sql_session())
        connection.autocommit = True
        cursor = connection.cursor()
        size = len(plan.sample)
        i = n * (size // clients)
        while time.perf_counter() < stop_at:
            j = i % size
            key, kind = int(plan.sample[j]), kinds[j]
            started = time.perf_counter()
            try:
                if kind < SELECT_SHARE:
                    cursor.execute("SELECT balance, note FROM accounts WHERE id = ?", (key,))
                    cursor.fetchall()
                elif kind < SELECT_SHARE + UPDATE_SHARE:
                    cursor.execute("UPDATE accounts SET balance = balance + 1 WHERE id = ?", (key,))
                else:
                    with fresh_lock:
                        new = next(fresh)
                    cursor.execute("INSERT INTO accounts VALUES (?, ?, ?)", (new, 0, "new"))
            except dbapi.Error:
                errors[n] += 1
            else:
                latencies[n].append(time.perf_counter() - started)
            i += 1
        connection.close()

    cpu0, started = cpu_seconds(cluster.pids), time.perf_counter()
    client0 = time.process_time()
    threads = [threading.Thread(target=worker, args=(n,)) for n in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    cpu = cpu_seconds(cluster.pids) - cpu0
    client_cpu = time.process_time() - client0
    client.close()
    merged = [x for per in latencies for x in per]
    return Side("SQL mix (DB-API)", len(merged), sum(errors), wall, merged, cpu, client_cpu)


def report(args: argparse.Namespace, kv: Side, sql: Side, load_s: float) -> None:
    print(
        f"# mixed OLTP through the DB-API against YCSB A ({time.strftime('%Y-%m-%d')}, "
        f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"uvloop {loop.uses_uvloop()})\n"
    )
    print(
        f"{args.records:,} records/rows, {args.clients} concurrent clients, {args.seconds:g} s "
        f"each; the accounts table loaded by copy_rows in {load_s:.1f} s\n"
    )
    print(
        "| workload | ops/s | p50 ms | p99 ms | errors | servers' CPU per op (us) "
        "| the client's CPU per op (us) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for side in (kv, sql):
        print(
            f"| {side.name} | {side.throughput:,.0f} | {side.percentile_ms(50):.2f} "
            f"| {side.percentile_ms(99):.2f} | {side.errors} "
            f"| {side.servers_cpu_s / max(1, side.ops) * 1e6:,.0f} "
            f"| {side.client_cpu_s / max(1, side.ops) * 1e6:,.0f} |"
        )
    ratio = sql.throughput / kv.throughput
    print(
        f"\nthe SQL mix at 0.5x YCSB A's throughput or more: {ratio:.2f}x, "
        + ("met" if ratio >= 0.5 else "NOT met")
    )
    print(f"(median SQL latency by the client: {statistics.median(sql.latencies) * 1e3:.2f} ms)")


async def run(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="shardwise-bench-oltp-") as tmp:
        cluster = await start_shardwise(Path(tmp) / "shardwise")
        try:
            kv = await kv_side(cluster, args.records, args.seconds, args.clients)
            load_s = await load_accounts(cluster, args.records)
            sql = await asyncio.to_thread(
                sql_side, cluster, args.records, args.seconds, args.clients
            )
        finally:
            cluster.stop()
    report(args, kv, sql, load_s)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--records", type=int, default=20_000, help="keys, and table rows")
    parser.add_argument("--seconds", type=float, default=10.0, help="each side's run")
    parser.add_argument("--clients", type=int, default=64, help="concurrent clients")
    parser.add_argument("--quick", action="store_true", help="smoke run")
    given = list(sys.argv[1:] if argv is None else argv)
    if parser.parse_known_args(given)[0].quick:
        parser.set_defaults(**QUICK)
    args = parser.parse_args(given)
    if args.records < 1 or args.seconds <= 0 or args.clients < 1:
        parser.error("--records, --seconds and --clients must be positive")
    loop.run(run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
