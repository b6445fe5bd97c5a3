"""Distributed SQL against one SQLite file: the same rows, four queries, both timed.

    python bench/sql.py                        # 1,000,000 rows, 5 timed runs per query
    python bench/sql.py --quick                # 50,000 rows, 3 timed runs
    python bench/sql.py --rows 200000 --repeat 7
    python bench/sql.py --indexes [--quick]    # the index section: bench/sql_indexes.py

shardwise runs as ``bench/kv.py`` starts it (``peers.start_shardwise``): a controller of 3
and 3 groups of 3 servers on loopback, fsync on. The table is in the default keyspace (64
hash shards), distributed by ``id``. Its rows are loaded through ``Client.sql``:
multi-row INSERTs of ``--batch`` rows with bound parameters (each shard's share of a
statement is one entry of its group's log), from ``--loaders`` processes running
``--in-flight`` statements each: planning an INSERT (sqlglot parses every bound value)
costs the client about four times the CPU the 12 servers spend applying it, so one
process cannot keep the cluster busy. The same
rows (one seed) go into one SQLite file with ``executemany``; its page cache holds the
whole file, so its scans, like the shards', read memory.

Queries: a grouped aggregation over all rows (a non-distribution column, so partial
aggregates merged at the coordinator), a top-10 by a column, a point query by the
distribution column, and a selective filter (about 1 row in 10,000, no index on either
side). Each runs once on both to warm up, then ``--repeat`` times, alternating; the
cluster's answer is checked against SQLite's. Reported per query: median wall times and
their ratio, the shards touched and the rows each sent to the coordinator
(``client.last_rows_shipped``), and CPU per run of the 12 server processes (/proc) and of
the coordinator (this process: planning and merging).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import multiprocessing
import os
import platform
import random
import re
import sqlite3
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from peers import ShardwiseCluster, cpu_seconds, start_shardwise
from shardwise.client import Client
from shardwise.net import loop
from shardwise.net.links import Address
from shardwise.sql.params import MAX_PARAMS
from shardwise.sql.values import SqlValue

Row = tuple[SqlValue, ...]

SEED: Final = 20261128
TABLE: Final = "events"
CREATE: Final = (
    f"CREATE TABLE {TABLE} (id INTEGER PRIMARY KEY, category TEXT, amount INTEGER, "
    "score REAL) WITH (distribution = 'id')"
)
REFERENCE_CREATE: Final = (
    f"CREATE TABLE {TABLE} (id INTEGER PRIMARY KEY, category TEXT, amount INTEGER, score REAL)"
)
COLUMNS: Final = 4
"""Only the columns the queries use: the client parses every bound value of an INSERT."""
CATEGORIES: Final = 100
"""Groups of the grouped aggregation: every shard holds rows of each."""
AMOUNTS: Final = 1_000_000
SCORE_SCALE: Final = 1_000.0
SELECTIVE_WIDTH: Final = 99
"""The selective filter's range of ``amount``: 100 of AMOUNTS values, 1 row in 10,000."""
TOP_K: Final = 10

BATCH_ROWS: Final = 5_000
"""Rows per INSERT (MAX_PARAMS allows 8,191 of 4 columns): ~80 rows per shard batch."""
LOADERS: Final = 3
"""Loader processes: planning is the load's bottleneck (see the module's docstring)."""
IN_FLIGHT: Final = 2
"""INSERTs in flight per loader: one is planned while the other's shards apply it."""
LOAD_DEADLINE_S: Final = 120.0
"""One INSERT's deadline (planning included) on a loaded machine."""
QUERY_DEADLINE_S: Final = 60.0
REFERENCE_CACHE_KIB: Final = 1 << 20
"""SQLite's page cache for the reference file: 1 GiB, more than the file."""
REL_TOLERANCE: Final = 1e-9
"""Floats compared between the two (sums of REALs added in another order)."""

QUICK: Final = {"rows": 50_000, "repeat": 3}
"""The defaults of ``--quick``."""


# --- the rows --------------------------------------------------------------------------


def chunk_rows(chunk: int, batch: int, total: int) -> list[Row]:
    """Rows ``chunk * batch`` .. of ``total``, the same in every process: each chunk has
    its own seeded generator."""
    rng = random.Random(f"{SEED}/{chunk}")
    first = chunk * batch
    return [
        (
            i,
            f"c{rng.randrange(CATEGORIES):02d}",
            rng.randrange(AMOUNTS),
            rng.random() * SCORE_SCALE,
        )
        for i in range(first, min(first + batch, total))
    ]


def chunks(total: int, batch: int) -> int:
    return math.ceil(total / batch)


def insert_sql(rows: int) -> str:
    """``INSERT ... VALUES ($1, ..., $4), ...``: ``$n`` rather than ``?``, which the
    planner numbers with a second parse."""
    marks = (
        "(" + ", ".join(f"${COLUMNS * r + c + 1}" for c in range(COLUMNS)) + ")"
        for r in range(rows)
    )
    return f"INSERT INTO {TABLE} VALUES " + ", ".join(marks)


# --- loading the cluster (in loader processes) ------------------------------------------


@dataclass(frozen=True)
class LoadReport:
    rows: int
    statements: int
    started: float
    """``time.monotonic()`` (system-wide on Linux) when the first INSERT began."""
    ended: float
    cpu_s: float


@dataclass(frozen=True)
class LoadJob:
    """What one loader process INSERTs (pickled to it: no secret in any argv)."""

    controllers: dict[str, Address]
    secret: bytes
    chunks: tuple[int, ...]
    batch: int
    total: int
    in_flight: int
    copy: bool = True
    """``Client.copy_rows`` over all the chunks (else one INSERT of parameters each)."""


def load_worker(job: LoadJob) -> LoadReport:
    """A loader process: INSERT the job's chunks, ``in_flight`` at a time."""
    return loop.run(_load(job))


async def _load(job: LoadJob) -> LoadReport:
    if job.copy:
        return await _copy(job)
    async with Client(job.controllers, job.secret) as client:
        slots = asyncio.Semaphore(job.in_flight)
        loaded = 0

        async def one(chunk: int) -> None:
            nonlocal loaded
            async with slots:
                rows = chunk_rows(chunk, job.batch, job.total)
                params = [value for row in rows for value in row]
                result = await client.sql(insert_sql(len(rows)), params, deadline_s=LOAD_DEADLINE_S)
            if result.rowcount != len(rows):
                raise RuntimeError(f"chunk {chunk}: {result.rowcount} of {len(rows)} inserted")
            loaded += len(rows)

        cpu0, started = time.process_time(), time.monotonic()
        await asyncio.gather(*(one(c) for c in job.chunks))
        ended = time.monotonic()
        return LoadReport(loaded, len(job.chunks), started, ended, time.process_time() - cpu0)


async def _copy(job: LoadJob) -> LoadReport:
    """The job's rows through ``Client.copy_rows`` (its own chunks, pipelined)."""
    async with Client(job.controllers, job.secret) as client:
        rows = (row for c in job.chunks for row in chunk_rows(c, job.batch, job.total))
        cpu0, started = time.process_time(), time.monotonic()
        loaded = await client.copy_rows(TABLE, None, rows, deadline_s=LOAD_DEADLINE_S)
        ended = time.monotonic()
        return LoadReport(loaded, 0, started, ended, time.process_time() - cpu0)


@dataclass(frozen=True)
class Load:
    rows: int
    statements: int
    seconds: float
    servers_cpu_s: float
    loaders_cpu_s: float
    reference_s: float


async def load_cluster(
    cluster: ShardwiseCluster,
    total: int,
    batch: int,
    loaders: int,
    in_flight: int,
    *,
    copy: bool,
) -> tuple[float, float, float, int]:
    """(seconds, servers' CPU, loaders' CPU, statements) of loading ``total`` rows."""
    count = chunks(total, batch)
    shares = [list(range(n, count, loaders)) for n in range(loaders)]
    context = multiprocessing.get_context("spawn")  # not fork: this process runs a loop
    running = asyncio.get_running_loop()
    cpu0 = cpu_seconds(cluster.pids)
    jobs = [
        LoadJob(cluster.controllers, cluster.secret, tuple(share), batch, total, in_flight, copy)
        for share in shares
        if share
    ]
    with ProcessPoolExecutor(max_workers=len(jobs), mp_context=context) as pool:
        reports = await asyncio.gather(
            *(running.run_in_executor(pool, load_worker, job) for job in jobs)
        )
    servers_cpu = cpu_seconds(cluster.pids) - cpu0
    loaded = sum(r.rows for r in reports)
    if loaded != total:
        raise RuntimeError(f"loaded {loaded} rows of {total}")
    seconds = max(r.ended for r in reports) - min(r.started for r in reports)
    return seconds, servers_cpu, sum(r.cpu_s for r in reports), sum(r.statements for r in reports)


def load_reference(path: Path, total: int, batch: int) -> tuple[sqlite3.Connection, float]:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute(f"PRAGMA cache_size=-{REFERENCE_CACHE_KIB}")
    conn.execute(REFERENCE_CREATE)
    started = time.perf_counter()
    conn.execute("BEGIN")
    for chunk in range(chunks(total, batch)):
        conn.executemany(
            f"INSERT INTO {TABLE} VALUES (?, ?, ?, ?)", chunk_rows(chunk, batch, total)
        )
    conn.execute("COMMIT")
    return conn, time.perf_counter() - started


# --- the queries -----------------------------------------------------------------------


@dataclass(frozen=True)
class Query:
    name: str
    sql: str
    params: tuple[SqlValue, ...] = ()
    ordered: bool = False

    @property
    def sqlite_sql(self) -> str:
        """The same text for SQLite: ``$n`` as ``?n`` (SQLite's numbered parameters)."""
        return re.sub(r"\$(\d+)", r"?\1", self.sql)


def make_queries(total: int) -> list[Query]:
    rng = random.Random(SEED)
    low = rng.randrange(AMOUNTS - SELECTIVE_WIDTH)
    return [
        Query(
            "grouped aggregation",
            f"SELECT category, count(*), sum(amount), avg(score) FROM {TABLE} GROUP BY category",
        ),
        Query(
            f"top-{TOP_K} by a column",
            f"SELECT id, category, score FROM {TABLE} ORDER BY score DESC LIMIT {TOP_K}",
            ordered=True,
        ),
        Query(
            "point query by the distribution column",
            f"SELECT id, category, amount, score FROM {TABLE} WHERE id = $1",
            (rng.randrange(total),),
        ),
        Query(
            "selective filter",
            f"SELECT id, amount FROM {TABLE} WHERE amount BETWEEN $1 AND $2",
            (low, low + SELECTIVE_WIDTH),
        ),
    ]


@dataclass
class Measured:
    query: Query
    cluster_s: list[float]
    reference_s: list[float]
    shipped: dict[int, int]
    servers_cpu_s: float
    coordinator_cpu_s: float
    rows: int
    plan: str
    sent: int = 0
    """Rows sent to the shards (a broadcast join's shipped rows, once per shard)."""

    @property
    def ratio(self) -> float:
        return statistics.median(self.cluster_s) / statistics.median(self.reference_s)


def _same(a: SqlValue, b: SqlValue) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=REL_TOLERANCE)
    return type(a) is type(b) and a == b


def check_same(query: Query, got: Sequence[Row], want: Sequence[Row]) -> None:
    left, right = list(got), list(want)
    if not query.ordered:
        left.sort(key=repr)
        right.sort(key=repr)
    same = len(left) == len(right) and all(
        len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
        for a, b in zip(left, right, strict=True)
    )
    if not same:
        raise AssertionError(
            f"{query.name}: the cluster answered {len(left)} rows, SQLite {len(right)}; "
            f"first: {left[:3]!r} against {right[:3]!r}"
        )


async def measure(
    client: Client, reference: sqlite3.Connection, pids: list[int], query: Query, repeat: int
) -> Measured:
    explained = await client.sql(f"EXPLAIN {query.sql}", list(query.params))
    plan = str(explained.rows[0][0]).split(" of ")[0] if explained.rows else "?"
    cluster_s: list[float] = []
    reference_s: list[float] = []
    shipped: dict[int, int] = {}
    sent = 0
    cpu_servers = cpu_coordinator = 0.0
    want: list[Row] = []
    for run in range(repeat + 1):  # run 0 warms both up and is not counted
        client.last_rows_shipped = {}
        client.last_rows_sent = 0
        servers0, coordinator0 = cpu_seconds(pids), time.process_time()
        started = time.perf_counter()
        got = (await client.sql(query.sql, list(query.params), deadline_s=QUERY_DEADLINE_S)).rows
        elapsed = time.perf_counter() - started
        coordinator, servers = time.process_time() - coordinator0, cpu_seconds(pids) - servers0
        started = time.perf_counter()
        want = reference.execute(query.sqlite_sql, query.params).fetchall()
        reference_elapsed = time.perf_counter() - started
        check_same(query, got, want)
        if run:
            cluster_s.append(elapsed)
            reference_s.append(reference_elapsed)
            cpu_servers += servers
            cpu_coordinator += coordinator
            shipped = dict(client.last_rows_shipped)
            sent = client.last_rows_sent
    return Measured(
        query, cluster_s, reference_s, shipped, cpu_servers / repeat, cpu_coordinator / repeat,
        len(want), plan, sent,
    )  # fmt: skip


# --- the report ------------------------------------------------------------------------


def shipped_summary(shipped: dict[int, int]) -> str:
    """Rows per shard, grouped: "10 from 64 shards", or "shard 17: 1"."""
    if len(shipped) == 1:
        ((shard, rows),) = shipped.items()
        return f"shard {shard}: {rows:,}"
    counts = Counter(shipped.values())
    return "; ".join(f"{rows:,} from {n}" for rows, n in sorted(counts.items(), reverse=True))


def print_report(
    args: argparse.Namespace, load: Load, results: list[Measured], loads: tuple[str, str]
) -> None:
    print(
        f"# distributed SQL benchmark ({time.strftime('%Y-%m-%d')}, {platform.machine()}, "
        f"{os.cpu_count()} CPUs, Python {platform.python_version()}, SQLite "
        f"{sqlite3.sqlite_version}, uvloop {loop.uses_uvloop()})\n"
    )
    print(f"load average before / after: {loads[0]} / {loads[1]}\n")
    print(
        f"{args.rows:,} rows in table {TABLE} (64 shards over 3 groups of 3, distributed by "
        f"id) and in one SQLite file; median of {args.repeat} runs after a warm-up\n"
    )
    how = (
        f"Client.copy_rows from {args.loaders} process(es)"
        if args.load == "copy"
        else f"{load.statements:,} INSERTs of {args.batch:,} rows from {args.loaders} "
        f"processes x {args.in_flight} in flight"
    )
    rate = load.rows / load.seconds
    print(
        f"load: shardwise {load.seconds:.1f} s ({rate:,.0f} rows/s; {how}; CPU: servers "
        f"{load.servers_cpu_s:.1f} s = {load.servers_cpu_s / load.rows * 1e6:.1f} us a row, "
        f"loaders {load.loaders_cpu_s:.1f} s = {load.loaders_cpu_s / load.rows * 1e6:.1f} us "
        f"a row); SQLite {load.reference_s:.1f} s "
        f"({load.rows / load.reference_s:,.0f} rows/s, executemany in one transaction)\n"
    )
    print(
        "| query | rows | shardwise (ms) | SQLite (ms) | shardwise / SQLite | shards "
        "| rows sent to the coordinator | rows sent per shard | servers' CPU (ms) "
        "| coordinator CPU (ms) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---|---:|---:|")
    for m in results:
        print(
            f"| {m.query.name} | {m.rows:,} | {statistics.median(m.cluster_s) * 1e3:,.1f} "
            f"| {statistics.median(m.reference_s) * 1e3:,.1f} | {m.ratio:.2f} "
            f"| {len(m.shipped)} | {sum(m.shipped.values()):,} | {shipped_summary(m.shipped)} "
            f"| {m.servers_cpu_s * 1e3:,.0f} | {m.coordinator_cpu_s * 1e3:,.0f} |"
        )
    print("\nplans (EXPLAIN's first line) and rows sent, by shard:\n")
    for m in results:
        by_shard = " ".join(f"{s}:{n}" for s, n in sorted(m.shipped.items()))
        print(f"- {m.query.name}: {m.plan}; {by_shard}")
    grouped, top, point, _ = results
    print("\ntargets:\n")
    print(
        f"- full-scan aggregation within 1.5x of single SQLite: {grouped.ratio:.2f}x, "
        + ("met" if grouped.ratio <= 1.5 else "NOT met")
    )
    most = max(top.shipped.values(), default=0)
    print(
        f"- top-k ships at most k rows per shard: at most {most} (k = {TOP_K}), "
        + ("met" if most <= TOP_K else "NOT met")
    )
    print(
        f"- the point query touches one shard: {len(point.shipped)}, "
        + ("met" if len(point.shipped) == 1 else "NOT met")
    )
    print("\nissue 25's targets:\n")
    if args.load == "copy" and args.loaders == 1:
        bound = load.servers_cpu_s > load.loaders_cpu_s
        print(
            f"- bulk load from one client process at 50,000 rows/s or more, the servers the "
            f"bottleneck: {rate:,.0f} rows/s, "
            + ("met" if rate >= 50_000 else "NOT met")
            + f"; servers' CPU {load.servers_cpu_s / load.loaders_cpu_s:.1f}x the client's, "
            + ("met" if bound else "NOT met")
        )
    point_ms = statistics.median(point.cluster_s) * 1e3
    print(
        f"- point query p50 at most 1.5 ms and 15x single SQLite: {point_ms:.2f} ms, "
        f"{point.ratio:.1f}x: " + ("met" if point_ms <= 1.5 and point.ratio <= 15 else "NOT met")
    )
    for m in (grouped, top, results[3]):
        print(
            f"- {m.query.name.split(':')[0]} over every shard within 2x single SQLite: "
            f"{m.ratio:.2f}x, " + ("met" if m.ratio <= 2 else "NOT met")
        )


# --- the run ---------------------------------------------------------------------------


def load_average() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


async def run(args: argparse.Namespace) -> None:
    before = load_average()
    with tempfile.TemporaryDirectory(prefix="shardwise-bench-sql-") as tmp:
        base = Path(tmp)
        cluster = await start_shardwise(base / "shardwise")
        try:
            async with Client(cluster.controllers, cluster.secret) as client:
                await client.sql(CREATE)
                seconds, servers_cpu, loaders_cpu, statements = await load_cluster(
                    cluster,
                    args.rows,
                    args.batch,
                    args.loaders,
                    args.in_flight,
                    copy=args.load == "copy",
                )
                reference, reference_s = load_reference(
                    base / "single.sqlite", args.rows, args.batch
                )
                load = Load(args.rows, statements, seconds, servers_cpu, loaders_cpu, reference_s)
                try:
                    results = [
                        await measure(client, reference, cluster.pids, q, args.repeat)
                        for q in make_queries(args.rows)
                    ]
                finally:
                    reference.close()
        finally:
            cluster.stop()
    print_report(args, load, results, (before, load_average()))


def main(argv: Sequence[str] | None = None) -> int:
    given = list(sys.argv[1:] if argv is None else argv)
    if "--indexes" in given:
        # Its own script (a 1M-row load, then a build under load: about 20 minutes), run
        # from here too; the rest of the flags are its own.
        from sql_indexes import main as indexes  # noqa: PLC0415 - it imports this module

        return indexes([flag for flag in given if flag != "--indexes"])
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--indexes", action="store_true", help="run the index section instead")
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows in the table")
    parser.add_argument("--repeat", type=int, default=5, help="timed runs per query")
    parser.add_argument(
        "--batch", type=int, default=BATCH_ROWS, help="rows per INSERT while loading"
    )
    parser.add_argument(
        "--load",
        choices=("copy", "insert"),
        default="copy",
        help="load through Client.copy_rows (the bulk path) or INSERTs of --batch rows",
    )
    parser.add_argument(
        "--loaders", type=int, help="loader processes (default 1 for copy, 3 for insert)"
    )
    parser.add_argument(
        "--in-flight", type=int, default=IN_FLIGHT, help="INSERTs in flight per loader"
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: 50,000 rows, 3 runs")
    if parser.parse_known_args(argv)[0].quick:
        parser.set_defaults(**QUICK)  # flags given explicitly still win
    args = parser.parse_args(given)
    if args.loaders is None:
        args.loaders = 1 if args.load == "copy" else LOADERS
    if args.rows < 1 or args.repeat < 1 or args.loaders < 1 or args.in_flight < 1:
        parser.error("--rows, --repeat, --loaders and --in-flight must be positive")
    if not 1 <= args.batch * COLUMNS <= MAX_PARAMS:
        parser.error(f"--batch must be between 1 and {MAX_PARAMS // COLUMNS} rows")
    loop.run(run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
