"""The whole sharded store under a random nemesis, checked for linearizability.

One run, determined by its seed, in the simulator (:class:`SimCluster` on virtual time):
clients get, put and append a few keys through :class:`~shardwise.client.Client` while a
nemesis joins, leaves and moves groups and shards, crashes and restarts servers (group
servers and controller replicas, at most one per Raft group at a time), isolates servers
and makes the network drop, duplicate and reorder messages. At the end the network heals,
everything restarts, the cluster settles, and a final read of every key joins the
history. The history must be linearizable against the key-value model, and every
acknowledged append must be in its key's final value exactly once.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Hashable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from shardwise.client import Client
from shardwise.errors import ClientError
from shardwise.testing.cluster import SimCluster
from shardwise.testing.history import UNKNOWN_OUTPUT, KvOp, Operation, kv_model
from shardwise.testing.linearizability import CheckResult, Verdict, check
from shardwise.testing.simnemesis import SimNemesis

CHECK_MAX_STEPS: Final = 2_000_000
CALL_DEADLINE_S: Final = 4.0
"""A client call's deadline; past it the outcome is unknown (and recorded as such)."""


@dataclass
class ShardSweepOptions:
    groups: int = 3
    clients: int = 4
    keys: int = 6
    duration_s: float = 12.0
    """Virtual seconds of workload under the nemesis."""
    nemesis_pause_s: tuple[float, float] = (0.3, 1.5)
    think_s: tuple[float, float] = (0.01, 0.06)
    """A client's pause between operations: keeps histories checkable and runs short."""


@dataclass
class ShardSweepResult:
    seed: int
    verdict: Verdict
    operations: int
    events: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    check: CheckResult | None = None

    @property
    def ok(self) -> bool:
        return self.verdict is Verdict.LINEARIZABLE and not self.problems

    def describe(self) -> str:
        lines = [f"seed {self.seed}: {self.verdict.value}, {self.operations} operations"]
        lines += self.problems
        if self.check is not None and self.verdict is not Verdict.LINEARIZABLE:
            lines.append(self.check.explain())
        lines += ["nemesis:", *(f"  {e}" for e in self.events)]
        return "\n".join(lines)


class ShardSweep:
    def __init__(self, seed: int, base_dir: Path, options: ShardSweepOptions) -> None:
        self.seed = seed
        self.options = options
        self.rng = random.Random(seed)
        self.cluster = SimCluster(base_dir, groups=options.groups, seed=seed)
        self.keys = [f"k{i}" for i in range(options.keys)]
        self.history: list[Operation] = []
        self.appended: dict[str, list[str]] = {}
        self.nemesis = SimNemesis(self.cluster, self.rng)
        self._stop = asyncio.Event()

    # --- clients ---------------------------------------------------------------------

    async def _client(self, n: int) -> None:
        rng = random.Random(self.rng.getrandbits(64))
        loop = asyncio.get_running_loop()
        async with self.cluster.client(deadline_s=CALL_DEADLINE_S, first_seq=0) as kv:
            i = 0
            while not self._stop.is_set():
                key = rng.choice(self.keys)
                roll = rng.random()
                if roll < 0.4:
                    op = KvOp("get", key)
                elif roll < 0.6:
                    op = KvOp("put", key, f"{n}.{i};")
                else:
                    op = KvOp("append", key, f"{n}.{i};")
                i += 1
                await self._record(kv, n, op, loop)
                await asyncio.sleep(rng.uniform(*self.options.think_s))

    async def _record(
        self, kv: Client, client: Hashable, op: KvOp, loop: asyncio.AbstractEventLoop
    ) -> None:
        start = loop.time()
        key = str(op.key)
        try:
            if op.kind == "get":
                output: Any = await kv.get(key)
            elif op.kind == "put":
                await kv.put(key, op.value)
                output = None
            else:
                await kv.append(key, op.value)
                self.appended.setdefault(key, []).append(op.value)
                output = None
        except ClientError:
            # The outcome is unknown: a write may still apply later.
            self.history.append(Operation(client, op, UNKNOWN_OUTPUT, start))
            return
        self.history.append(Operation(client, op, output, start, loop.time()))

    # --- the run ---------------------------------------------------------------------

    async def run(self) -> ShardSweepResult:
        c = self.cluster
        loop = asyncio.get_running_loop()
        async with c:
            clients = [self._client(n) for n in range(self.options.clients)]
            problems = await self.nemesis.drive(
                clients, self.options.duration_s, self.options.nemesis_pause_s, self._stop
            )
            final: dict[str, str | None] = {}
            async with c.client(first_seq=0, deadline_s=60.0) as kv:
                for key in self.keys:
                    await self._record(kv, "final", KvOp("get", key), loop)
                    last = self.history[-1]
                    final[key] = last.output if last.completed else None
        for key, tokens in self.appended.items():
            value = final.get(key) or ""
            for token in tokens:
                count = value.count(token)
                # A later put may overwrite an append; what must never happen is twice.
                if count > 1:
                    problems.append(f"append {token!r} to {key} applied {count} times")
        result = check(kv_model, self.history, max_steps=CHECK_MAX_STEPS)
        return ShardSweepResult(
            self.seed, result.verdict, len(self.history), self.nemesis.events, problems, result
        )


async def run_shard_sweep(
    seed: int, base_dir: Path, options: ShardSweepOptions | None = None
) -> ShardSweepResult:
    """One seeded run; call it on a virtual-time loop. See the module docstring."""
    return await ShardSweep(seed, base_dir, options or ShardSweepOptions()).run()
