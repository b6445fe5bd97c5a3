"""The clusters the KV benchmark starts on loopback, and a store adapter for each.

* etcd: 3 members (``raft_group.EtcdCluster``), reached through the v3 JSON gateway;
* Redis Cluster: 3 primaries with a replica each (Debian's ``redis-server``), AOF on with
  ``appendfsync everysec``, reached with redis-py's asyncio ``RedisCluster``;
* shardwise: a 3-replica controller and 3 replica groups of 3 servers, reached with
  ``shardwise.client.Client``.

Every adapter has the ``ycsb.Store`` shape (``get``, ``put``, ``close``).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Final, cast

from redis.asyncio.cluster import RedisCluster

from raft_group import EtcdCluster, EtcdHttp, wait_for_etcd
from shardwise.client import Client
from shardwise.controller.client import ControllerClient
from shardwise.net.links import Address
from shardwise.testing.procs import READY_TIMEOUT_S, STOP_TIMEOUT_S, ProcessGroup, free_ports

__all__ = ["EtcdCluster", "wait_for_etcd"]  # re-exported: kv.py starts etcd as raft_group does

CLK_TCK: Final = os.sysconf("SC_CLK_TCK")
POLL_S: Final = 0.1
"""Pause between readiness probes of a starting cluster."""
START_PUT_TIMEOUT_S: Final = 60.0
"""A new shardwise cluster must take a put within this (elections, joins, first config)."""


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU of the processes, with their reaped children: Redis forks for
    AOF rewrites, and that work is the server's too."""
    ticks = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks += sum(int(f) for f in fields[11:15])  # utime, stime, cutime, cstime
    return ticks / CLK_TCK


# --- etcd ----------------------------------------------------------------------------


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


class EtcdStore:
    """One keep-alive HTTP/1.1 connection to one member (one op in flight at a time)."""

    def __init__(self, port: int) -> None:
        self.http = EtcdHttp(port)

    @classmethod
    async def open(cls, cluster: EtcdCluster, n: int) -> list[EtcdStore]:
        # Spread over the members, as etcd's own client balances its connections.
        stores = [cls(cluster.client_ports[i % len(cluster.client_ports)]) for i in range(n)]
        await asyncio.gather(*(s.http.connect() for s in stores))
        return stores

    async def get(self, key: str) -> str | None:
        # Linearizable by default (serializable=false): comparable to the others' reads.
        reply = await self.http.post("/v3/kv/range", {"key": _b64(key)})
        kvs = cast(list[dict[str, str]], reply.get("kvs") or [])
        return base64.b64decode(kvs[0].get("value", "")).decode() if kvs else None

    async def put(self, key: str, value: str) -> None:
        await self.http.post("/v3/kv/put", {"key": _b64(key), "value": _b64(value)})

    async def close(self) -> None:
        await self.http.close()


# --- Redis Cluster -------------------------------------------------------------------

REDIS_CONFIG: Final = """\
port {port}
cluster-port {bus_port}
bind 127.0.0.1
dir {dir}
daemonize no
cluster-enabled yes
cluster-config-file nodes.conf
cluster-node-timeout 5000
appendonly yes
appendfsync everysec
save ""
"""
"""AOF with an fsync a second is the durability the issue names; RDB snapshots are off so
that only the AOF writes to disk (a timed BGSAVE fork would land in some rounds only). The
bus port is set, not left at port + 10000, which may be taken or past 65535."""


def replicas_known(cluster_nodes: str) -> int:
    """Replicas in a CLUSTER NODES answer (flags are the third field: ``slave`` or
    ``myself,slave``)."""
    return sum("slave" in line.split()[2].split(",") for line in cluster_nodes.splitlines() if line)


class RedisClusterProcs:
    """6 ``redis-server`` processes made into a cluster of 3 primaries, 1 replica each."""

    PRIMARIES: Final = 3

    def __init__(self, base: Path) -> None:
        self.base = base
        ports = free_ports(4 * self.PRIMARIES)
        self.ports, self.bus_ports = ports[::2], ports[1::2]
        self.procs: list[subprocess.Popen[bytes]] = []
        self._logs: list[IO[bytes]] = []

    def __enter__(self) -> RedisClusterProcs:
        try:
            self._start()
        except BaseException:
            self.__exit__()
            raise
        return self

    def _start(self) -> None:
        server = shutil.which("redis-server") or "redis-server"
        for port, bus_port in zip(self.ports, self.bus_ports, strict=True):
            node_dir = self.base / str(port)
            node_dir.mkdir(parents=True)
            conf = node_dir / "redis.conf"
            conf.write_text(REDIS_CONFIG.format(port=port, bus_port=bus_port, dir=node_dir))
            log = open(node_dir / "redis.log", "wb")  # noqa: SIM115 - closed in __exit__
            self._logs.append(log)
            self.procs.append(subprocess.Popen([server, str(conf)], stdout=log, stderr=log))
        for port in self.ports:
            self._wait(port, "PING", lambda out: "PONG" in out)
        nodes = [f"127.0.0.1:{p}" for p in self.ports]
        subprocess.run(
            [
                self._cli(),
                "--cluster",
                "create",
                *nodes,
                "--cluster-replicas",
                "1",
                "--cluster-yes",
            ],
            capture_output=True,
            check=True,
            timeout=READY_TIMEOUT_S,
        )
        # `--cluster create` returns before every node has heard of every replica and
        # before the replicas have synced; the load must not start on a half-built cluster.
        for port in self.ports:
            self._wait(port, "CLUSTER INFO", lambda out: "cluster_state:ok" in out)
            self._wait(port, "CLUSTER NODES", lambda out: replicas_known(out) == self.PRIMARIES)
            self._wait(
                port,
                "INFO replication",
                lambda out: "connected_slaves:1" in out or "master_link_status:up" in out,
            )

    @staticmethod
    def _cli() -> str:
        return shutil.which("redis-cli") or "redis-cli"

    def _wait(self, port: int, command: str, done: Callable[[str], bool]) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            out = subprocess.run(
                [self._cli(), "-p", str(port), *command.split()],
                capture_output=True,
                text=True,
                check=False,  # not up yet: ask again
            ).stdout
            if done(out):
                return
            time.sleep(POLL_S)
        raise TimeoutError(f"redis on port {port}: {command} not as expected in time")

    def __exit__(self, *exc: object) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for log in self._logs:
            log.close()

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]


class RedisStore:
    """redis-py's cluster client, shared by all workers: it routes each key to its slot's
    primary and keeps a connection pool per node, one connection per op in flight."""

    def __init__(self, client: RedisCluster) -> None:
        self.client = client
        self._closed = False

    @classmethod
    async def open(cls, cluster: RedisClusterProcs, n: int) -> list[RedisStore]:
        client = RedisCluster(host="127.0.0.1", port=cluster.ports[0], decode_responses=True)
        await client.initialize()
        store = cls(client)
        return [store] * n

    async def get(self, key: str) -> str | None:
        return cast(str | None, await self.client.get(key))

    async def put(self, key: str, value: str) -> None:
        await self.client.set(key, value)

    async def close(self) -> None:
        if not self._closed:  # the same store is handed to every worker
            self._closed = True
            await self.client.aclose()


# --- shardwise -----------------------------------------------------------------------

GROUPS: Final = 3
REPLICAS: Final = 3


class ShardwiseStore:
    """``shardwise.client.Client``, shared by ``workers`` workers (many writes may be in
    flight on one client: it gives each its own pooled client id, so none is stale)."""

    def __init__(self, client: Client) -> None:
        self.client = client

    @classmethod
    async def open(
        cls, controllers: dict[str, Address], secret: bytes, workers: int, clients: int = 1
    ) -> list[ShardwiseStore]:
        """``workers`` stores over ``clients`` Client objects, dealt round robin."""
        made = [Client(controllers, secret) for _ in range(clients)]
        await asyncio.gather(*(c.start() for c in made))
        shared = [cls(c) for c in made]
        return [shared[i % clients] for i in range(workers)]

    async def get(self, key: str) -> str | None:
        value = await self.client.get(key)
        return value if value is None or isinstance(value, str) else value.decode()

    async def put(self, key: str, value: str) -> None:
        await self.client.put(key, value)

    async def close(self) -> None:
        await self.client.close()  # idempotent: a shared client is closed by each worker


class ShardGroupProcs(ProcessGroup):
    """The servers of one replica group. A group server's node id is its address
    (``shardserver.protocol.server_address``), so ids are ``127.0.0.1:PORT``."""

    def __init__(
        self, base_dir: Path, gid: int, controllers: dict[str, Address], secret: bytes
    ) -> None:
        super().__init__(base_dir, REPLICAS, secret=secret, module="shardwise.shardserver")
        self.ports = {f"127.0.0.1:{port}": port for port in self.ports.values()}
        self.ids = list(self.ports)
        self.gid = gid
        self.controllers = controllers

    def command(self, node: str) -> list[str]:
        return [
            sys.executable, "-m", self.module,
            f"--id={node}",
            f"--listen={node}",
            *(f"--peer={p}={p}" for p in self.ids if p != node),
            f"--group={self.gid}",
            *(f"--controller={c}={h}:{p}" for c, (h, p) in self.controllers.items()),
            f"--data={self.base_dir / node.replace(':', '-')}",
            f"--secret-file={self.secret_file}",
        ]  # fmt: skip


@dataclass
class ShardwiseCluster:
    controllers: dict[str, Address]
    secret: bytes
    groups: dict[int, list[str]]
    """Group id -> its servers' ids (``HOST:PORT``)."""
    processes: list[ProcessGroup] = field(default_factory=list)

    @property
    def pids(self) -> list[int]:
        return [p.pid for group in self.processes for p in group.procs.values()]

    def stop(self) -> None:
        for group in reversed(self.processes):  # the groups first, the controller last
            group.close()


# ===================================================================================
# start_shardwise: the shardwise cluster of the benchmark. It relies on the command line
# of `python -m shardwise.shardserver` (as in ShardGroupProcs.command; the tick is left
# at its default, 50 ms, the controller's too), its READY line, the controller's join,
# and shardwise.client.Client. A change to any of those lands here.
# ===================================================================================


async def start_shardwise(tmpdir: Path) -> ShardwiseCluster:
    """A controller of 3 replicas and GROUPS groups of REPLICAS servers on loopback,
    joined, and taking puts. The caller must ``stop()`` it (also on failure after return;
    a failure inside stops what had started)."""
    secret = secrets.token_hex(24).encode()  # handed over in 0600 files, never in argv
    controller = ProcessGroup(
        tmpdir / "controller", 3, secret=secret, module="shardwise.controller", prefix="c"
    )
    cluster = ShardwiseCluster(controller.addresses, secret, {}, [controller])
    try:
        controller.start_all()
        for gid in range(1, GROUPS + 1):
            group = ShardGroupProcs(tmpdir / f"g{gid}", gid, cluster.controllers, secret)
            cluster.processes.append(group)
            group.start_all()
            cluster.groups[gid] = list(group.ids)
        async with ControllerClient(cluster.controllers, secret) as ctl:
            await ctl.join(cluster.groups)
        await wait_for_put(cluster)
    except BaseException:
        cluster.stop()
        raise
    return cluster


async def wait_for_put(cluster: ShardwiseCluster) -> None:
    client = Client(cluster.controllers, cluster.secret)
    await client.start()
    try:
        deadline = time.monotonic() + START_PUT_TIMEOUT_S
        while True:
            try:
                await client.put("warmup", "x")
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(POLL_S)
    finally:
        with contextlib.suppress(Exception):
            await client.close()
