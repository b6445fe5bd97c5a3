"""The simulator's nemesis, shared by the sweeps of the whole store (``shardsweep.py``,
``txnsweep.py``): joins, leaves and moves of groups and shards, crashes and restarts of
servers (group servers and controller replicas, at most one per Raft group at a time),
an isolated server, and a network that drops, duplicates and reorders messages. Every
choice comes from the run's seeded generator; each step is logged in :attr:`events`.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Coroutine
from typing import Any, Final

from shardwise.errors import ClientError, ControllerError, ShardwiseError
from shardwise.model.config import ShardId
from shardwise.testing.cluster import SimCluster

SETTLE_TIMEOUT_S: Final = 180.0
SHARDS: Final = 64
"""Shards of the default keyspace."""


class SimNemesis:
    def __init__(self, cluster: SimCluster, rng: random.Random) -> None:
        self.cluster = cluster
        self.rng = rng
        self.events: list[str] = []
        self.joined: set[int] = set()
        self.isolated: str | None = None

    def event(self, text: str) -> None:
        self.events.append(f"{asyncio.get_running_loop().time():8.2f} {text}")

    def down(self) -> list[str]:
        return sorted(s for s in self.every_server() if not self.cluster.running(s))

    def every_server(self) -> list[str]:
        c = self.cluster
        return [*c.controllers, *(s for servers in c.servers.values() for s in servers)]

    def _group_of(self, server: str) -> list[str]:
        c = self.cluster
        if server in c.controllers:
            return list(c.controllers)
        return next(servers for servers in c.servers.values() if server in servers)

    async def step(self) -> None:
        """One random fault or change."""
        c, rng = self.cluster, self.rng
        action = rng.choice(
            ["join", "leave", "move", "crash", "crash", "restart", "isolate", "heal", "weather"]
        )
        if action == "join" and len(self.joined) < len(c.servers):
            gid = rng.choice(sorted(set(c.servers) - self.joined))
            await self.change(f"join {gid}", c.join(gid))
            self.joined.add(gid)
        elif action == "leave" and len(self.joined) > 1:
            gid = rng.choice(sorted(self.joined))
            await self.change(f"leave {gid}", c.leave(gid))
            self.joined.discard(gid)
        elif action == "move" and self.joined:
            shard = ShardId("default", rng.randrange(SHARDS))
            gid = rng.choice(sorted(self.joined))
            await self.change(f"move {shard} to {gid}", c.move(shard, gid))
        elif action == "crash" and (
            candidates := [
                s
                for s in self.every_server()
                if c.running(s) and all(c.running(p) for p in self._group_of(s))
            ]
        ):
            server = rng.choice(candidates)
            self.event(f"crash {server}")
            await c.crash(server)
        elif action == "restart" and self.down():
            server = rng.choice(self.down())
            self.event(f"restart {server}")
            await c.restart(server)
        elif action == "isolate" and self.isolated is None:
            server = rng.choice(self.every_server())
            self.event(f"isolate {server}")
            self.isolated = server
            c.network.isolate(server)
        elif action == "heal":
            self.event("heal")
            self.isolated = None
            c.heal()
        elif action == "weather":
            on = rng.random() < 0.5
            self.event("unreliable network" if on else "reliable network")
            c.unreliable(on)

    async def change(self, what: str, change: Any) -> None:
        """A controller change; one that times out may still happen, so the nemesis
        learns the truth from the controller afterwards."""
        self.event(what)
        try:
            await change
        except (ClientError, ControllerError) as exc:
            self.event(f"  ({what} failed: {type(exc).__name__})")
        try:
            config = await self.cluster.configuration()
            self.joined = set(config.groups)
        except ShardwiseError:
            pass

    async def drive(
        self,
        clients: list[Coroutine[Any, Any, None]],
        duration_s: float,
        pause_s: tuple[float, float],
        stop: asyncio.Event,
        *,
        join_all: bool = False,
    ) -> list[str]:
        """Join a first group (``join_all``: every group), run ``clients`` under the
        nemesis for ``duration_s`` (virtual), then heal everything, restart what is down,
        stop the clients (``stop``) and let the cluster settle; the problems found."""
        c, loop = self.cluster, asyncio.get_running_loop()
        if join_all:
            await self.change("join all", c.join(*c.servers))
        else:
            first = self.rng.randint(1, len(c.servers))
            await self.change(f"join {first}", c.join(first))
        tasks = [asyncio.create_task(client) for client in clients]
        end = loop.time() + duration_s
        while loop.time() < end:
            await asyncio.sleep(self.rng.uniform(*pause_s))
            await self.step()
        self.event("end: heal, restart all, settle")
        c.heal()
        c.unreliable(False)
        for server in self.down():
            await c.restart(server)
        stop.set()
        await asyncio.gather(*tasks)
        problems: list[str] = []
        try:
            await c.settled(SETTLE_TIMEOUT_S)
        except TimeoutError as exc:
            problems.append(f"did not settle: {exc}")
        return problems
