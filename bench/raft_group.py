"""One shardwise Raft group against a 3-node etcd cluster, same load, same machine.

    python bench/raft_group.py                  # 3 rounds, the table in docs/benchmarks.md
    python bench/raft_group.py --quick          # a short smoke run

Both systems run as 3 processes on loopback with fsync on (etcd always syncs its WAL;
shardwise syncs each batch). One Python load generator drives both with the same
workload: CONCURRENCY clients, each putting 100-byte values to random keys one after
another. For etcd it speaks the v3 JSON gateway over HTTP/1.1 keep-alive (spreading its
connections over the three members, as etcd's own client does); for shardwise, the
KVGroupClient. Reported per system: throughput, p50/p99 latency, and CPU per operation
(servers, from /proc, and the load generator), medians of the rounds, and the ratios.
Needs Debian's etcd-server (`make bench-deps`).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from shardwise.kvgroup.client import KVGroupClient
from shardwise.net import loop
from shardwise.testing.procs import ProcessGroup, free_ports

VALUE = "v" * 100
CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass
class Round:
    ops: int
    seconds: float
    latencies: list[float]
    server_cpu_s: float
    client_cpu_s: float

    @property
    def throughput(self) -> float:
        return self.ops / self.seconds

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime + stime, in clock ticks
    return total / CLK_TCK


async def drive(
    workers: list[Callable[[str], Awaitable[None]]], ops: int, pids: list[int]
) -> Round:
    """Run ``ops`` puts spread over the workers (one per concurrent client)."""
    latencies: list[float] = []
    remaining = [ops]

    async def loop(put: Callable[[str], Awaitable[None]], n: int) -> None:
        while remaining[0] > 0:
            remaining[0] -= 1
            key = f"key{n}-{remaining[0] % 1000}"
            start = time.perf_counter()
            await put(key)
            latencies.append(time.perf_counter() - start)

    cpu0, client0, wall0 = cpu_seconds(pids), time.process_time(), time.perf_counter()
    await asyncio.gather(*(loop(w, n) for n, w in enumerate(workers)))
    wall = time.perf_counter() - wall0
    return Round(ops, wall, latencies, cpu_seconds(pids) - cpu0, time.process_time() - client0)


# --- etcd ----------------------------------------------------------------------------


class EtcdCluster:
    def __init__(self, base: Path) -> None:
        self.base = base
        ports = free_ports(6)
        self.client_ports = ports[:3]
        peer_ports = ports[3:]
        self.names = ["e1", "e2", "e3"]
        cluster = ",".join(
            f"{n}=http://127.0.0.1:{p}" for n, p in zip(self.names, peer_ports, strict=True)
        )
        self.procs: list[subprocess.Popen[bytes]] = []
        self.commands = [
            [
                shutil.which("etcd") or "etcd",
                f"--name={name}",
                f"--data-dir={base / name}",
                f"--listen-client-urls=http://127.0.0.1:{cp}",
                f"--advertise-client-urls=http://127.0.0.1:{cp}",
                f"--listen-peer-urls=http://127.0.0.1:{pp}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{pp}",
                f"--initial-cluster={cluster}",
                "--initial-cluster-state=new",
                "--initial-cluster-token=shardwise-bench",
                "--log-level=error",
            ]
            for name, cp, pp in zip(self.names, self.client_ports, peer_ports, strict=True)
        ]

    def __enter__(self) -> EtcdCluster:
        for command, name in zip(self.commands, self.names, strict=True):
            log = open(self.base / f"{name}.log", "wb")
            self.procs.append(subprocess.Popen(command, stdout=log, stderr=log))
        return self

    def __exit__(self, *exc: object) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            proc.wait(timeout=15)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]


class EtcdHttp:
    """A minimal HTTP/1.1 keep-alive client for etcd's v3 JSON gateway."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def connect(self) -> None:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)

    async def post(self, path: str, body: dict[str, str]) -> dict[str, object]:
        assert self.reader is not None and self.writer is not None
        data = json.dumps(body).encode()
        self.writer.write(
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\n\r\n".encode()
            + data
        )
        status = await self.reader.readline()
        length = 0
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            if name.lower() == "content-length":
                length = int(value)
        payload = await self.reader.readexactly(length)
        if b" 200 " not in status:
            raise RuntimeError(f"etcd answered {status!r}: {payload[:200]!r}")
        result: dict[str, object] = json.loads(payload)
        return result

    async def put(self, key: str) -> None:
        b64 = base64.b64encode
        await self.post(
            "/v3/kv/put", {"key": b64(key.encode()).decode(), "value": b64(VALUE.encode()).decode()}
        )

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            await self.writer.wait_closed()


async def etcd_round(cluster: EtcdCluster, concurrency: int, ops: int) -> Round:
    clients = [EtcdHttp(cluster.client_ports[i % 3]) for i in range(concurrency)]
    await asyncio.gather(*(c.connect() for c in clients))
    try:
        return await drive([c.put for c in clients], ops, cluster.pids)
    finally:
        await asyncio.gather(*(c.close() for c in clients))


async def wait_for_etcd(cluster: EtcdCluster, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        client = EtcdHttp(cluster.client_ports[0])
        try:
            await client.connect()
            await client.put("warmup")
            return
        except (OSError, RuntimeError, asyncio.IncompleteReadError):
            await asyncio.sleep(0.2)
        finally:
            await client.close()
    raise TimeoutError("etcd did not start")


# --- shardwise -----------------------------------------------------------------------


async def shardwise_round(group: ProcessGroup, concurrency: int, ops: int) -> Round:
    clients = [
        KVGroupClient(group.addresses, group.secret, client_id=f"bench{i}")
        for i in range(concurrency)
    ]
    for c in clients:
        await c.__aenter__()
    try:

        def putter(client: KVGroupClient) -> Callable[[str], Awaitable[None]]:
            return lambda key: client.put(key, VALUE, deadline_s=30)

        pids = [p.pid for p in group.procs.values()]
        return await drive([putter(c) for c in clients], ops, pids)
    finally:
        for c in clients:
            await c.__aexit__(None, None, None)


# --- the run -------------------------------------------------------------------------


def summarize(rounds: list[Round]) -> dict[str, float]:
    med = statistics.median
    return {
        "throughput": med(r.throughput for r in rounds),
        "p50_ms": med(r.percentile(0.5) for r in rounds) * 1000,
        "p99_ms": med(r.percentile(0.99) for r in rounds) * 1000,
        "server_us": med(r.server_cpu_s / r.ops for r in rounds) * 1e6,
        "client_us": med(r.client_cpu_s / r.ops for r in rounds) * 1e6,
    }


async def run(rounds: int, concurrency: int, ops: int) -> None:
    results: dict[str, list[Round]] = {"shardwise": [], "etcd": []}
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        (base / "etcd").mkdir()
        with (
            ProcessGroup(base / "shardwise", tick_ms=50) as group,
            EtcdCluster(base / "etcd") as etcd,
        ):
            group.start_all()
            await wait_for_etcd(etcd)
            async with KVGroupClient(group.addresses, group.secret, client_id="warmup") as c:
                await c.put("warmup", "x", deadline_s=30)
            for _ in range(rounds):  # alternate, so drift in the machine hits both alike
                results["shardwise"].append(await shardwise_round(group, concurrency, ops))
                results["etcd"].append(await etcd_round(etcd, concurrency, ops))
    ours, peer = summarize(results["shardwise"]), summarize(results["etcd"])
    etcd_version = subprocess.run(
        [shutil.which("etcd") or "etcd", "--version"], capture_output=True, text=True, check=True
    ).stdout.splitlines()[0]
    print(
        f"# raft group benchmark ({time.strftime('%Y-%m-%d')}, {platform.machine()}, "
        f"Python {platform.python_version()}, {etcd_version})\n"
    )
    print(
        f"3 processes each, fsync on, {concurrency} concurrent clients, {ops:,} puts of "
        f"{len(VALUE)} bytes per round, median of {rounds} rounds\n"
    )
    print("| | shardwise | etcd | shardwise / etcd |")
    print("|---|---:|---:|---:|")
    rows = [
        ("puts/s", "throughput", "{:,.0f}"),
        ("p50 latency (ms)", "p50_ms", "{:.2f}"),
        ("p99 latency (ms)", "p99_ms", "{:.2f}"),
        ("server CPU per put (µs, 3 processes)", "server_us", "{:,.0f}"),
        ("load generator CPU per put (µs)", "client_us", "{:,.0f}"),
    ]
    for label, key, fmt in rows:
        print(
            f"| {label} | {fmt.format(ours[key])} | {fmt.format(peer[key])} | "
            f"{ours[key] / peer[key]:.2f} |"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--ops", type=int, default=20_000)
    args = parser.parse_args()
    if shutil.which("etcd") is None:
        print(
            "etcd is not installed: run `make bench-deps` (Debian's etcd-server)", file=sys.stderr
        )
        return 2
    if args.quick:
        args.rounds, args.ops, args.concurrency = 1, 2_000, 16
    loop.run(run(args.rounds, args.concurrency, args.ops))  # uvloop when installed, for both
    return 0


if __name__ == "__main__":
    sys.exit(main())
