"""The pre-copy of a moving shard, in the simulator: the source keeps serving while the
target copies a base, freezes only once the target holds it, and then only the delta
moves; a target that is down holds the source back for a bounded time only."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import msgspec
import pytest

from shardwise.model.config import ShardId
from shardwise.shardserver.commands import (
    Command,
    InstallBase,
    InstallChunk,
    InstallDelta,
    Reconfigure,
    decode,
)
from shardwise.shardserver.migration import source as source_module
from shardwise.shardserver.migration import transfer as transfer_module
from shardwise.shardserver.migration.image import EXPORT_HEADER
from shardwise.shardserver.migration.reconciler import Reconciler
from shardwise.shardserver.statemachine import ShardGroupStateMachine
from shardwise.shardserver.tracking import ShardDelta
from shardwise.testing.cluster import SimCluster, wait_until
from shardwise.testing.scenarios import shard_of


@dataclass(frozen=True)
class Applied:
    gid: int
    directory: Path
    time: float
    command: Command


@pytest.fixture
def applied(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Applied]]:
    """Every group command every replica applies, with the loop time it applied it."""
    log: list[Applied] = []
    original = ShardGroupStateMachine.apply

    def apply(self: ShardGroupStateMachine, index: int, command: bytes) -> bytes:
        now = asyncio.get_running_loop().time()
        log.append(Applied(self.gid, self.directory, now, decode(command)))
        return original(self, index, command)

    monkeypatch.setattr(ShardGroupStateMachine, "apply", apply)
    yield log


@dataclass(frozen=True)
class Proposed:
    gid: int
    start: float
    end: float
    command: Command


@pytest.fixture
def proposed(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Proposed]]:
    """Every install command a group's leader proposes, with the loop times it proposed it
    and heard the outcome."""
    log: list[Proposed] = []
    original = Reconciler.propose

    async def propose(self: Reconciler, command: Command) -> bool:
        loop = asyncio.get_running_loop()
        start = loop.time()
        try:
            return await original(self, command)
        finally:
            if isinstance(command, InstallChunk | InstallBase | InstallDelta):
                log.append(Proposed(self.gid, start, loop.time(), command))

    monkeypatch.setattr(Reconciler, "propose", propose)
    yield log


def base_pieces(log: list[Proposed], gid: int) -> list[Proposed]:
    """The pieces of the first base ``gid`` logged, in order."""
    base = next(p for p in log if p.gid == gid and isinstance(p.command, InstallBase))
    pieces = [p for p in log if p.gid == gid and isinstance(p.command, InstallChunk)]
    return sorted((p for p in pieces if p.end <= base.start), key=lambda p: p.start)


def one_replica(log: list[Applied], gid: int) -> list[Applied]:
    first = next(a.directory for a in log if a.gid == gid)
    return [a for a in log if a.directory == first]


@pytest.mark.virtual_time
@pytest.mark.parametrize("slow_copy", [False, True], ids=["copy", "slow-copy"])
async def test_the_source_serves_until_the_target_holds_a_base(
    tmp_path: Path,
    seed: int,
    *,
    applied: list[Applied],
    proposed: list[Proposed],
    slow_copy: bool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if slow_copy:  # a copy far longer than the source's plain wait: progress keeps it waiting
        monkeypatch.setattr(source_module, "PRECOPY_WAIT_S", 0.5)
    monkeypatch.setattr(transfer_module, "INSTALL_CHUNK_BYTES", 2048 if slow_copy else 32 << 10)
    async with SimCluster(tmp_path, groups=2, seed=seed) as cluster:
        await cluster.join(1, 2)
        config = await cluster.configuration()
        shard = config.shards_of(1)[0]
        keys = [k for k in (f"key-{i}" for i in range(3000)) if shard_of(config, k) == shard]
        acknowledged: dict[str, str] = {}
        async with cluster.client() as kv:
            await kv.mput({k: "x" * 2000 for k in keys})  # a base of a few hundred KB
            await cluster.settled()
            stop = asyncio.Event()

            async def writer() -> None:
                n = 0
                while not stop.is_set():
                    key, value = keys[n % len(keys)], f"write {n}"
                    await kv.put(key, value)
                    acknowledged[key] = value
                    n += 1

            async def written(count: int) -> bool:
                return len(acknowledged) >= count

            task = asyncio.create_task(writer())
            await wait_until(lambda: written(5), 30, "writes before the move")
            await cluster.move(shard, 2)
            moved = await cluster.configuration()

            async def served_by_2() -> bool:
                status = await cluster.group_status(2)
                states = {i.shard: i.state for i in status.shards} if status else {}
                return states.get(shard) == "serving"

            try:
                await wait_until(served_by_2, 120, "group 2 serving the shard")
                await wait_until(lambda: written(len(keys)), 60, "writes after the move")
            finally:
                stop.set()
                await task
            found = await kv.mget(list(acknowledged))
        assert found == acknowledged  # no acknowledged write lost across the move
    check_base_then_delta(applied, shard, keys, moved.num)
    # The base was taken while the shard served, so its pieces left the log free at
    # least PRECOPY_PAUSE_RATIO times as long as each took.
    pieces = base_pieces(proposed, 2)
    assert len(pieces) >= 2
    for before, after in itertools.pairwise(pieces):
        took = before.end - before.start
        # (On virtual time the pause can equal its bound exactly, up to float rounding.)
        assert after.start - before.end >= transfer_module.PRECOPY_PAUSE_RATIO * took - 1e-9


def check_base_then_delta(
    applied: list[Applied], shard: ShardId, keys: list[str], num: int
) -> None:
    """The target logged a base, the source froze after it, and the delta after that
    carried the writes made during the copy."""
    target = one_replica(applied, 2)
    base = next(a for a in target if isinstance(a.command, InstallBase))
    delta = next(a for a in target if isinstance(a.command, InstallDelta))
    assert isinstance(base.command, InstallBase) and isinstance(delta.command, InstallDelta)
    assert base.command.config_num == delta.command.config_num == num
    assert delta.command.since == base.command.version
    freeze = next(
        a
        for a in one_replica(applied, 1)
        if isinstance(a.command, Reconfigure) and a.command.config.num == num
    )
    # The source froze the shard only once the target held its base ...
    assert base.time <= freeze.time <= delta.time
    # ... and what moved after the freeze is the delta: the writes made during the copy.
    chunks = [
        a.command
        for a in target
        if isinstance(a.command, InstallChunk) and base.time < a.time <= delta.time
    ]
    framed = b"".join(c.data for c in chunks)
    assert len(framed) == delta.command.total < base.command.total / 10
    changes = msgspec.msgpack.decode(framed[EXPORT_HEADER.size :], type=ShardDelta)
    assert changes.shard == str(shard) and changes.upserts  # written while it was copied
    assert {key for key, _, _ in changes.upserts} <= {k.encode() for k in keys}  # keys: bytes


@pytest.mark.virtual_time
async def test_a_target_that_is_down_holds_the_source_back_for_a_bounded_time(
    tmp_path: Path,
    seed: int,
    applied: list[Applied],
    proposed: list[Proposed],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(transfer_module, "INSTALL_CHUNK_BYTES", 2048)  # a base of pieces
    async with SimCluster(tmp_path, groups=2, seed=seed) as cluster:
        await cluster.join(1, 2)
        config = await cluster.configuration()
        shard: ShardId = config.shards_of(1)[0]
        key = next(k for k in (f"key-{i}" for i in range(1000)) if shard_of(config, k) == shard)
        async with cluster.client() as kv:
            await kv.put(key, "before")
            await cluster.settled()
            await cluster.shutdown_group(2)
            loop = asyncio.get_running_loop()
            started = loop.time()
            await cluster.move(shard, 2)
            moved = await cluster.configuration()

            async def source_moved_on() -> bool:
                return any(
                    isinstance(a.command, Reconfigure) and a.command.config.num == moved.num
                    for a in applied
                    if a.gid == 1
                )

            await wait_until(source_moved_on, 60, "group 1 at the new configuration")
            waited = loop.time() - started
            assert source_module.PRECOPY_WAIT_S <= waited < source_module.PRECOPY_WAIT_S + 10
            await cluster.start_group(2)
            assert await kv.get(key) == "before"  # a base of the frozen copy, and its delta
            await kv.put(key, "after")
            assert await kv.get(key) == "after"
    # The base was the frozen copy, which writes to the shard wait for: not paced.
    pieces = base_pieces(proposed, 2)
    assert len(pieces) >= 3
    idle = sum(after.start - before.end for before, after in itertools.pairwise(pieces))
    assert idle < 0.1 * sum(p.end - p.start for p in pieces)
