"""Transactions against plain puts, on the local cluster, in one run.

    python bench/txn.py                  # 64 clients, 15 s per workload, both key mixes
    python bench/txn.py --quick          # 16 clients, 4 s per workload, uniform keys only
    python bench/txn.py --clients 64 --seconds 30

shardwise runs as ``bench/kv.py`` starts it (``peers.start_shardwise``): a controller of 3
and 3 groups of 3 servers on loopback, fsync on. One client process runs ``--clients``
concurrent callers per workload (the client batches what they send to one server at
once, so plain puts are *batched* puts):

* ``put``: one plain put of one key (the baseline);
* ``txn 1-shard``: a transaction that reads two keys of one shard (at once:
  ``get_many``) and writes both (one ``TxnCommit`` log entry);
* ``txn 1-shard blind``: a transaction that writes two keys of one shard without reading
  them (one ``TxnCommit`` log entry, nothing to validate): the cost of the transaction
  machinery itself against a put;
* ``transfer 2-group``: read two accounts held by two different groups (at once), move an
  amount from one to the other (prepares to both groups at once, then a background
  resolve);
* ``txn 10-key``: read ten random keys (at once) and write them all back (any shards).

Keys are drawn uniformly from ``--keys`` keys, then (unless ``--quick``) from a zipfian
distribution (s = 0.99) over the same keys, where contention makes transactions abort.
Each workload's transactions run once (an abort is counted, not retried), so the abort
rate is what a caller would see on a first attempt. Reported per workload: committed
operations per second, p50 and p99 latency (of committed ones), aborts; and the ratios the
targets are stated in: a two-group transfer's p50 against a put's, and one-shard
transactions' throughput against puts'.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import itertools
import os
import platform
import random
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from peers import start_shardwise
from shardwise.client import Client, TransactionError
from shardwise.model.schemes import shard_map
from shardwise.net import loop

SEED: Final = 20261207
ZIPF_S: Final = 0.99


@dataclass
class Outcome:
    latencies: list[float] = field(default_factory=list)
    aborts: int = 0
    errors: int = 0
    first_error: str = ""


@dataclass
class Report:
    workload: str
    keys: str
    seconds: float
    outcome: Outcome

    @property
    def rate(self) -> float:
        return len(self.outcome.latencies) / self.seconds

    def percentile(self, p: float) -> float:
        values = sorted(self.outcome.latencies)
        if not values:
            return float("nan")
        return values[min(len(values) - 1, int(p * len(values)))] * 1000

    @property
    def abort_share(self) -> float:
        done = len(self.outcome.latencies) + self.outcome.aborts
        return self.outcome.aborts / done if done else 0.0


class Keys:
    """Key pools: all keys, and the keys of each shard and each group."""

    def __init__(self, client: Client, count: int, rng: random.Random) -> None:
        config = client.configuration
        assert config is not None
        shards = shard_map(config.keyspaces["default"])
        self.all = [f"k{i:07d}" for i in range(count)]
        self.by_shard: dict[int, list[str]] = {}
        self.by_group: dict[int, list[str]] = {}
        for key in self.all:
            shard = shards.shard(key)
            self.by_shard.setdefault(shard.index, []).append(key)
            self.by_group.setdefault(config.owner(shard), []).append(key)
        self.rng = rng
        weights = [1 / (rank**ZIPF_S) for rank in range(1, count + 1)]
        self._cumulative = list(itertools.accumulate(weights))

    def pick(self, pool: Sequence[str], zipf: bool) -> str:
        if not zipf:
            return self.rng.choice(pool)
        # Zipf over the whole key space, mapped into the pool by rank.
        rank = bisect.bisect_left(self._cumulative, self.rng.random() * self._cumulative[-1])
        return pool[rank % len(pool)]


async def _drive(callers: int, seconds: float, one: Callable[[], Awaitable[None]]) -> Outcome:
    outcome = Outcome()
    end = time.monotonic() + seconds

    async def caller() -> None:
        while time.monotonic() < end:
            start = time.monotonic()
            try:
                await one()
            except TransactionError:
                outcome.aborts += 1
                continue
            except Exception as exc:  # counted and shown: a benchmark goes on
                outcome.errors += 1
                outcome.first_error = outcome.first_error or repr(exc)
                continue
            outcome.latencies.append(time.monotonic() - start)

    await asyncio.gather(*(caller() for _ in range(callers)))
    return outcome


def _int(value: str | bytes | None) -> int:
    return 0 if value is None else int(value)


def workloads(
    client: Client, keys: Keys, zipf: bool
) -> list[tuple[str, Callable[[], Awaitable[None]]]]:
    shards_with_two = [s for s, pool in keys.by_shard.items() if len(pool) >= 2]
    groups = sorted(keys.by_group)

    async def put() -> None:
        await client.put(keys.pick(keys.all, zipf), "1")

    async def one_shard() -> None:
        pool = keys.by_shard[keys.rng.choice(shards_with_two)]
        a, b = keys.pick(pool, zipf), keys.pick(pool, zipf)
        async with client.transaction() as tx:
            found = await tx.get_many([a, b])
            tx.put(a, str(_int(found[a]) + 1))
            tx.put(b, str(_int(found[b]) + 1))

    async def one_shard_blind() -> None:
        pool = keys.by_shard[keys.rng.choice(shards_with_two)]
        a, b = keys.pick(pool, zipf), keys.pick(pool, zipf)
        async with client.transaction() as tx:
            tx.put(a, "1")
            tx.put(b, "1")

    async def transfer() -> None:
        g1, g2 = keys.rng.sample(groups, 2)
        a, b = keys.pick(keys.by_group[g1], zipf), keys.pick(keys.by_group[g2], zipf)
        async with client.transaction() as tx:
            found = await tx.get_many([a, b])
            tx.put(a, str(_int(found[a]) - 1))
            tx.put(b, str(_int(found[b]) + 1))

    async def ten_keys() -> None:
        chosen = {keys.pick(keys.all, zipf) for _ in range(10)}
        async with client.transaction() as tx:
            found = await tx.get_many(sorted(chosen))
            for key, value in found.items():
                tx.put(key, str(_int(value) + 1))

    return [
        ("put", put),
        ("txn 1-shard", one_shard),
        ("txn 1-shard blind", one_shard_blind),
        ("transfer 2-group", transfer),
        ("txn 10-key", ten_keys),
    ]


async def run_workloads(client: Client, keys: Keys, args: argparse.Namespace) -> list[Report]:
    reports: list[Report] = []
    for zipf in (False, True) if not args.quick else (False,):
        mix = "zipfian" if zipf else "uniform"
        for name, one in workloads(client, keys, zipf):
            if args.only and name not in args.only:
                continue
            outcome = await _drive(args.clients, args.seconds, one)
            reports.append(Report(name, mix, args.seconds, outcome))
            print(
                f"  {name:<17} {mix:<8} {len(outcome.latencies) / args.seconds:8.0f}/s "
                f"aborts {outcome.aborts} errors {outcome.errors} {outcome.first_error}",
                flush=True,
            )
    return reports


def print_report(reports: list[Report], args: argparse.Namespace) -> None:
    print()
    print(
        f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} CPUs, "
        f"{platform.platform()}, Python {platform.python_version()}, "
        f"load average {' / '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )
    print(
        f"3 groups of 3 + 3 controllers on loopback, fsync on; {args.clients} callers in one "
        f"client process; {args.seconds:.0f} s per workload; {args.keys} keys"
    )
    print()
    print("| workload | keys | committed/s | p50 ms | p99 ms | aborted | errors |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for r in reports:
        print(
            f"| {r.workload} | {r.keys} | {r.rate:.0f} | {r.percentile(0.5):.1f} | "
            f"{r.percentile(0.99):.1f} | {100 * r.abort_share:.1f}% | {r.outcome.errors} |"
        )
    print()
    for mix in sorted({r.keys for r in reports}):
        by = {r.workload: r for r in reports if r.keys == mix}
        if not {"put", "txn 1-shard", "transfer 2-group"} <= by.keys():
            continue
        put, one, two = by["put"], by["txn 1-shard"], by["transfer 2-group"]
        print(
            f"{mix}: transfer 2-group p50 / put p50 = "
            f"{two.percentile(0.5) / put.percentile(0.5):.2f} (target <= 2); "
            f"txn 1-shard rate / put rate = {one.rate / put.rate:.2f} (target >= 0.8)"
        )


async def run(args: argparse.Namespace) -> None:
    rng = random.Random(SEED)
    with tempfile.TemporaryDirectory(prefix="shardwise-bench-txn-") as tmp:
        cluster = await start_shardwise(Path(tmp))
        try:
            async with Client(cluster.controllers, cluster.secret) as client:
                await client.put("warm-up", "v")
                keys = Keys(client, args.keys, rng)
                print(f"keys: {len(keys.all)} over {len(keys.by_shard)} shards", flush=True)
                reports = await run_workloads(client, keys, args)
        finally:
            cluster.stop()
    print_report(reports, args)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="16 clients, 4 s, uniform only")
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--keys", type=int, default=10_000)
    parser.add_argument(
        "--only", action="append", help="run only this workload (repeatable), e.g. put"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.clients, args.seconds = min(args.clients, 16), min(args.seconds, 4.0)
    loop.run(run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
