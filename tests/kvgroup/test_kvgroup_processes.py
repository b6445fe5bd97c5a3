"""A Raft KV group as three real processes on loopback: load, SIGKILL the leader,
restart it, and check the whole client history for linearizability."""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import pytest

from shardwise.errors import ClientTimeoutError
from shardwise.kvgroup.client import KVGroupClient
from shardwise.testing.history import UNKNOWN_OUTPUT, KvOp, Operation, kv_model
from shardwise.testing.linearizability import Verdict, check
from shardwise.testing.procs import ProcessGroup

T = TypeVar("T")

WORKERS = 4
OPS_PER_WORKER = 60
KEYS = ["x", "y", "z"]


async def leader_of(client: KVGroupClient, group: ProcessGroup) -> str | None:
    for node in group.ids:
        if not group.alive(node):
            continue
        try:
            status = await client.status(node)
        except Exception:
            continue
        if status.role == "leader":
            return node
    return None


async def until(condition: Callable[[], Awaitable[T]], timeout_s: float, what: str) -> T:
    """Poll an async condition until it holds, failing after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = await condition()
        if result:
            return result
        await asyncio.sleep(0.05)  # polling a real cluster: the condition has a deadline
    raise AssertionError(f"{what} did not happen within {timeout_s} s")


async def worker(
    name: str, group: ProcessGroup, rng: random.Random, history: list[Operation], done: list[int]
) -> None:
    async with KVGroupClient(group.addresses, group.secret, client_id=name) as client:
        for i in range(OPS_PER_WORKER):
            key = rng.choice(KEYS)
            roll = rng.random()
            start = time.monotonic()
            output: str | bool | None = None
            try:
                if roll < 0.4:
                    op = KvOp("get", key)
                    output = await client.get(key, deadline_s=15)
                elif roll < 0.7:
                    op = KvOp("put", key, f"{name}.{i}")
                    await client.put(key, f"{name}.{i}", deadline_s=15)
                elif roll < 0.9:
                    op = KvOp("append", key, f"{name}.{i};")
                    await client.append(key, f"{name}.{i};", deadline_s=15)
                else:
                    expected = rng.choice([None, f"{name}.{i - 1}"])
                    op = KvOp("cas", key, expected, f"{name}.{i}")
                    output = await client.cas(key, expected, f"{name}.{i}", deadline_s=15)
            except ClientTimeoutError:
                history.append(Operation(name, op, UNKNOWN_OUTPUT, start, math.inf))
                continue
            history.append(Operation(name, op, output, start, time.monotonic()))
            done[0] += 1


@pytest.mark.slow
def test_sigkill_the_leader_under_load(tmp_path: Path, seed: int) -> None:
    asyncio.run(scenario(tmp_path, seed))


async def scenario(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    history: list[Operation] = []
    done = [0]
    with ProcessGroup(tmp_path) as group:
        group.start_all()
        async with KVGroupClient(group.addresses, group.secret, client_id="admin") as admin:
            start = time.monotonic()
            await admin.put("x", "init", deadline_s=30)
            history.append(
                Operation("admin", KvOp("put", "x", "init"), None, start, time.monotonic())
            )
            first = await until(lambda: leader_of(admin, group), 30, "an election")
            assert first is not None
            workers = [
                asyncio.create_task(
                    worker(f"w{i}", group, random.Random(rng.random()), history, done)
                )
                for i in range(WORKERS)
            ]
            await until(lambda: _at_least(done, WORKERS * OPS_PER_WORKER // 4), 60, "load")
            killed_at = time.monotonic()
            group.kill(first)  # SIGKILL: no flush, no goodbye
            second = await until(lambda: leader_of(admin, group), 30, "a new leader")
            assert second is not None
            assert second != first
            elected_after = time.monotonic() - killed_at
            # A few election timeouts: ticks of 50 ms, elections after 10-20 ticks.
            assert elected_after < 5.0, f"new leader only after {elected_after:.1f} s"
            group.start(first)
            await asyncio.gather(*workers)

            async def caught_up() -> bool:
                leader = await leader_of(admin, group)
                if leader is None:
                    return False
                target = (await admin.status(leader)).commit
                return (await admin.status(first)).applied >= target

            await until(caught_up, 30, f"the restarted {first} catching up")
            for key in KEYS:  # every acknowledged write must show in the final state
                start = time.monotonic()
                value = await admin.get(key, deadline_s=15)
                history.append(Operation("final", KvOp("get", key), value, start, time.monotonic()))
    codes = group.close()
    assert all(code == 0 for code in codes.values()), f"unclean exits: {codes}"
    completed = [op for op in history if op.completed]
    assert len(completed) >= WORKERS * OPS_PER_WORKER * 0.8
    result = check(kv_model, history, timeout=60)
    assert result.verdict is Verdict.LINEARIZABLE, result.explain()


async def _at_least(done: list[int], count: int) -> bool:
    return done[0] >= count
