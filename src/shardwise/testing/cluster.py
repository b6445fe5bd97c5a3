"""Build a whole sharded cluster to test against: a controller and replica groups, either
as real processes on loopback or inside the simulator, behind one API.

    async with ProcessCluster(tmp_path, groups=3) as cluster:     # real processes
    async with SimCluster(tmp_path, groups=3, seed=7) as cluster: # virtual time, faults
        await cluster.join(1, 2)
        async with cluster.client() as kv:
            await kv.put("k", "v")
        await cluster.crash(cluster.servers[1][0]); await cluster.restart(...)
        await cluster.leave(1)
        await cluster.settled()        # every group at the latest configuration, no move
                                       # in flight, every hand-off confirmed

Group ``g``'s servers are ``cluster.servers[g]`` (ids that are addresses); the controller's
replicas are ``cluster.controllers``. Only :class:`SimCluster` can partition servers and
make the network unreliable (a real kernel's loopback is reliable).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import ssl
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any, Final, Self, TypeVar

from shardwise.client import Client
from shardwise.controller.client import ControllerClient
from shardwise.controller.server import ControllerServer
from shardwise.errors import NetError
from shardwise.model.config import ChangeResult, Configuration, ShardId
from shardwise.model.replies import ServiceReply
from shardwise.net.endpoint import Endpoint
from shardwise.net.leader import LeaderRouter
from shardwise.net.links import Address
from shardwise.net.rpc import RpcMethod
from shardwise.net.tls import TlsFiles
from shardwise.net.transport import Transport
from shardwise.net.wire import PeerRole
from shardwise.service import ReplicaConfig, ReplicaService
from shardwise.shardserver.protocol import STATUS, StatusReply, StatusRequest, server_address
from shardwise.shardserver.server import ShardServer
from shardwise.storage.memory import MemoryStorage
from shardwise.testing.simnet import SimNetwork
from shardwise.testing.simtransport import SimTransport

Req = TypeVar("Req")
Resp = TypeVar("Resp")
R = TypeVar("R", bound=ServiceReply)

SECRET: Final = b"test-secret-for-a-local-cluster"
SETTLE_TIMEOUT_S: Final = 60.0
STATUS_TIMEOUT_S: Final = 1.0
CALL_TIMEOUT_S: Final = 20.0
POLL_S: Final = 0.05


class Cluster(ABC):
    """What both kinds of cluster share; subclasses start and stop the servers."""

    controllers: dict[str, Address]
    servers: dict[int, list[str]]
    secret: bytes

    def __init__(self) -> None:
        self._admin: ControllerClient | None = None
        self._probe: Endpoint | None = None

    # --- life ------------------------------------------------------------------------

    @abstractmethod
    async def start(self) -> None: ...

    @abstractmethod
    async def close(self) -> None: ...

    @abstractmethod
    async def crash(self, server: str) -> None:
        """Stop ``server`` at once, as a power cut would (it keeps what it synced)."""

    @abstractmethod
    async def restart(self, server: str) -> None:
        """Start a crashed or stopped ``server`` again on its data."""

    @abstractmethod
    def client(self, **options: Any) -> Client:
        """A (not yet started) client of this cluster."""

    @abstractmethod
    def running(self, server: str) -> bool: ...

    async def __aenter__(self) -> Self:
        try:
            await self.start()
        except BaseException:
            # A start that fails half way (a server that never says READY) must not leave
            # the servers it did start running, holding their ports, after the test.
            await self.close()
            raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # --- the controller --------------------------------------------------------------

    @property
    def admin(self) -> ControllerClient:
        assert self._admin is not None, "start the cluster first"
        return self._admin

    async def join(self, *gids: int) -> ChangeResult:
        return await self.admin.join({g: self.servers[g] for g in gids})

    async def leave(self, *gids: int) -> ChangeResult:
        return await self.admin.leave(list(gids))

    async def move(self, shard: ShardId, gid: int) -> ChangeResult:
        return await self.admin.move(shard, gid)

    async def configuration(self) -> Configuration:
        return await self.admin.query()

    async def shutdown_group(self, gid: int) -> None:
        for server in self.servers[gid]:
            if self.running(server):
                await self.crash(server)

    async def start_group(self, gid: int) -> None:
        for server in self.servers[gid]:
            if not self.running(server):
                await self.restart(server)

    # --- watching --------------------------------------------------------------------

    async def status(self, server: str) -> StatusReply | None:
        """``server``'s own report, or None if it does not answer."""
        assert self._probe is not None
        try:
            return await self._probe.call(
                server, STATUS, StatusRequest(), timeout_s=STATUS_TIMEOUT_S
            )
        except NetError:
            return None

    async def call(self, server: str, method: RpcMethod[Req, Resp], request: Req) -> Resp:
        """One call to one server (transport errors raise)."""
        assert self._probe is not None
        return await self._probe.call(server, method, request, timeout_s=CALL_TIMEOUT_S)

    async def call_group(self, gid: int, method: RpcMethod[Any, R], request: object) -> R:
        """A call to ``gid``'s leader, found and retried like a client does."""
        assert self._probe is not None
        router = LeaderRouter(self._probe, self.servers[gid])
        return await router.call(method, request, CALL_TIMEOUT_S)

    async def group_status(self, gid: int) -> StatusReply | None:
        """The report of ``gid``'s leader, if one answers."""
        replies = await asyncio.gather(*(self.status(s) for s in self.servers[gid]))
        leaders = [r for r in replies if r is not None and r.role == "leader"]
        return max(leaders, key=lambda r: r.term) if leaders else None

    async def settled(self, timeout_s: float = SETTLE_TIMEOUT_S, gids: Iterable[int] = ()) -> None:
        """Wait until every live group (or ``gids``) is at the latest configuration with
        nothing pulling and no frozen copy left: every move done and garbage-collected."""
        await wait_until(self._is_settled(list(gids)), timeout_s, "the cluster to settle")

    def _is_settled(self, gids: list[int]) -> Callable[[], Awaitable[bool]]:
        async def check() -> bool:
            latest = await self.configuration()
            for gid in gids or [g for g in self.servers if any(map(self.running, self.servers[g]))]:
                status = await self.group_status(gid)
                if status is None:
                    return False
                if status.config_num != latest.num:
                    return False
                if any(info.state != "serving" for info in status.shards):
                    return False
                if {i.shard for i in status.shards} != set(latest.shards_of(gid)):
                    return False
            return True

        return check

    def _add_servers_to(self, endpoint: Endpoint) -> None:
        for servers in self.servers.values():
            for server in servers:
                endpoint.set_peer(server, server_address(server))


async def wait_until(condition: Callable[[], Awaitable[bool]], timeout_s: float, what: str) -> None:
    """Poll ``condition`` until it holds; ``TimeoutError`` naming ``what`` after
    ``timeout_s`` (loop time: virtual in the simulator)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        with contextlib.suppress(NetError, TimeoutError):
            if await condition():
                return
        if loop.time() >= deadline:
            raise TimeoutError(f"waited {timeout_s} s for {what}")
        await asyncio.sleep(POLL_S)


def _group_dirs(base: Path, gid: int) -> Path:
    return base / f"group{gid}"


class ProcessCluster(Cluster):
    """Every controller replica and group server its own process on loopback."""

    def __init__(
        self,
        base_dir: Path,
        *,
        groups: int = 3,
        replicas: int = 3,
        controllers: int = 3,
        tick_ms: int = 50,
        snapshot_every: int | None = None,
        tls: bool = False,
        server_args: tuple[str, ...] = (),
    ) -> None:
        """``tls``: a CA under ``base_dir/ca``, a node certificate per server, TLS on
        every connection (the harness's own clients verify the servers against the CA).
        ``server_args``: more flags for every group server (``--check-interval=1``)."""
        super().__init__()
        from shardwise.testing.procs import ProcessGroup  # noqa: PLC0415 - processes only

        self.secret = SECRET
        self.ca_dir: Path | None = None
        if tls:
            from shardwise.net.certs import make_ca  # noqa: PLC0415 - only with TLS

            self.ca_dir = base_dir / "ca"
            make_ca(self.ca_dir)
        self._controller = ProcessGroup(
            base_dir / "controller",
            controllers,
            secret=SECRET,
            tick_ms=tick_ms,
            module="shardwise.controller",
            prefix="c",
            tls_ca=self.ca_dir,
        )
        self.controllers = self._controller.addresses
        flags = tuple(f"--controller={c}={h}:{p}" for c, (h, p) in self.controllers.items())
        self._groups = {
            gid: ProcessGroup(
                _group_dirs(base_dir, gid),
                replicas,
                secret=SECRET,
                tick_ms=tick_ms,
                module="shardwise.shardserver",
                ids_are_addresses=True,
                tls_ca=self.ca_dir,
                extra_args=(
                    f"--group={gid}",
                    *flags,
                    *([f"--snapshot-every={snapshot_every}"] if snapshot_every else []),
                    *server_args,
                ),
            )
            for gid in range(1, groups + 1)
        }
        self.servers = {gid: list(pg.ids) for gid, pg in self._groups.items()}
        self._owner = {s: pg for pg in (self._controller, *self._groups.values()) for s in pg.ids}
        self._admin_endpoint: Transport | None = None
        self._clients = 0

    def data_dir(self, server: str) -> Path:
        """Where ``server`` keeps its data (its ``--data``)."""
        return self._owner[server].base_dir / server.replace(":", "_")

    def raft_dir(self, server: str) -> Path:
        """Where ``server`` keeps its Raft log (``ReplicaService``'s layout)."""
        return self.data_dir(server) / "raft"

    @property
    def client_ssl(self) -> ssl.SSLContext | None:
        """What a client of this cluster dials with (``None`` without TLS)."""
        if self.ca_dir is None:
            return None
        from shardwise.net.certs import CA_CERT  # noqa: PLC0415
        from shardwise.net.tls import client_context  # noqa: PLC0415

        return client_context(self.ca_dir / CA_CERT)

    def client_transport(self, client_id: str) -> Transport:
        """A (not yet started) client endpoint of this cluster, over TLS if it runs TLS."""
        from shardwise.net.transport import Transport  # noqa: PLC0415

        return Transport(client_id, self.secret, role=PeerRole.CLIENT, client_ssl=self.client_ssl)

    def tls_files(self, server: str) -> TlsFiles:
        """``server``'s TLS files (a TLS cluster only)."""
        return self._owner[server].tls[server]

    async def start(self) -> None:
        await asyncio.to_thread(self._controller.start_all)
        for pg in self._groups.values():
            await asyncio.to_thread(pg.start_all)
        self._admin_endpoint = self.client_transport("cluster-admin")
        await self._admin_endpoint.start()
        self._admin = ControllerClient(
            self.controllers, self.secret, "cluster-admin", transport=self._admin_endpoint
        )
        await self._admin.start()
        self._probe = self.client_transport("cluster-probe")
        self._add_servers_to(self._probe)
        await self._probe.start()

    async def close(self) -> None:
        if self._probe is not None:
            await self._probe.close()
        if self._admin is not None:
            await self._admin.close()
        if self._admin_endpoint is not None:
            await self._admin_endpoint.close()
        for pg in self._groups.values():
            await asyncio.to_thread(pg.close)
        await asyncio.to_thread(self._controller.close)

    async def crash(self, server: str) -> None:
        await asyncio.to_thread(self._owner[server].kill, server)

    async def restart(self, server: str) -> None:
        await asyncio.to_thread(self._owner[server].start, server)

    def running(self, server: str) -> bool:
        return self._owner[server].alive(server)

    def client(self, **options: Any) -> Client:
        if self.ca_dir is None:
            return Client(self.controllers, self.secret, **options)
        self._clients += 1
        endpoint = self.client_transport(options.get("client_id") or f"tls-client-{self._clients}")
        return _OwnEndpointClient(endpoint, self.controllers, self.secret, **options)


async def kill_leaders_and_clients(
    cluster: Cluster,
    rng: random.Random,
    seconds: float,
    kill_client: Callable[[], Awaitable[None]],
) -> list[str]:
    """For ``seconds`` of loop time, every 1-3 s: either ``kill -9`` a random group's
    leader (``crash``) and restart it 0.2-1.5 s later, or ``kill_client()`` (kill a client
    process mid-whatever and start another). The events, for the failure message."""
    events: list[str] = []
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    while loop.time() < end:
        await asyncio.sleep(rng.uniform(1.0, 3.0))
        if rng.random() < 0.5:
            gid = rng.choice(sorted(cluster.servers))
            status = await cluster.group_status(gid)
            if status is None:
                continue
            events.append(f"kill -9 group {gid}'s leader {status.node_id}")
            await cluster.crash(status.node_id)
            await asyncio.sleep(rng.uniform(0.2, 1.5))
            await cluster.restart(status.node_id)
        else:
            await kill_client()
            events.append("kill -9 a client process")
    return events


class _OwnEndpointClient(Client):
    """A client on an endpoint made for it (simulated, or over TLS); it starts and
    closes that endpoint."""

    def __init__(self, endpoint: Endpoint, *args: Any, **options: Any) -> None:
        super().__init__(*args, transport=endpoint, **options)
        self._endpoint = endpoint

    async def start(self) -> None:
        await self._endpoint.start()
        await super().start()

    async def close(self) -> None:
        await super().close()
        await self._endpoint.close()


class SimCluster(Cluster):
    """The same servers, in one process, on a :class:`SimNetwork`: run it on a
    :class:`~shardwise.testing.virtualtime.VirtualTimeLoop` (``@pytest.mark.virtual_time``)
    and a minute of cluster time takes a second or two. Each server keeps its Raft state
    in a :class:`MemoryStorage` (a crash keeps what was synced) and its shard files under
    ``base_dir``. All randomness comes from ``seed``."""

    def __init__(
        self,
        base_dir: Path,
        *,
        groups: int = 3,
        replicas: int = 3,
        controllers: int = 3,
        seed: int = 0,
        tick_ms: int = 50,
        snapshot_every: int = 50,
    ) -> None:
        super().__init__()
        self.base_dir = base_dir
        self.secret = SECRET
        self.rng = random.Random(seed)
        self.network = SimNetwork(random.Random(self.rng.getrandbits(64)))
        self.tick_ms = tick_ms
        self.snapshot_every = snapshot_every
        self.controllers = {f"c{i}": ("127.0.0.2", 7100 + i) for i in range(1, controllers + 1)}
        self.servers = {
            gid: [f"127.0.0.{gid + 10}:{7200 + r}" for r in range(1, replicas + 1)]
            for gid in range(1, groups + 1)
        }
        self._gid_of = {s: gid for gid, servers in self.servers.items() for s in servers}
        self._storage: dict[str, MemoryStorage] = {}
        self._live: dict[str, ReplicaService[Any]] = {}
        self._clients = 0
        self._admin_endpoint: SimTransport | None = None

    # --- life ------------------------------------------------------------------------

    async def start(self) -> None:
        for server in [*self.controllers, *self._gid_of]:
            await self.restart(server)
        self._admin_endpoint = self._endpoint("admin")
        await self._admin_endpoint.start()
        self._admin = ControllerClient(
            self.controllers, self.secret, "cluster-admin", transport=self._admin_endpoint
        )
        self._probe = self._endpoint("probe")
        await self._probe.start()

    async def close(self) -> None:
        for endpoint in (self._probe, self._admin_endpoint):
            if endpoint is not None:
                await endpoint.close()
        for server in list(self._live):
            await self._live.pop(server).stop()

    def _endpoint(self, name: str) -> SimTransport:
        return SimTransport(name, self.network, role=PeerRole.CLIENT)

    def _config(self, server: str, peers: Iterable[str]) -> ReplicaConfig:
        return ReplicaConfig(
            node_id=server,
            listen=("127.0.0.1", 0),
            peers={p: ("127.0.0.1", 0) for p in peers if p != server},
            data_dir=self.base_dir / server.replace(":", "_"),
            secret=self.secret,
            tick_ms=self.tick_ms,
            snapshot_every=self.snapshot_every,
        )

    async def restart(self, server: str) -> None:
        if server in self._live:
            raise RuntimeError(f"{server} is running")
        storage = self._storage.setdefault(server, MemoryStorage())
        transport = SimTransport(server, self.network)
        service: ReplicaService[Any]
        if server in self.controllers:
            config = self._config(server, self.controllers)
            service = ControllerServer(config, transport=transport, storage=storage)
        else:
            gid = self._gid_of[server]
            config = self._config(server, self.servers[gid])
            service = ShardServer(
                config, gid, self.controllers, transport=transport, storage=storage
            )
        self.network.up(server)
        await service.start()
        self._live[server] = service

    async def crash(self, server: str) -> None:
        """The server stops at once; its storage keeps only what it had synced."""
        service = self._live.pop(server)
        self.network.down(server)
        if isinstance(service, ShardServer):
            await service.stop_tasks()
        await service.host.stop(close_storage=False)
        await service.transport.close()
        if isinstance(service, ShardServer):
            service.state_machine.close()
        self._storage[server] = self._storage[server].crash()

    def running(self, server: str) -> bool:
        return server in self._live

    def client(self, **options: Any) -> Client:
        self._clients += 1
        endpoint = self._endpoint(f"client-{self._clients}")
        options.setdefault("client_id", f"client-{self._clients}")
        return _OwnEndpointClient(endpoint, self.controllers, self.secret, **options)

    # --- faults ----------------------------------------------------------------------

    def partition(self, *sides: Iterable[str]) -> None:
        self.network.partition(*sides)

    def heal(self) -> None:
        self.network.heal()

    def unreliable(self, on: bool = True) -> None:
        """Drop 10% and duplicate 10% of messages, and reorder them."""
        if on:
            self.network.set_faults(drop=0.1, duplicate=0.1, reorder=True)
        else:
            self.network.set_faults(drop=0.0, duplicate=0.0, reorder=False)
