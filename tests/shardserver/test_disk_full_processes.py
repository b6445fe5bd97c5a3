"""A full disk under real processes: a group whose three replicas share a 64 MiB tmpfs.

Writes go on until the servers refuse them; the refusal must be ``DiskFullError`` (the
client's "the servers' disks are full"), not a timeout, and no replica may halt. Every
acknowledged write must read back. Then space returns (a ballast file on the tmpfs is
deleted) and writes must succeed again with no restart.

Mounting a tmpfs needs root (``mount -t tmpfs``); the test is skipped, saying why,
where that is not permitted.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Final

import pytest

from shardwise.storage.space import DiskFullError, SpaceLimits, free_and_total
from shardwise.testing.cluster import ProcessCluster, wait_until

pytestmark = pytest.mark.timeout(180)

TMPFS_SIZE: Final = "64m"
"""Three replicas share it: each takes about 8 MiB before any write (its log allocated
ahead, its reserve file, 64 empty shard files), and the rest is mostly ballast."""
ROOM_FOR_PUTS: Final = 8 * 1024 * 1024
"""Free space left above the refusal threshold once the group runs (the rest is taken
by a ballast file, given back later: the space that "returns"); a few hundred puts."""
VALUE_BYTES: Final = 16 * 1024
MAX_PUTS: Final = 2000
"""Far more than the tmpfs holds (about 24 MiB / 3 replicas / (log + shard file))."""
RESUME_S: Final = 30.0


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "group1"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE}", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield tmp_path
    finally:
        # The servers' logs live on the tmpfs: keep them for a failure's diagnosis.
        (tmp_path / "logs").mkdir()
        for log in mount.glob("*.log"):
            shutil.copy(log, tmp_path / "logs" / log.name)
        subprocess.run(["umount", "-l", str(mount)], check=False)


async def test_a_full_disk_refuses_writes_and_resumes_without_a_restart(small_disk: Path) -> None:
    mount = small_disk / "group1"
    ballast = mount / "ballast"
    async with ProcessCluster(small_disk, groups=1) as cluster:
        await cluster.join(1)
        await cluster.settled()  # every replica has made its (empty) shard files
        free, total = free_and_total(str(mount))
        ballast.write_bytes(
            b"\0" * (free - SpaceLimits.for_size(total).refuse_below - ROOM_FOR_PUTS)
        )
        acknowledged: dict[str, str] = {}
        refused: DiskFullError | None = None
        async with cluster.client() as kv:
            started = time.monotonic()
            for i in range(MAX_PUTS):
                value = f"{i:08d}" * (VALUE_BYTES // 8)
                try:
                    await kv.put(f"k{i}", value)
                except DiskFullError as exc:
                    refused = exc
                    break
                acknowledged[f"k{i}"] = value
            assert refused is not None, f"{MAX_PUTS} puts of {VALUE_BYTES} B all fit"
            print(f"{len(acknowledged)} puts acknowledged, then: {refused}")
            assert "disks are full" in str(refused)
            assert time.monotonic() - started < 120
            # Nothing acknowledged is lost, and the group still serves reads.
            for key, value in acknowledged.items():
                assert await kv.get(key) == value, key
            for server in cluster.servers[1]:
                status = await cluster.status(server)
                assert status is not None and not status.halted, (server, status)
                assert cluster.running(server)
            # Space returns: writes succeed again, with no restart.
            ballast.unlink()

            async def accepted() -> bool:
                try:
                    await kv.put("after", "room")
                except DiskFullError:
                    return False
                return True

            await wait_until(accepted, RESUME_S, "writes accepted again")
            assert await kv.get("after") == "room"
            for key, value in list(acknowledged.items())[-5:]:
                assert await kv.get(key) == value, key
        for server in cluster.servers[1]:
            status = await cluster.status(server)
            assert status is not None and not status.halted, (server, status)
            assert cluster.running(server)
