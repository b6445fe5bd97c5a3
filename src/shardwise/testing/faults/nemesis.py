"""The faults, Jepsen's nemeses: each one injected, held, then healed.

A fault is named by its kind (:data:`KINDS`); :meth:`Nemesis.inject` starts one and
returns what undoes it. Partitions need nftables (``firewall.py``), full disks a tmpfs
per server (``full_disks.py``); without them those kinds are skipped and the run says so.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Final

from shardwise.model.config import ShardId
from shardwise.testing.faults.cluster import AddressedCluster
from shardwise.testing.faults.disk import crash_disk
from shardwise.testing.faults.firewall import Firewall
from shardwise.testing.faults.full_disks import SmallDisks

PARTITIONS: Final = (
    "partition-halves",
    "partition-bridge",
    "isolate-leader",
    "one-way-leader",
    "client-cut-from-leader",
)
PROCESS_FAULTS: Final = (
    "pause-leader",
    "pause-follower",
    "crash-leader",
    "crash-follower",
    "crash-torn",
    "crash-group",
    "crash-controller",
)
DISK_FAULTS: Final = ("disk-full-leader", "disk-full-follower")
"""Another program takes every free byte of one shard server's disk."""
KINDS: Final = PARTITIONS + PROCESS_FAULTS + DISK_FAULTS
CLIENT_HOST: Final = "127.0.0.1"
"""Where the harness's clients dial from (the kernel's choice for a loopback address; the
servers dial from their own, ``serve.py``)."""
CHANGES: Final = ("move", "join", "leave")
"""Configuration changes, made during the faults by a task of their own."""
SHARDS: Final = 64
"""Shards of the default keyspace (``HashRangePartition``'s default)."""


@dataclass
class Injected:
    kind: str
    what: str
    undo: Callable[[], Awaitable[str]]
    """Heals the fault; returns what it found (e.g. the records a crash lost)."""


class Nemesis:
    def __init__(
        self,
        cluster: AddressedCluster,
        firewall: Firewall | None,
        rng: random.Random,
        *,
        lose_unsynced: bool,
        tear_synced: bool = False,
        disks: SmallDisks | None = None,
    ) -> None:
        self.cluster = cluster
        self.firewall = firewall
        self.disks = disks
        self.rng = rng
        self.lose_unsynced = lose_unsynced
        self.tear_synced = tear_synced
        self.joined: set[int] = set()
        self.restart_failures: list[str] = []
        """Servers that would not start again after a crash, and why."""

    def kinds(self) -> list[str]:
        """The kinds this machine can inject."""
        return [
            *(PARTITIONS if self.firewall is not None else ()),
            *PROCESS_FAULTS,
            *(DISK_FAULTS if self.disks is not None else ()),
        ]

    # --- finding victims ---------------------------------------------------------------

    async def _leader(self, gid: int) -> str:
        status = await self.cluster.group_status(gid)
        if status is not None:
            return status.node_id
        return self.rng.choice(self.cluster.servers[gid])

    def _group(self) -> int:
        return self.rng.choice(sorted(self.joined or self.cluster.servers))

    async def _follower(self, gid: int) -> str:
        leader = await self._leader(gid)
        return self.rng.choice([s for s in self.cluster.servers[gid] if s != leader])

    # --- partitions --------------------------------------------------------------------

    def _raft_groups(self) -> list[list[str]]:
        c = self.cluster
        return [sorted(c.controllers), *(sorted(c.servers[g]) for g in sorted(c.servers))]

    def _cut(self, sides: Iterable[Iterable[str]]) -> None:
        """Only servers on a common side talk (sides may overlap: a bridge)."""
        assert self.firewall is not None
        ips = {s: self.cluster.host(s) for s in self.cluster.every_server()}
        side_sets = [set(side) for side in sides]
        links = {
            (ips[a], ips[b])
            for a in ips
            for b in ips
            if a != b and not any(a in side and b in side for side in side_sets)
        }
        self.firewall.set_cuts(links)

    async def _heal_network(self) -> str:
        assert self.firewall is not None
        self.firewall.heal()
        return ""

    async def _partition(self, kind: str) -> Injected:
        assert self.firewall is not None
        if kind == "partition-halves":
            # One member of every Raft group on the minority side.
            minority = {self.rng.choice(group) for group in self._raft_groups()}
            majority = set(self.cluster.every_server()) - minority
            self._cut([minority, majority])
            what = f"minority {sorted(minority)}"
        elif kind == "partition-bridge":
            # In every group: a and c cannot talk, b talks to both.
            left, right = set(), set()
            for group in self._raft_groups():
                a, b, c = self.rng.sample(group, 3)
                left |= {a, b}
                right |= {b, c}
            self._cut([left, right])
            what = f"bridges {sorted(left & right)}"
        else:
            gid = self._group()
            leader = await self._leader(gid)
            ip = self.cluster.host(leader)
            others = [self.cluster.host(s) for s in self.cluster.every_server() if s != leader]
            if kind == "isolate-leader":
                self.firewall.set_cuts([*((ip, o) for o in others), *((o, ip) for o in others)])
            elif kind == "one-way-leader":  # it hears everyone, nobody hears it
                self.firewall.set_cuts([(ip, o) for o in others])
            else:  # client-cut-from-leader: the servers are fine, the clients cannot reach it
                self.firewall.set_cuts([(CLIENT_HOST, ip), (ip, CLIENT_HOST)])
            what = f"group {gid}'s leader {leader}"
        return Injected(kind, what, self._heal_network)

    # --- processes ---------------------------------------------------------------------

    async def _fill_disk(self, kind: str) -> Injected:
        assert self.disks is not None
        disks = self.disks
        gid = self._group()
        server = await (self._leader(gid) if kind == "disk-full-leader" else self._follower(gid))
        taken = await asyncio.to_thread(disks.fill, server)

        async def give_back() -> str:
            await asyncio.to_thread(disks.heal, server)
            return ""

        return Injected(kind, f"{server} ({taken >> 20} MiB of ballast)", give_back)

    async def inject(self, kind: str) -> Injected:
        if kind in PARTITIONS:
            return await self._partition(kind)
        if kind in DISK_FAULTS:
            return await self._fill_disk(kind)
        c = self.cluster
        if kind in ("pause-leader", "pause-follower"):
            gid = self._group()
            server = await (self._leader(gid) if kind == "pause-leader" else self._follower(gid))
            await c.pause(server)

            async def resume() -> str:
                await c.resume(server)
                return ""

            return Injected(kind, server, resume)
        if kind == "crash-group":
            victims = list(c.servers[self._group()])
        elif kind == "crash-controller":
            victims = [self.rng.choice(sorted(c.controllers))]
        elif kind == "crash-leader":
            victims = [await self._leader(self._group())]
        else:
            victims = [await self._follower(self._group())]
        for server in victims:
            await c.crash(server)
        # Restarted in a random order: who comes back first decides who can be elected.
        self.rng.shuffle(victims)

        async def restart() -> str:
            found = []
            for server in victims:
                damage = crash_disk(
                    c.raft_dir(server),
                    self.rng,
                    lose_unsynced=self.lose_unsynced,
                    tear=kind == "crash-torn",
                    tear_synced=self.tear_synced,
                )
                found.append(f"{server}: {damage}")
                try:
                    await c.restart(server)
                except (RuntimeError, TimeoutError) as exc:
                    self.restart_failures.append(f"{server}: {exc}: {c.last_log_line(server)}")
            return "; ".join(found)

        return Injected(kind, ", ".join(victims), restart)

    # --- configuration changes ---------------------------------------------------------

    async def change(self, kind: str) -> tuple[str, str]:
        """A join, leave or move (``kind``, or a move when it cannot be done): the kind
        done and what it was (the caller handles failures)."""
        c = self.cluster
        if kind == "join" and len(self.joined) < len(c.servers):
            gid = self.rng.choice(sorted(set(c.servers) - self.joined))
            await c.join(gid)
            return "join", f"group {gid}"
        if kind == "leave" and len(self.joined) > 1:
            gid = self.rng.choice(sorted(self.joined))
            await c.leave(gid)
            return "leave", f"group {gid}"
        if self.joined:
            shard = ShardId("default", self.rng.randrange(SHARDS))
            gid = self.rng.choice(sorted(self.joined))
            await c.move(shard, gid)
            return "move", f"shard {shard.index} to group {gid}"
        return kind, "nothing to change"
