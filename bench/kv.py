"""The sharded KV store against etcd and Redis Cluster: YCSB A/B/C, then a shard moved
under load.

    python bench/kv.py                                  # everything, 3 rounds
    python bench/kv.py --quick                          # a short smoke run
    python bench/kv.py --systems etcd,redis --quick     # the peers only

Each system is started by this script on loopback: shardwise (a 3-replica controller and
3 groups of 3 servers, fsync on), etcd (3 members, fsync on) and Redis Cluster (3
primaries with a replica each, AOF with ``appendfsync everysec``: weaker than the other
two, which fsync before they answer, and its replication is asynchronous). One Python
load generator (``ycsb.py``, on uvloop) drives them all with the same seeded sequence of
scrambled-zipfian keys and 100-byte values: ``--clients`` workers, one op in flight each.
Reads are linearizable on shardwise and etcd; Redis reads its primaries. Connections:
etcd, one HTTP/1.1 keep-alive connection per worker to its v3 JSON gateway (it answers
one request at a time), spread over the members; Redis, one ``RedisCluster`` client
shared by the workers (a connection pool per node); shardwise, one ``Client`` shared by
the workers (``--shardwise-clients`` for more), which multiplexes them.

Reported per workload and system: throughput, p50/p99 latency, CPU per op (servers, from
/proc, and the load generator), medians of the rounds, and the ratios. Rounds rotate the
order of the systems so that drift of this shared machine hits each alike.

Then, for shardwise, a migration under load: one shard is filled with ``--migrate-mb``
MiB, workload A runs, and the shard is moved to another group. Reported: the move's
duration (from the controller's Move until the new group serves a read of the shard),
the p99 of ops on the other shards during the move against before it, and the longest
gap between successful writes of a dedicated writer on the moving shard.

Needs Debian's etcd-server and redis-server (``make bench-deps``) and the ``redis``
package (the ``bench`` extra).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import platform
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np
import numpy.typing as npt

import ycsb
from peers import (
    EtcdCluster,
    EtcdStore,
    RedisClusterProcs,
    RedisStore,
    ShardwiseCluster,
    ShardwiseStore,
    cpu_seconds,
    start_shardwise,
    wait_for_etcd,
)
from shardwise.controller.client import ControllerClient
from shardwise.model.config import DEFAULT_KEYSPACE, ShardId
from shardwise.model.schemes import shard_map
from shardwise.net import loop
from shardwise.net.leader import LeaderRouter
from shardwise.net.transport import Transport
from shardwise.net.wire import PeerRole
from shardwise.shardserver.protocol import (
    READ,
    STATUS,
    ReadRequest,
    StatusRequest,
    server_address,
)
from ycsb import WORKLOADS, Ops, Plan, Stop, Store, percentile_ms

SYSTEMS: Final = ("shardwise", "etcd", "redis")
VALUE: Final = "v" * ycsb.VALUE_BYTES
SEED: Final = 20261128

FILL_VALUE_BYTES: Final = 64 << 10
"""Values that fill the moving shard: large, so 100 MiB takes ~1,600 puts, not a million
(the shard store takes values up to 1 MiB)."""
FILL_CLIENTS: Final = 8
WRITER_KEYS: Final = 16
"""Keys of the moving shard the dedicated writer cycles over."""
MOVE_TIMEOUT_S: Final = 600.0
"""Longest a move may take before the benchmark gives up (100 MiB over loopback takes
seconds; this is only a guard against a move that never completes)."""
MIGRATION_TAIL_S: Final = 1.0
"""The workload keeps running this long after the move, so a late stall still shows."""
WARMUP_S: Final = 0.5
"""Ops started in the first moments of the migration run are left out of the steady
state (connections and caches still warming)."""

QUICK: Final = {
    "rounds": 1,
    "seconds": 2.0,
    "records": 5_000,
    "clients": 16,
    "migrate_mb": 5.0,
    "migrate_steady_s": 2.0,
}
"""The defaults of ``--quick``: a smoke run of well under a minute per system."""


@dataclass
class Target:
    """A running system: its server processes and a way to open one store per worker."""

    name: str
    pids: list[int]
    open: Callable[[int], Awaitable[list[Store]]]


@dataclass
class Result:
    ops: Ops
    seconds: float
    server_cpu_s: float
    client_cpu_s: float

    @property
    def throughput(self) -> float:
        return len(self.ops) / self.seconds

    def per_op_us(self, cpu_s: float) -> float:
        return cpu_s / max(1, len(self.ops)) * 1e6


async def close_all(stores: Sequence[Store]) -> None:
    for store in stores:
        with contextlib.suppress(Exception):  # a broken connection must not hide results
            await store.close()


async def measure(target: Target, plan: Plan, clients: int, stop: Callable[[], Stop]) -> Result:
    stores = await target.open(clients)  # connections are opened outside the timed window
    try:
        cpu0, client0, wall0 = cpu_seconds(target.pids), time.process_time(), time.perf_counter()
        ops = await ycsb.run(stores, plan, VALUE, stop())
        wall = time.perf_counter() - wall0
        return Result(ops, wall, cpu_seconds(target.pids) - cpu0, time.process_time() - client0)
    finally:
        await close_all(stores)


# --- starting the systems ------------------------------------------------------------


async def start_target(
    name: str, base: Path, stack: contextlib.AsyncExitStack, shardwise_clients: int
) -> tuple[Target, ShardwiseCluster | None]:
    (base / name).mkdir()
    if name == "etcd":
        etcd = stack.enter_context(EtcdCluster(base / name))
        await wait_for_etcd(etcd)
        return Target(name, etcd.pids, lambda n: _stores(EtcdStore.open(etcd, n))), None
    if name == "redis":
        redis = stack.enter_context(RedisClusterProcs(base / name))
        return Target(name, redis.pids, lambda n: _stores(RedisStore.open(redis, n))), None
    cluster = await start_shardwise(base / name)
    stack.callback(cluster.stop)
    return Target(
        name,
        cluster.pids,
        lambda n: _stores(
            ShardwiseStore.open(cluster.controllers, cluster.secret, n, shardwise_clients)
        ),
    ), cluster


async def _stores(opening: Awaitable[Sequence[Store]]) -> list[Store]:
    return list(await opening)


# --- the comparison ------------------------------------------------------------------


def summarize(results: list[Result]) -> dict[str, float]:
    med = statistics.median
    return {
        "throughput": med(r.throughput for r in results),
        "p50_ms": med(percentile_ms(r.ops.latency, 50) for r in results),
        "p99_ms": med(percentile_ms(r.ops.latency, 99) for r in results),
        "server_us": med(r.per_op_us(r.server_cpu_s) for r in results),
        "client_us": med(r.per_op_us(r.client_cpu_s) for r in results),
        "errors": sum(r.ops.errors for r in results),
    }


ROWS: Final = (
    ("ops/s", "throughput", "{:,.0f}"),
    ("p50 latency (ms)", "p50_ms", "{:.2f}"),
    ("p99 latency (ms)", "p99_ms", "{:.2f}"),
    ("server CPU per op (µs, all processes)", "server_us", "{:,.0f}"),
    ("load generator CPU per op (µs)", "client_us", "{:,.0f}"),
    ("failed ops (all rounds)", "errors", "{:,.0f}"),
)


def print_workload(workload: str, summaries: dict[str, dict[str, float]]) -> None:
    w = WORKLOADS[workload]
    names = [s for s in SYSTEMS if s in summaries]
    ratios = [p for p in ("etcd", "redis") if "shardwise" in summaries and p in summaries]
    print(
        f"\n### Workload {w.name} ({w.read_fraction:.0%} reads, "
        f"{1 - w.read_fraction:.0%} updates)\n"
    )
    print("| | " + " | ".join(names) + "".join(f" | shardwise / {p}" for p in ratios) + " |")
    print("|---|" + "---:|" * (len(names) + len(ratios)))
    for label, key, fmt in ROWS:
        cells = [fmt.format(summaries[s][key]) for s in names]
        if key != "errors":
            ours = summaries.get("shardwise", {}).get(key, math.nan)
            cells += [f"{ours / summaries[p][key]:.2f}" for p in ratios]
        else:
            cells += [""] * len(ratios)
        print(f"| {label} | " + " | ".join(cells) + " |")


def version(command: list[str]) -> str:
    try:
        out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "?"
    return out.splitlines()[0] if out else "?"


# --- the migration under load --------------------------------------------------------


@dataclass
class Migration:
    shard: ShardId
    source: int
    target: int
    filled_mib: float
    fill_s: float
    reported_bytes: int | None
    move_s: float
    p99_before_ms: float
    p99_during_ms: float
    ops_before: int
    ops_during: int
    p99_by_group: dict[str, tuple[float, float]]
    """p99 (ms) of other shards' ops before and during the move, by the role of their
    group: where a slowdown comes from."""
    write_gap_ms: float
    write_p50_before_ms: float
    writer_errors: int
    workload_errors: int


def keys_in_shard(prefix: str, index: int, count: int, shard_of: Callable[[str], int]) -> list[str]:
    """``count`` keys ``<prefix><n>`` that map to shard ``index``."""
    keys: list[str] = []
    n = 0
    while len(keys) < count:
        key = f"{prefix}{n}"
        if shard_of(key) == index:
            keys.append(key)
        n += 1
    return keys


async def wait_served(
    servers: list[str], secret: bytes, shard: ShardId, key: str, timeout_s: float
) -> None:
    """Until ``servers`` (one group) serve a read of ``key`` in ``shard``. The group
    answers ``wrong_group`` until it has installed the shard; the router retries every
    server in turn (about every 20 ms, ``routing.RETRY_PAUSE_S``), which is the
    resolution of the move's measured end."""
    addresses = {s: server_address(s) for s in servers}
    client_id = f"bench-probe-{secrets.token_hex(4)}"
    async with Transport(client_id, secret, role=PeerRole.CLIENT, peers=addresses) as transport:
        await LeaderRouter(transport, addresses).call(READ, ReadRequest(shard, key), timeout_s)


async def shard_bytes(servers: list[str], secret: bytes, shard: ShardId) -> int | None:
    """The shard's size as a server of the group reports it (informational)."""
    addresses = {s: server_address(s) for s in servers}
    client_id = f"bench-status-{secrets.token_hex(4)}"
    async with Transport(client_id, secret, role=PeerRole.CLIENT, peers=addresses) as transport:
        for server in servers:
            with contextlib.suppress(Exception):
                reply = await transport.call(server, STATUS, StatusRequest(), timeout_s=2.0)
                for info in reply.shards:
                    if info.shard == shard and info.state == "serving":
                        return info.bytes
    return None


class ShardWriter:
    """One client writing the moving shard's keys back to back: the gaps between its
    successful writes show how long the shard refused (or stalled) writes."""

    def __init__(self, store: Store, keys: list[str], stop: Stop) -> None:
        self.store = store
        self.keys = keys
        self.stop = stop
        self.writes: list[tuple[float, float]] = []
        """(start, end) of each successful write."""
        self.errors = 0

    async def run(self) -> None:
        n = 0
        while not self.stop.flag:
            t0 = time.perf_counter()
            try:
                await self.store.put(self.keys[n % len(self.keys)], VALUE)
            except Exception:  # a refused write is what is measured: count it, go on
                self.errors += 1
            else:
                self.writes.append((t0, time.perf_counter()))
            n += 1

    def longest_gap_s(self, start: float, end: float) -> float:
        """The longest time between two successive successful writes, among those gaps
        that overlap ``[start, end]``: the last success before a refusal to the first
        after it."""
        ends = np.array([e for _, e in self.writes])
        gaps = np.diff(ends)
        overlapping = gaps[(ends[1:] >= start) & (ends[:-1] <= end)]
        return float(overlapping.max()) if len(overlapping) else math.nan

    def latencies_before(self, t: float) -> npt.NDArray[np.float64]:
        return np.array([e - s for s, e in self.writes if s < t], dtype=np.float64)


async def fill_shard(cluster: ShardwiseCluster, keys: list[str]) -> float:
    """Write ``keys`` with FILL_VALUE_BYTES values; returns the seconds taken."""
    fillers = await ShardwiseStore.open(cluster.controllers, cluster.secret, FILL_CLIENTS)
    try:
        return await ycsb.load(fillers, keys, "f" * FILL_VALUE_BYTES)
    finally:
        await close_all(fillers)


async def migrate(
    cluster: ShardwiseCluster,
    keys: list[str],
    *,
    clients: int,
    shared_by: int,
    mib: float,
    steady_s: float,
) -> Migration:
    async with ControllerClient(cluster.controllers, cluster.secret) as ctl:
        config = await ctl.query()
        smap = shard_map(config.keyspaces[DEFAULT_KEYSPACE])
        source = min(config.groups)
        target = min(g for g in config.groups if g != source)
        index = config.owners[DEFAULT_KEYSPACE].index(source)  # the first group's first shard
        shard = ShardId(DEFAULT_KEYSPACE, index)
        shard_of_record = np.array([smap.index(k) for k in keys])
        fill_count = math.ceil(mib * (1 << 20) / FILL_VALUE_BYTES)
        fill_keys = keys_in_shard("fill", index, fill_count, smap.index)
        fill_s = await fill_shard(cluster, fill_keys)

        workers = await ShardwiseStore.open(cluster.controllers, cluster.secret, clients, shared_by)
        # The writer has a client of its own, so its gaps are the shard's, not a queue's.
        (writer_store,) = await ShardwiseStore.open(cluster.controllers, cluster.secret, 1)
        stop = Stop()
        writer = ShardWriter(
            writer_store, keys_in_shard("writer", index, WRITER_KEYS, smap.index), stop
        )
        try:
            plan = Plan.make(keys, WORKLOADS["a"], SEED)
            run_start = time.perf_counter()
            run_task = asyncio.create_task(ycsb.run(workers, plan, VALUE, stop))
            write_task = asyncio.create_task(writer.run())
            await asyncio.sleep(steady_s)
            move_start = time.perf_counter()
            await ctl.move(shard, target)
            await wait_served(
                cluster.groups[target], cluster.secret, shard, fill_keys[0], MOVE_TIMEOUT_S
            )
            move_end = time.perf_counter()
            await asyncio.sleep(MIGRATION_TAIL_S)
            stop.flag = True
            ops = await run_task
            await write_task
        finally:
            stop.flag = True
            await close_all([*workers, writer_store])
        reported = await shard_bytes(cluster.groups[target], cluster.secret, shard)

    other = ops.where(shard_of_record[ops.record] != index)
    before = other.where((other.start >= run_start + WARMUP_S) & (other.start < move_start))
    during = other.where((other.start >= move_start) & (other.start <= move_end))
    owners = np.array(config.owners[DEFAULT_KEYSPACE])
    by_group = {}
    for role, gids in (("source", [source]), ("target", [target])):
        by_group[role] = np.isin(owners[shard_of_record], gids)
    by_group["others"] = ~np.isin(owners[shard_of_record], [source, target])
    p99_by_group = {
        role: (
            percentile_ms(before.where(mine[before.record]).latency, 99),
            percentile_ms(during.where(mine[during.record]).latency, 99),
        )
        for role, mine in by_group.items()
    }
    return Migration(
        shard=shard,
        source=source,
        target=target,
        filled_mib=fill_count * FILL_VALUE_BYTES / (1 << 20),
        fill_s=fill_s,
        reported_bytes=reported,
        move_s=move_end - move_start,
        p99_before_ms=percentile_ms(before.latency, 99),
        p99_during_ms=percentile_ms(during.latency, 99),
        p99_by_group=p99_by_group,
        ops_before=len(before),
        ops_during=len(during),
        write_gap_ms=writer.longest_gap_s(move_start, move_end + MIGRATION_TAIL_S) * 1000,
        write_p50_before_ms=percentile_ms(writer.latencies_before(move_start), 50),
        writer_errors=writer.errors,
        workload_errors=ops.errors,
    )


def print_migration(m: Migration, clients: int) -> None:
    size = "n/a" if m.reported_bytes is None else f"{m.reported_bytes / (1 << 20):,.1f} MiB"
    print(
        f"\n### Migration under load\n\nworkload A, {clients} clients; shard {m.shard} "
        f"filled with {m.filled_mib:,.1f} MiB in {m.fill_s:.1f} s (size at the new owner: "
        f"{size}), moved from group {m.source} to group {m.target}\n"
    )
    print("| | value |")
    print("|---|---:|")
    rows = [
        ("move duration (s), Move until the new group serves a read", f"{m.move_s:.2f}"),
        (f"p99 of other shards before the move (ms; {m.ops_before:,} ops)",
         f"{m.p99_before_ms:.2f}"),
        (f"p99 of other shards during the move (ms; {m.ops_during:,} ops)",
         f"{m.p99_during_ms:.2f}"),
        ("during / before", f"{m.p99_during_ms / m.p99_before_ms:.2f}"),
        *((f"… on the {role} group's shards: before / during (ms)",
           f"{before:.1f} / {during:.1f}") for role, (before, during) in m.p99_by_group.items()),
        ("longest gap between writes on the moving shard (ms)", f"{m.write_gap_ms:,.0f}"),
        ("p50 write on the moving shard before the move (ms)", f"{m.write_p50_before_ms:.2f}"),
        ("failed writes on the moving shard", f"{m.writer_errors:,}"),
        ("failed workload ops", f"{m.workload_errors:,}"),
    ]  # fmt: skip
    for label, value in rows:
        print(f"| {label} | {value} |")


# --- the run -------------------------------------------------------------------------


async def run(args: argparse.Namespace) -> None:
    keys = ycsb.key_names(args.records)
    results: dict[str, dict[str, list[Result]]] = {
        s: {w: [] for w in args.workloads} for s in args.systems
    }
    loaded: dict[str, float] = {}
    migration: Migration | None = None

    def stop() -> Stop:
        return Stop(seconds=None if args.ops else args.seconds, ops=args.ops)

    with contextlib.ExitStack() as temporary:
        if args.keep_dir is None:
            base = Path(temporary.enter_context(tempfile.TemporaryDirectory(prefix="bench-kv-")))
        else:
            base = args.keep_dir
            base.mkdir(parents=True)
        stacks = {s: contextlib.AsyncExitStack() for s in args.systems}
        try:
            targets: list[Target] = []
            shardwise_cluster: ShardwiseCluster | None = None
            for name in args.systems:
                target, cluster = await start_target(
                    name, base, stacks[name], args.shardwise_clients
                )
                targets.append(target)
                shardwise_cluster = cluster or shardwise_cluster
                stores = await target.open(args.clients)
                try:
                    loaded[name] = await ycsb.load(stores, keys, VALUE)
                finally:
                    await close_all(stores)
            for rnd in range(args.rounds):
                for workload in args.workloads:
                    plan = Plan.make(keys, WORKLOADS[workload], SEED + rnd)
                    shift = rnd % len(targets)  # rotate who goes first
                    for target in targets[shift:] + targets[:shift]:
                        result = await measure(target, plan, args.clients, stop)
                        results[target.name][workload].append(result)
            # The peers are done: stop them so they do not share the CPU with the move.
            for name in args.systems:
                if name != "shardwise":
                    await stacks[name].aclose()
            if shardwise_cluster is not None and not args.skip_migration:
                migration = await migrate(
                    shardwise_cluster,
                    keys,
                    clients=args.clients,
                    shared_by=args.shardwise_clients,
                    mib=args.migrate_mb,
                    steady_s=args.migrate_steady_s,
                )
        finally:
            for stack in stacks.values():
                await stack.aclose()

    print_report(args, results, loaded, migration)


def print_report(
    args: argparse.Namespace,
    results: dict[str, dict[str, list[Result]]],
    loaded: dict[str, float],
    migration: Migration | None,
) -> None:
    versions = []
    if "etcd" in args.systems:
        versions.append(version([shutil.which("etcd") or "etcd", "--version"]))
    if "redis" in args.systems:
        line = version([shutil.which("redis-server") or "redis-server", "--version"])
        versions.append(" ".join(line.split()[:3]))  # "Redis server v=X.Y.Z", not the build
    print(
        f"# sharded KV benchmark ({time.strftime('%Y-%m-%d')}, {platform.machine()}, "
        f"Python {platform.python_version()}, uvloop {loop.uses_uvloop()}"
        + "".join(f", {v}" for v in versions)
        + ")\n"
    )
    length = f"{args.ops:,} ops" if args.ops else f"{args.seconds:g} s"
    print(
        f"{args.records:,} records of {ycsb.VALUE_BYTES} bytes, scrambled zipfian "
        f"(theta {ycsb.ZIPFIAN_THETA}), {args.clients} clients, {length} per run, "
        f"median of {args.rounds} round(s); the shardwise workers share "
        f"{args.shardwise_clients} Client(s)\n"
    )
    print(
        "load: "
        + ", ".join(f"{s} {args.records / sec:,.0f} inserts/s" for s, sec in loaded.items())
    )
    for workload in args.workloads:
        print_workload(workload, {s: summarize(results[s][workload]) for s in args.systems})
    if migration is not None:
        print_migration(migration, args.clients)


def check_installed(systems: Sequence[str]) -> str | None:
    """Why the run cannot start, or None."""
    needs = {"etcd": ["etcd"], "redis": ["redis-server", "redis-cli"]}
    for system in systems:
        for binary in needs.get(system, []):
            if shutil.which(binary) is None:
                return f"{binary} is not installed: run `make bench-deps`"
    return None


def parse_list(text: str, allowed: Sequence[str]) -> list[str]:
    items = [t.strip().lower() for t in text.split(",") if t.strip()]
    bad = [t for t in items if t not in allowed]
    if bad or not items:
        raise argparse.ArgumentTypeError(f"choose from {','.join(allowed)}, not {text!r}")
    return [a for a in allowed if a in items]  # a fixed order, whatever the order given


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--systems", type=lambda t: parse_list(t, SYSTEMS), default=list(SYSTEMS))
    parser.add_argument(
        "--workloads", type=lambda t: parse_list(t, tuple(WORKLOADS)), default=list(WORKLOADS)
    )
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each run")
    parser.add_argument("--ops", type=int, default=None, help="ops per run instead of seconds")
    parser.add_argument("--clients", type=int, default=64, help="concurrent workers")
    parser.add_argument("--records", type=int, default=100_000, help="keys loaded")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--shardwise-clients",
        type=int,
        default=1,
        help="shardwise Client objects the workers share (one multiplexes them all)",
    )
    parser.add_argument("--skip-migration", action="store_true")
    parser.add_argument(
        "--keep-dir",
        type=Path,
        help="run the clusters in this new directory and keep it (data and logs) afterwards",
    )
    parser.add_argument("--migrate-mb", type=float, default=100.0, help="MiB in the moved shard")
    parser.add_argument(
        "--migrate-steady-s", type=float, default=5.0, help="workload before the move"
    )
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: 1 round of 2 s, 5,000 records, 5 MiB"
    )
    if parser.parse_known_args(argv)[0].quick:
        parser.set_defaults(**QUICK)  # flags given explicitly still win
    args = parser.parse_args(argv)
    problem = check_installed(args.systems)
    if problem is not None:
        print(problem, file=sys.stderr)
        return 2
    loop.run(run(args))  # uvloop when installed, for every system alike
    return 0


if __name__ == "__main__":
    sys.exit(main())
