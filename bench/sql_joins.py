"""Joins on the cluster against one SQLite file: a small star schema, four joins, both timed.

    python bench/sql_joins.py                  # 100,000 sales rows, 5 timed runs per query
    python bench/sql_joins.py --quick          # 10,000 sales rows, 3 timed runs
    python bench/sql_joins.py --sales 1000000  # the size the joins issue names

shardwise runs as ``bench/sql.py`` starts it: a controller of 3 and 3 groups of 3 on
loopback, fsync on, the default keyspace of 64 hash shards. The schema:

* ``sales`` (the fact table, ``--sales`` rows), distributed by ``customer_id``;
* ``customers`` (a tenth of the sales), distributed by ``id``: co-located with sales;
* ``products`` (1,000 rows), a reference table (a copy on every shard): the star join
  runs inside the shards; ``products_by_id``, the same rows distributed by ``id``, makes
  the same join a broadcast join (the 1,000 rows shipped to every shard of sales);
* ``stores`` (a fifth of the sales), distributed by ``code``, a TEXT column, and joined on
  ``id``: neither side co-located nor small. A repartition join once both tables hold
  more than one step's rows (250,000), a coordinator join below that.

Rows are loaded through ``Client.sql`` (multi-row INSERTs with bound parameters, a few
in flight) and into one SQLite file with ``executemany``, then ``ANALYZE`` counts them
(the planner chooses by the counts). Each query runs once on both to warm up, then
``--repeat`` times; the answers are compared. Reported: median times, their ratio, the
plan, the rows the shards sent to the coordinator and the rows sent to the shards (a
broadcast join's).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import random
import sqlite3
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from peers import start_shardwise
from shardwise.client import Client
from shardwise.net import loop
from shardwise.sql.values import SqlValue
from sql import Measured, Query, load_average, measure

Row = tuple[SqlValue, ...]

SEED: Final = 20261207
PRODUCTS: Final = 1_000
REGIONS: Final = 12
CATEGORIES: Final = 20
BATCH: Final = 400
IN_FLIGHT: Final = 4

SCHEMA: Final = {
    "sales": (
        "id INTEGER, customer_id INTEGER, product_id INTEGER, store_id INTEGER, amount INTEGER",
        "customer_id",
    ),
    "customers": ("id INTEGER PRIMARY KEY, name TEXT, region TEXT", "id"),
    "products": ("id INTEGER PRIMARY KEY, category TEXT, price INTEGER", ""),
    "products_by_id": ("id INTEGER PRIMARY KEY, category TEXT, price INTEGER", "id"),
    "stores": ("code TEXT PRIMARY KEY, id INTEGER, city TEXT", "code"),
}


def make_rows(sales: int) -> dict[str, list[Row]]:
    rng = random.Random(SEED)
    customers = max(10, sales // 10)
    stores = max(10, sales // 5)
    products: list[Row] = [
        (i, f"k{rng.randrange(CATEGORIES):02d}", rng.randrange(1, 500)) for i in range(PRODUCTS)
    ]
    return {
        "customers": [(i, f"name{i}", f"r{rng.randrange(REGIONS):02d}") for i in range(customers)],
        "products": products,
        "products_by_id": products,
        "stores": [(f"s{i:07d}", i, f"city{rng.randrange(50)}") for i in range(stores)],
        "sales": [
            (
                i,
                rng.randrange(customers),
                rng.randrange(PRODUCTS),
                rng.randrange(stores),
                rng.randrange(1, 1000),
            )
            for i in range(sales)
        ],
    }


def queries() -> list[Query]:
    return [
        Query(
            "co-located join, grouped",
            "SELECT c.region, count(*), sum(s.amount) FROM customers c "
            "JOIN sales s ON s.customer_id = c.id GROUP BY c.region",
        ),
        Query(
            "star join with a 1,000-row reference table",
            "SELECT p.category, sum(s.amount * p.price) FROM sales s "
            "JOIN products p ON p.id = s.product_id GROUP BY p.category",
        ),
        Query(
            "the same star join, the dimension distributed",
            "SELECT p.category, sum(s.amount * p.price) FROM sales s "
            "JOIN products_by_id p ON p.id = s.product_id GROUP BY p.category",
        ),
        Query(
            "join on a column neither side is distributed by",
            "SELECT st.city, count(*) FROM sales s JOIN stores st ON st.id = s.store_id "
            "WHERE s.amount > 900 GROUP BY st.city",
        ),
        Query(
            "top-10 over a co-located join",
            "SELECT c.name, s.id, s.amount FROM customers c JOIN sales s ON s.customer_id = c.id "
            "ORDER BY s.amount DESC, s.id LIMIT 10",
            ordered=True,
        ),
    ]


async def load_cluster(client: Client, data: dict[str, list[Row]]) -> float:
    started = time.perf_counter()
    for name, (columns, key) in SCHEMA.items():
        placement = f"distribution = '{key}'" if key else "reference = true"
        await client.sql(f"CREATE TABLE {name} ({columns}) WITH ({placement})")
    for name, rows in data.items():
        width = len(rows[0])
        pending = [rows[i : i + BATCH] for i in range(0, len(rows), BATCH)]

        async def worker(
            pending: list[list[Row]] = pending, width: int = width, name: str = name
        ) -> None:
            while pending:
                chunk = pending.pop()
                marks = ", ".join(
                    "(" + ", ".join(f"${width * r + c + 1}" for c in range(width)) + ")"
                    for r in range(len(chunk))
                )
                params = [value for row in chunk for value in row]
                await client.sql(f"INSERT INTO {name} VALUES {marks}", params, deadline_s=120.0)

        # A reference table's every write spans every shard: its writers would only
        # take turns, so it loads with one in flight.
        in_flight = IN_FLIGHT if SCHEMA[name][1] else 1
        await asyncio.gather(*(worker() for _ in range(in_flight)))
    return time.perf_counter() - started


def load_reference(path: Path, data: dict[str, list[Row]]) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA cache_size = -1000000")
    conn.execute("BEGIN")
    for name, (columns, _) in SCHEMA.items():
        conn.execute(f"CREATE TABLE {name} ({columns})")
        rows = data[name]
        conn.executemany(f"INSERT INTO {name} VALUES ({', '.join('?' * len(rows[0]))})", rows)
    conn.execute("COMMIT")
    return conn


def print_report(
    args: argparse.Namespace, loaded_s: float, results: list[Measured], loads: tuple[str, str]
) -> None:
    print(
        f"# join benchmark ({time.strftime('%Y-%m-%d')}, {platform.machine()}, "
        f"{os.cpu_count()} CPUs, Python {platform.python_version()}, SQLite "
        f"{sqlite3.sqlite_version})\n"
    )
    print(f"load average before / after: {loads[0]} / {loads[1]}\n")
    sizes = make_sizes(args.sales)
    print(
        "tables: "
        + ", ".join(f"{name} {rows:,}" for name, rows in sizes.items())
        + f"; loaded in {loaded_s:.0f} s; median of {args.repeat} runs after a warm-up\n"
    )
    print(
        "| query | plan | rows | shardwise (ms) | SQLite (ms) | shardwise / SQLite "
        "| rows sent to the coordinator | rows sent to the shards | servers' CPU (ms) "
        "| coordinator CPU (ms) |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for m in results:
        cluster_ms = sorted(m.cluster_s)[len(m.cluster_s) // 2] * 1e3
        reference_ms = sorted(m.reference_s)[len(m.reference_s) // 2] * 1e3
        print(
            f"| {m.query.name} | {m.plan.removeprefix('Distributed ')} | {m.rows:,} "
            f"| {cluster_ms:,.1f} | {reference_ms:,.1f} | {m.ratio:.2f} "
            f"| {sum(m.shipped.values()):,} | {m.sent:,} | {m.servers_cpu_s * 1e3:,.0f} "
            f"| {m.coordinator_cpu_s * 1e3:,.0f} |"
        )


def make_sizes(sales: int) -> dict[str, int]:
    return {
        "sales": sales,
        "customers": max(10, sales // 10),
        "products": PRODUCTS,
        "products_by_id": PRODUCTS,
        "stores": max(10, sales // 5),
    }


async def run(args: argparse.Namespace) -> None:
    before = load_average()
    data = make_rows(args.sales)
    with tempfile.TemporaryDirectory(prefix="shardwise-bench-joins-") as tmp:
        base = Path(tmp)
        cluster = await start_shardwise(base / "shardwise")
        try:
            async with Client(cluster.controllers, cluster.secret) as client:
                loaded_s = await load_cluster(client, data)
                await client.sql("ANALYZE", deadline_s=120.0)
                reference = load_reference(base / "single.sqlite", data)
                try:
                    results = [
                        await measure(client, reference, cluster.pids, q, args.repeat)
                        for q in queries()
                    ]
                finally:
                    reference.close()
        finally:
            cluster.stop()
    print_report(args, loaded_s, results, (before, load_average()))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sales", type=int, default=100_000, help="rows in the fact table")
    parser.add_argument("--repeat", type=int, default=5, help="timed runs per query")
    parser.add_argument("--quick", action="store_true", help="10,000 sales rows, 3 runs")
    args = parser.parse_args(argv)
    if args.quick:
        args.sales, args.repeat = min(args.sales, 10_000), min(args.repeat, 3)
    loop.run(run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
