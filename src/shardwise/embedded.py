"""A whole cluster inside this process, for notebooks, scripts and tests.

    with shardwise.EmbeddedCluster(groups=2) as cluster:
        with cluster.client() as kv:          # a SyncClient, the same API as always
            kv.put("k", "v")
        cluster.join(3)                        # a spare group, started but not joined

Every server is the real one (a controller replica or a replica group server) with its
real TCP transport on loopback and its real Raft log on disk (a temporary directory
unless ``data_dir`` is given), all on one event loop in a background thread. Each
cluster picks free ports and a fresh secret, so each starts empty. Clients
connect over TCP exactly as they would to `shardwise up`'s processes. What it is not:
isolated. One process means one crash takes every replica with it; use `shardwise up`
or :class:`~shardwise.testing.cluster.ProcessCluster` to see replication at work.
"""

from __future__ import annotations

import asyncio
import secrets
import tempfile
import threading
from collections.abc import Coroutine
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Final, TypeVar

from shardwise.client import Client, SyncClient
from shardwise.clusterfile import (
    DESCRIPTION_FILE,
    ClusterLayout,
    Group,
    Process,
    ensure_secret,
)
from shardwise.controller.client import ControllerClient
from shardwise.controller.server import ControllerServer
from shardwise.model.config import ChangeResult
from shardwise.net.links import Address
from shardwise.net.ports import free_ports
from shardwise.service import ReplicaConfig, ReplicaService
from shardwise.shardserver.protocol import server_address
from shardwise.shardserver.server import ShardServer

T = TypeVar("T")

START_TIMEOUT_S: Final = 60.0
"""How long starting (servers up, groups joined, a leader everywhere) may take."""


class EmbeddedCluster:
    """A controller of ``controllers`` replicas and ``groups`` replica groups of
    ``replicas`` servers (plus ``spare_groups`` started but not joined), in-process."""

    def __init__(
        self,
        *,
        groups: int = 3,
        replicas: int = 3,
        controllers: int = 3,
        spare_groups: int = 0,
        data_dir: Path | None = None,
        tick_ms: int = 50,
    ) -> None:
        if min(groups, replicas, controllers) < 1 or spare_groups < 0:
            raise ValueError("need at least one group, replica and controller replica")
        self._temp = None if data_dir is not None else tempfile.TemporaryDirectory()
        self.data_dir = data_dir or Path(self._temp.name)  # type: ignore[union-attr]
        # Text, so that describe() can write it to a secret file as `shardwise up` does.
        self.secret = secrets.token_urlsafe(32).encode()
        self.tick_ms = tick_ms
        total = groups + spare_groups
        ports = free_ports(controllers + total * replicas)
        self.controllers: dict[str, Address] = {
            f"c{i + 1}": ("127.0.0.1", ports[i]) for i in range(controllers)
        }
        rest = ports[controllers:]
        self.servers: dict[int, list[str]] = {
            gid: [f"127.0.0.1:{p}" for p in rest[(gid - 1) * replicas : gid * replicas]]
            for gid in range(1, total + 1)
        }
        self._joined = list(range(1, groups + 1))
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._services: list[ReplicaService[Any]] = []

    # --- life cycle --------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()
        try:
            self._run(self._start(), START_TIMEOUT_S)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        if self._thread.is_alive():
            self._run(self._stop(), START_TIMEOUT_S)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
        if not self._loop.is_closed() and not self._loop.is_running():
            self._loop.close()
        if self._temp is not None:
            self._temp.cleanup()

    def __enter__(self) -> EmbeddedCluster:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # --- using it ----------------------------------------------------------------------

    def client(self, **options: Any) -> SyncClient:
        """A blocking client (start it, or use it as a context manager)."""
        return SyncClient(self.controllers, self.secret, **options)

    def async_client(self, **options: Any) -> Client:
        """An asyncio client for the caller's own event loop."""
        return Client(self.controllers, self.secret, **options)

    def describe(self, directory: Path) -> ClusterLayout:
        """Write a description of this cluster (``cluster.toml`` and its secret file) in
        ``directory``, so the command line (``shardwise status --cluster-dir DIR``,
        ``shardwise sql``), ``shardwise.connect(DIR)`` and ``shardwise:///DIR`` URLs reach
        it; its processes are this one, so ``shardwise up``/``node`` must not run it."""
        directory = directory.resolve()
        layout = ClusterLayout(
            path=directory / DESCRIPTION_FILE,
            secret_file=directory / "secret",
            data_dir=self.data_dir,
            log_dir=directory / "logs",
            tick_ms=self.tick_ms,
            controllers=tuple(
                Process(name, "controller", address) for name, address in self.controllers.items()
            ),
            groups={
                gid: Group(
                    gid,
                    gid in self._joined,
                    tuple(
                        Process(f"g{gid}-{i + 1}", "server", server_address(s), gid)
                        for i, s in enumerate(servers)
                    ),
                )
                for gid, servers in self.servers.items()
            },
        )
        layout.write()
        ensure_secret(layout.secret_file)  # mode 0600, then the real secret in it
        layout.secret_file.write_bytes(self.secret + b"\n")
        return layout

    def join(self, *gids: int) -> ChangeResult:
        return self._admin(lambda admin: admin.join({g: self.servers[g] for g in gids}))

    def leave(self, *gids: int) -> ChangeResult:
        return self._admin(lambda admin: admin.leave(list(gids)))

    # --- internals ---------------------------------------------------------------------

    def _run(self, coroutine: Coroutine[Any, Any, T], timeout_s: float) -> T:
        future: Future[T] = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        return future.result(timeout_s)

    def _admin(self, change: Any) -> ChangeResult:
        async def run() -> ChangeResult:
            async with ControllerClient(self.controllers, self.secret) as admin:
                result: ChangeResult = await change(admin)
                return result

        return self._run(run(), START_TIMEOUT_S)

    def _config(self, node: str, address: Address, peers: dict[str, Address]) -> ReplicaConfig:
        return ReplicaConfig(
            node_id=node,
            listen=address,
            peers={p: a for p, a in peers.items() if p != node},
            data_dir=self.data_dir / node.replace(":", "_"),
            secret=self.secret,
            tick_ms=self.tick_ms,
        )

    async def _start(self) -> None:
        for node, address in self.controllers.items():
            self._services.append(ControllerServer(self._config(node, address, self.controllers)))
        for gid, servers in self.servers.items():
            peers = {s: server_address(s) for s in servers}
            for server in servers:
                config = self._config(server, peers[server], peers)
                self._services.append(ShardServer(config, gid, self.controllers))
        for service in self._services:
            await service.start()
        async with ControllerClient(self.controllers, self.secret) as admin:
            if (await admin.query()).num == 0:  # a fresh data directory: join once
                await admin.join({g: self.servers[g] for g in self._joined})

    async def _stop(self) -> None:
        for service in reversed(self._services):
            await service.stop()
        self._services.clear()
