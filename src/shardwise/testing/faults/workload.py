"""The workloads: a register per key (checked for linearizability) and a set (every
acknowledged insert must be in the final value).

Each client runs on its own seeded generator. A call that fails with a client error has
an unknown outcome (a write may still apply later): the history says so and the checker
lets it take effect at any time after its call, or never. A read that fails is left out:
it changed nothing and explains nothing.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field
from typing import Any, Final

from shardwise.client import Client
from shardwise.errors import ClientError
from shardwise.testing.history import UNKNOWN_OUTPUT, KvOp, Operation

REGISTER_VALUES: Final = 5
"""Registers hold "0".."4": few values make compare-and-set succeed often."""


@dataclass
class Attempt:
    key: str
    call: float
    done: float | None
    """When it succeeded; ``None`` for a call that failed or timed out."""


@dataclass
class Recorder:
    """What every client did, in loop time."""

    history: list[Operation] = field(default_factory=list)
    attempts: list[Attempt] = field(default_factory=list)
    inserted: dict[str, list[str]] = field(default_factory=dict)
    """Acknowledged set inserts, by key."""
    maybe_inserted: dict[str, list[str]] = field(default_factory=dict)
    unknown: int = 0


class Workload:
    def __init__(self, recorder: Recorder, registers: int, sets: int, think_s: float) -> None:
        self.recorder = recorder
        self.registers = [f"r{i}" for i in range(registers)]
        self.sets = [f"s{i}" for i in range(sets)]
        self.think_s = think_s
        self.stop = asyncio.Event()

    async def client(self, kv: Client, n: int, rng: random.Random) -> None:
        i = 0
        while not self.stop.is_set():
            i += 1
            if rng.random() < 0.25:
                await self.insert(kv, n, rng.choice(self.sets), f"<{n}.{i}>")
            else:
                key = rng.choice(self.registers)
                roll = rng.random()
                if roll < 0.5:
                    op = KvOp("get", key)
                elif roll < 0.8:
                    op = KvOp("put", key, str(rng.randrange(REGISTER_VALUES)))
                else:
                    old, new = rng.sample(range(REGISTER_VALUES), 2)
                    op = KvOp("cas", key, str(old), str(new))
                await self.register(kv, n, op)
            await asyncio.sleep(rng.uniform(0, 2 * self.think_s))

    async def register(self, kv: Client, client: object, op: KvOp) -> Any:
        loop = asyncio.get_running_loop()
        start = loop.time()
        key = str(op.key)
        try:
            if op.kind == "get":
                output: Any = await kv.get(key)
            elif op.kind == "put":
                await kv.put(key, op.value)
                output = None
            else:
                output = await kv.cas(key, op.value, op.new)
        except ClientError:
            self.recorder.attempts.append(Attempt(key, start, None))
            if op.kind != "get":
                self.recorder.unknown += 1
                self.recorder.history.append(Operation(client, op, UNKNOWN_OUTPUT, start))
            return UNKNOWN_OUTPUT
        end = loop.time()
        self.recorder.attempts.append(Attempt(key, start, end))
        self.recorder.history.append(Operation(client, op, output, start, end))
        return output

    async def insert(self, kv: Client, n: int, key: str, token: str) -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()
        try:
            await kv.append(key, token)
        except ClientError:
            self.recorder.attempts.append(Attempt(key, start, None))
            self.recorder.maybe_inserted.setdefault(key, []).append(token)
            self.recorder.unknown += 1
            return
        self.recorder.attempts.append(Attempt(key, start, loop.time()))
        self.recorder.inserted.setdefault(key, []).append(token)


def lost_and_doubled(
    recorder: Recorder, final: dict[str, str | None]
) -> tuple[list[str], list[str]]:
    """Acknowledged inserts missing from the final values, and inserts found twice."""
    lost, doubled = [], []
    for key in sorted({*recorder.inserted, *recorder.maybe_inserted}):
        value = final.get(key) or ""
        for token in recorder.inserted.get(key, []):
            if token not in value:
                lost.append(f"{key}: {token}")
        for token in [*recorder.inserted.get(key, []), *recorder.maybe_inserted.get(key, [])]:
            if value.count(token) > 1:
                doubled.append(f"{key}: {token} x{value.count(token)}")
    return lost, doubled
