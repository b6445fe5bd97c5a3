"""Issue 21, findings 1 and 2, on a KV group of three real processes: a follower whose
disk lost the last record of its log (synced data it had acknowledged) must catch up
again; a replica whose hard-state file is gone must refuse to start, and the documented
recovery (delete its data directory, start it empty) must bring it back."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Final

from shardwise.kvgroup.client import KVGroupClient
from shardwise.storage.hardstate import HARD_STATE_NAME, read_hard_state
from shardwise.storage.record import scan_segment
from shardwise.storage.recovery import list_segments
from shardwise.testing.procs import ProcessGroup

CATCH_UP_S: Final = 15.0
"""How long a restarted follower may take to apply what the leader committed: a few
heartbeats (50 ms ticks) and round trips suffice; without the fix it never does."""
START_TIMEOUT_S: Final = 30.0
WRITES: Final = 10


async def until(condition: Callable[[], Awaitable[bool]], timeout_s: float, what: str) -> None:
    """Poll an async condition until it holds, failing after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if await condition():
            return
        await asyncio.sleep(0.05)  # polling real processes: the condition has a deadline
    raise AssertionError(f"{what} did not happen within {timeout_s} s")


async def leader_of(client: KVGroupClient, group: ProcessGroup) -> str | None:
    for node in group.ids:
        if group.alive(node):
            try:
                if (await client.status(node)).role == "leader":
                    return node
            except Exception:
                continue
    return None


async def caught_up(client: KVGroupClient, group: ProcessGroup, node: str) -> bool:
    """``node`` has applied everything the leader has committed."""
    leader = await leader_of(client, group)
    if leader is None or leader == node:
        return False
    try:
        target = (await client.status(leader)).commit
        return (await client.status(node)).applied >= target
    except Exception:
        return False


async def settled_follower(client: KVGroupClient, group: ProcessGroup) -> str:
    """Write ``WRITES`` keys; a follower that has applied all of them."""
    for i in range(WRITES):
        await client.put(f"k{i}", f"v{i}", deadline_s=30)
    leader = None

    async def elected() -> bool:
        nonlocal leader
        leader = await leader_of(client, group)
        return leader is not None

    await until(elected, START_TIMEOUT_S, "an election")
    follower = next(node for node in group.ids if node != leader)
    await until(lambda: caught_up(client, group, follower), CATCH_UP_S, f"{follower} applying")
    return follower


def raft_dir(group: ProcessGroup, node: str) -> Path:
    return group.base_dir / node / "raft"


def cut_last_record(directory: Path) -> int:
    """Truncate the last log segment before its last record (a disk that lost synced
    data); returns the index of the entry lost."""
    last = list_segments(str(directory))[-1]
    path = directory / last.name
    scan = scan_segment(path.read_bytes(), last.name, last.first_index, 0)
    assert scan.offsets, f"{last.name} holds no record"
    lost = last.first_index + len(scan.offsets) - 1
    # Recovery refuses a hard state that commits past the log; it holds the commit index
    # of the last change of term or vote only, so that is well before the end.
    assert read_hard_state(str(directory)).commit < lost
    os.truncate(path, scan.offsets[-1])
    return lost


def test_a_follower_that_lost_its_last_record_catches_up(tmp_path: Path) -> None:
    asyncio.run(_lost_last_record(tmp_path))


async def _lost_last_record(tmp_path: Path) -> None:
    with ProcessGroup(tmp_path) as group:
        group.start_all()
        async with KVGroupClient(group.addresses, group.secret, client_id="t") as client:
            follower = await settled_follower(client, group)
            assert group.stop(follower) == 0
            lost = cut_last_record(raft_dir(group, follower))
            group.start(follower)
            # No new write: the leader's heartbeats alone must bring it back.
            await until(
                lambda: caught_up(client, group, follower),
                CATCH_UP_S,
                f"{follower}, which lost entry {lost}, catching up",
            )
            await client.put("after", "yes", deadline_s=30)
            assert await client.get("after", deadline_s=30) == "yes"
            await until(lambda: caught_up(client, group, follower), CATCH_UP_S, "the next write")


def test_a_replica_without_its_hard_state_refuses_to_start_and_recovers_empty(
    tmp_path: Path,
) -> None:
    asyncio.run(_missing_hard_state(tmp_path))


async def _missing_hard_state(tmp_path: Path) -> None:
    with ProcessGroup(tmp_path) as group:
        group.start_all()
        async with KVGroupClient(group.addresses, group.secret, client_id="t") as client:
            follower = await settled_follower(client, group)
            assert group.stop(follower) == 0
            hard_state = raft_dir(group, follower) / HARD_STATE_NAME
            os.remove(hard_state)
            refused = subprocess.run(
                group.command(follower),
                check=False,
                capture_output=True,
                text=True,
                timeout=START_TIMEOUT_S,
            )
            assert refused.returncode != 0, f"started without its hard state: {refused.stdout}"
            assert f"{hard_state} is missing" in refused.stderr, refused.stderr
            assert "READY" not in refused.stdout
            # The recovery docs/operations.md gives: delete the replica's data directory
            # and start it again; it rejoins empty and the leader sends it the rest.
            shutil.rmtree(group.base_dir / follower)
            group.start(follower)
            await until(lambda: caught_up(client, group, follower), CATCH_UP_S, "the rejoin")
            await client.put("after", "yes", deadline_s=30)
            assert await client.get("after", deadline_s=30) == "yes"
            await until(lambda: caught_up(client, group, follower), CATCH_UP_S, "the next write")
            # It holds the data itself: with it and one other, the group still serves.
            other = next(n for n in group.ids if n != follower and group.alive(n))
            leader = await leader_of(client, group)
            group.stop(leader if leader is not None and leader != follower else other)
            assert await client.get("k0", deadline_s=30) == "v0"
            assert await client.get("after", deadline_s=30) == "yes"
