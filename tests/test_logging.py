"""Server processes log JSON lines when asked (what `shardwise up` asks)."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import pytest

from shardwise.service import JsonLogFormatter
from shardwise.testing.cluster import Cluster, SimCluster, wait_until

HEARD_TIMEOUT_S = 10.0


def test_a_log_record_becomes_one_json_object() -> None:
    formatter = JsonLogFormatter("127.0.0.1:7201")
    try:
        raise ValueError("boom")
    except ValueError:
        import sys  # noqa: PLC0415

        record = logging.LogRecord(
            "shardwise.x", logging.ERROR, __file__, 1, "a %s", ("b",), sys.exc_info()
        )
    line = formatter.format(record)
    entry = json.loads(line)
    assert "\n" not in line
    assert entry["level"] == "ERROR" and entry["message"] == "a b"
    assert entry["node"] == "127.0.0.1:7201" and entry["logger"] == "shardwise.x"
    assert "ValueError: boom" in entry["exception"]


# --- what a cluster logs at INFO: news only ---------------------------------------------

IDLE_S = 40.0
"""Over three of the 12 s a failed idle watch on the controller used to take."""


def _info(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]


async def _leader_of(cluster: Cluster, gid: int, other_than: str = "") -> str:
    deadline = asyncio.get_running_loop().time() + 30
    while True:
        status = await cluster.group_status(gid)
        if status is not None and status.node_id != other_than:
            return status.node_id
        assert asyncio.get_running_loop().time() < deadline, f"no new leader in group {gid}"
        await asyncio.sleep(0.1)


@pytest.mark.virtual_time
async def test_an_idle_cluster_logs_nothing_at_info(
    tmp_path: Path, seed: int, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="shardwise")
    async with SimCluster(tmp_path, groups=2, seed=seed) as cluster:
        await cluster.join(1, 2)
        await cluster.settled()
        caplog.clear()
        await asyncio.sleep(IDLE_S)  # virtual time: the leaders' watches end idle
        assert _info(caplog) == []


@pytest.mark.virtual_time
async def test_a_failover_a_restart_and_a_configuration_change_are_each_logged(
    tmp_path: Path, seed: int, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="shardwise")
    async with SimCluster(tmp_path, groups=2, seed=seed) as cluster:
        await cluster.join(1)
        await cluster.settled()
        old = await _leader_of(cluster, 1)
        caplog.clear()
        await cluster.crash(old)
        new = await _leader_of(cluster, 1, other_than=old)
        lines = _info(caplog)
        elected = [m for m in lines if m.startswith(f"{new}: leads group 1 from term ")]
        assert elected == [m for m in elected if m.endswith(f"(the leader before was {old})")]
        assert len(elected) == 1, lines
        term = int(elected[0].split("from term ")[1].split()[0])
        assert any(
            m.startswith(f"{new}: starts an election for group 1 in term {term}: ")
            and f"no word from leader {old}" in m
            for m in lines
        ), lines
        follower = next(s for s in cluster.servers[1] if s not in (old, new))
        told = f"{follower}: group 1 has a new leader, {new}, in term {term} (was {old})"
        assert lines.count(told) == 1, lines

        caplog.clear()
        await cluster.restart(old)
        await cluster.settled()
        # The group may answer "settled" (a lease read at its leader) before the restarted
        # replica has heard its first heartbeat: wait for that, a tick or two.
        heard = f"{old}: group 1 has a new leader, {new}, in term {term} (none known before)"

        async def told_of_the_leader() -> bool:
            return heard in _info(caplog)

        await wait_until(told_of_the_leader, HEARD_TIMEOUT_S, "the restarted replica's log line")
        lines = _info(caplog)
        assert any(m.startswith(f"{old}: group 1 replica starts in term ") for m in lines), lines

        caplog.clear()
        changed = await cluster.join(2)
        await cluster.settled()
        moved = [m for m in _info(caplog) if "goes from configuration" in m]
        step = f"goes from configuration {changed.num - 1} to {changed.num}"
        # Once per group (its leader's), with what changes hands and with whom.
        summaries = sorted(m.split(": ", 1)[1].split(" (")[0] for m in moved)
        count = len(changed.moves)
        assert summaries == [f"group 1 {step}: gives {count}", f"group 2 {step}: gains {count}"]
        assert all("from group 1" in m for m in moved if "gains" in m), moved
