"""A :class:`ProcessCluster` whose every server has a loopback address of its own.

Controller replica ``i`` listens on ``127.<net>.0.<i>`` and replica ``r`` of group ``g``
on ``127.<net>.<g>.<r>``; each dials from its own address too (``serve.py``), so a rule
on (source, destination) addresses cuts exactly one direction of one link. ``<net>`` is
chosen per cluster, so two clusters on one machine never share an address (nor a rule).
The cluster can also pause and resume a server (SIGSTOP / SIGCONT), and start servers
with the storage's test-only switches (``storage/segments.py``'s ``SYNCED_MARKS_ENV``).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import Final

from shardwise.net.links import Address
from shardwise.storage.segments import SYNCED_MARKS_ENV
from shardwise.testing.cluster import SECRET, Cluster, ProcessCluster
from shardwise.testing.procs import ProcessGroup

CONTROLLER_PORT: Final = 7100
SERVER_PORT: Final = 7200
"""Every server has an address of its own, so they can all use the same ports."""

MAX_GROUPS: Final = 250
"""Group ``g``'s servers are ``127.<net>.<g>.*``: one byte."""

NETS: Final = (16, 250)
"""The second byte of a cluster's addresses is drawn from this range (by process id):
away from 127.0.0.1, where everything else on the machine listens."""


class AddressedGroup(ProcessGroup):
    """A :class:`ProcessGroup` whose servers listen and dial on addresses of their own."""

    def __init__(
        self,
        base_dir: Path,
        hosts: list[str],
        port: int,
        *,
        ids_are_addresses: bool,
        prefix: str,
        module: str,
        environment: dict[str, str],
        tick_ms: int,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        super().__init__(
            base_dir,
            len(hosts),
            secret=SECRET,
            tick_ms=tick_ms,
            extra_args=extra_args,
            module=module,
            prefix=prefix,
            ids_are_addresses=ids_are_addresses,
        )
        if ids_are_addresses:
            self.ids = [f"{host}:{port}" for host in hosts]
        self.hosts = dict(zip(self.ids, hosts, strict=True))
        self.ports = {node: port for node in self.ids}
        self.environment = environment

    @property
    def addresses(self) -> dict[str, Address]:
        return {node: (self.hosts[node], port) for node, port in self.ports.items()}

    def command(self, node: str) -> list[str]:
        command = super().command(node)
        for i, arg in enumerate(command):
            if arg.startswith("--listen=") or arg.startswith("--peer="):
                name, _, rest = arg.partition("=")
                if name == "--peer":
                    peer, _, _ = rest.rpartition("=")
                    command[i] = f"--peer={peer}={self.hosts[peer]}:{self.ports[peer]}"
                else:
                    command[i] = f"--listen={self.hosts[node]}:{self.ports[node]}"
        settings = [f"{key}={value}" for key, value in sorted(self.environment.items())]
        module_at = command.index("-m")
        return [
            sys.executable, "-m", "shardwise.testing.faults.serve", self.hosts[node], *settings,
            "--", *command[module_at + 1 :],
        ]  # fmt: skip

    def signal(self, node: str, signum: signal.Signals) -> None:
        proc = self.procs[node]
        if proc.poll() is None:
            os.kill(proc.pid, signum)


class AddressedCluster(ProcessCluster):
    """See the module docstring. ``synced_marks``: the value of the storage's
    ``SYNCED_MARKS_ENV`` for every server ("" for off)."""

    def __init__(
        self,
        base_dir: Path,
        *,
        groups: int = 2,
        replicas: int = 3,
        controllers: int = 3,
        tick_ms: int = 50,
        synced_marks: str = "",
        net: int | None = None,
    ) -> None:
        if not 1 <= groups <= MAX_GROUPS:
            raise ValueError(f"groups must be in 1..{MAX_GROUPS}")
        Cluster.__init__(self)
        self.net = net if net is not None else NETS[0] + os.getpid() % (NETS[1] - NETS[0])
        self.secret = SECRET
        self.ca_dir = None
        environment = {SYNCED_MARKS_ENV: synced_marks} if synced_marks else {}
        self._controller = AddressedGroup(
            base_dir / "controller",
            [f"127.{self.net}.0.{i}" for i in range(1, controllers + 1)],
            CONTROLLER_PORT,
            ids_are_addresses=False,
            prefix="c",
            environment=environment,
            tick_ms=tick_ms,
            module="shardwise.controller",
        )
        self.controllers = self._controller.addresses
        flags = tuple(f"--controller={c}={h}:{p}" for c, (h, p) in self.controllers.items())
        self._groups: dict[int, ProcessGroup] = {
            gid: AddressedGroup(
                base_dir / f"group{gid}",
                [f"127.{self.net}.{gid}.{r}" for r in range(1, replicas + 1)],
                SERVER_PORT,
                ids_are_addresses=True,
                prefix="n",
                environment=environment,
                tick_ms=tick_ms,
                module="shardwise.shardserver",
                extra_args=(f"--group={gid}", *flags),
            )
            for gid in range(1, groups + 1)
        }
        self.servers = {gid: list(pg.ids) for gid, pg in self._groups.items()}
        self._owner = {s: pg for pg in (self._controller, *self._groups.values()) for s in pg.ids}
        self._admin_endpoint = None
        self._clients = 0
        self.paused: set[str] = set()

    def host(self, server: str) -> str:
        """``server``'s own address."""
        owner = self._owner[server]
        assert isinstance(owner, AddressedGroup)
        return owner.hosts[server]

    def every_server(self) -> list[str]:
        return [*self.controllers, *(s for servers in self.servers.values() for s in servers)]

    def last_log_line(self, server: str) -> str:
        """The last line ``server`` wrote to its log (why it exited, say)."""
        path = self._owner[server].base_dir / f"{server.replace(':', '_')}.log"
        try:
            lines = path.read_text(errors="replace").strip().splitlines()
        except FileNotFoundError:
            return ""
        return lines[-1] if lines else ""

    async def pause(self, server: str) -> None:
        """SIGSTOP: the process keeps its sockets and state but does nothing."""
        await asyncio.to_thread(self._signal, server, signal.SIGSTOP)
        self.paused.add(server)

    async def resume(self, server: str) -> None:
        await asyncio.to_thread(self._signal, server, signal.SIGCONT)
        self.paused.discard(server)

    def _signal(self, server: str, signum: signal.Signals) -> None:
        owner = self._owner[server]
        assert isinstance(owner, AddressedGroup)
        owner.signal(server, signum)

    async def crash(self, server: str) -> None:
        await super().crash(server)
        self.paused.discard(server)

    async def close(self) -> None:
        # A stopped process would ignore the SIGTERM of a clean shutdown until it ran out.
        for server in sorted(self.paused):
            if self.running(server):
                await self.resume(server)
        await super().close()
