"""Replica health and consistency checks on real processes, through the real commands
(``shardwise up`` with a controller of 1 and one group of 3):

* after writes, ``shardwise check`` finds the replicas agree;
* a replica made to diverge (a test fault plants a key in it as it applies the check:
  the control run that shows the checker catches a bug) is named by ``shardwise check``
  (exit 15) and in ``shardwise status --json``;
* a replica made to halt (a test fault fails its apply of a check) shows as halted, with
  its reason, never as a leader, and ``shardwise up`` restarts it after a back-off; once
  the fault is gone, the restart clears the halt.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Final

import pytest

import shardwise
from shardwise.cli.exits import ExitCode
from shardwise.cli.up import UP_MARKER
from shardwise.clusterfile import find_layout, format_address
from shardwise.shardserver.checks import DIVERGE_ON_CHECK, FAULT_ENV, FAULT_FILE, HALT_ON_CHECK
from shardwise.testing.procs import run_cli

pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]

UP_TIMEOUT_S: Final = 120.0
CLI_TIMEOUT_S: Final = 120.0
POLL_S: Final = 0.2


def wait_for(condition: Callable[[], Any], timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while not (result := condition()):
        if time.monotonic() >= deadline:
            pytest.fail(f"waited {timeout_s} s for {what}")
        time.sleep(POLL_S)
    return result


def cli(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(root, *args, timeout_s=CLI_TIMEOUT_S)


def status(root: Path) -> dict[str, Any]:
    shown = cli(root, "status", "--json", "--interval", "0")
    assert shown.returncode == 0, shown.stderr
    data: dict[str, Any] = json.loads(shown.stdout)
    return data


def servers(root: Path) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = status(root)["groups"]["1"]["servers"]
    return found


def pids(root: Path) -> dict[str, int]:
    data = json.loads((root / "run.json").read_text())
    return {k: int(v) for k, v in data["processes"].items()}


@pytest.fixture
def up(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    root = tmp_path / "cluster"
    output = tmp_path / "up.out"
    flags = ["--controllers", "1", "--groups", "1", "--base-port", "0"]
    with open(output, "wb") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "shardwise.cli", "up", "--cluster-dir", str(root), *flags],
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
            env={**os.environ, FAULT_ENV: "1"},  # faults only where a test-fault file is
        )
    try:
        wait_for(
            lambda: proc.poll() is None and UP_MARKER in output.read_text(errors="replace"),
            UP_TIMEOUT_S,
            f"shardwise up to be ready:\n{output.read_text(errors='replace')}",
        )
        yield root, output
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=60)


def follower(root: Path, *besides: str) -> dict[str, Any]:
    group = wait_for(lambda: (g := status(root)["groups"]["1"])["leader"] and g, 60, "a leader")
    return next(
        s
        for s in group["servers"]
        if s["node_id"] != group["leader"] and s["name"] not in besides and s["health"] == "ok"
    )


def metrics(root: Path, name: str) -> str:
    process = next(p for p in find_layout(str(root), None).processes if p.name == name)
    assert process.metrics is not None
    url = f"http://{format_address(process.metrics)}/metrics"
    with urllib.request.urlopen(url, timeout=10) as reply:
        text: str = reply.read().decode()
    return text


def restart_with_fault(root: Path, name: str, fault: str) -> None:
    (root / "data" / name / FAULT_FILE).write_text(fault)
    restarted = cli(root, "restart", name)
    assert restarted.returncode == 0, restarted.stderr


def test_checks_find_a_planted_divergence_and_a_halted_replica_is_shown_and_restarted(
    up: tuple[Path, Path],
) -> None:
    root, output = up
    with shardwise.connect(root) as kv:
        for i in range(40):
            kv.put(f"key-{i}", f"value-{i}")

    agreed = cli(root, "check", "--json")
    assert agreed.returncode == 0, agreed.stdout + agreed.stderr
    found = json.loads(agreed.stdout)
    outcome = found["groups"]["1"]["outcome"]
    assert found["ok"] and not found["mismatches"]
    assert outcome["shards"] > 0, json.dumps(outcome)[:2500]
    assert [r["state"] for r in outcome["replicas"]] == ["ok"] * 3
    assert status(root)["groups"]["1"]["last_check"]["index"] == outcome["index"]

    # The control: one follower applies a key no other replica has, then digests.
    diverged = follower(root)
    restart_with_fault(root, diverged["name"], DIVERGE_ON_CHECK)
    caught = cli(root, "check", "--json")
    assert caught.returncode == ExitCode.REPLICAS_DIFFER, caught.stdout + caught.stderr
    mismatches = json.loads(caught.stdout)["mismatches"]
    assert mismatches and all(m["differ"] == [diverged["node_id"]] for m in mismatches)
    assert "replicas differ: group 1, shard" in caught.stderr
    assert diverged["node_id"] in caught.stderr
    shown = status(root)["groups"]["1"]["last_check"]["mismatches"]
    assert [m["differ"] for m in shown] == [[diverged["node_id"]]]
    table = cli(root, "status", "--interval", "0")
    assert "REPLICAS DIFFER on shard" in table.stdout
    leader = next(s for s in servers(root) if s["node_id"] == status(root)["groups"]["1"]["leader"])
    scraped = metrics(root, leader["name"])
    assert "shardwise_consistency_checks_total" in scraped
    assert any(
        line.startswith("shardwise_consistency_mismatched_shards{") and float(line.split()[-1]) > 0
        for line in scraped.splitlines()
    ), scraped

    # A follower that halts on the next check: shown halted, with why, never as leader.
    halting = follower(root, diverged["name"])
    restart_with_fault(root, halting["name"], HALT_ON_CHECK)
    before = pids(root)[halting["name"]]
    cli(root, "check")  # (exits 15: the diverged replica still differs)

    def halted() -> dict[str, Any] | None:
        listed = status(root)["groups"]["1"]
        me = next(s for s in listed["servers"] if s["name"] == halting["name"])
        return listed if me["health"] == "halted" else None

    listed = wait_for(halted, 60, f"{halting['name']} to show as halted")
    me = next(s for s in listed["servers"] if s["name"] == halting["name"])
    assert HALT_ON_CHECK in me["halt_reason"]
    assert listed["leader"] != halting["node_id"]

    def scraped_halted() -> str | None:
        # (It may be restarting meanwhile: the supervisor's back-off is 1 s.)
        try:
            lines = metrics(root, halting["name"]).splitlines()
        except OSError:
            return None
        shown = [line for line in lines if line.startswith("shardwise_replica_health{")]
        return next((line for line in shown if 'health="halted"' in line), None)

    assert HALT_ON_CHECK in wait_for(scraped_halted, 60, "the halt in the replica's metrics")

    # shardwise up restarts it after a back-off, saying why; without the fault it stays up.
    (root / "data" / halting["name"] / FAULT_FILE).unlink()
    wait_for(
        lambda: pids(root).get(halting["name"], before) != before,
        60,
        "the supervisor to restart the halted replica",
    )
    said = output.read_text(errors="replace")
    assert f"{halting['name']} halted: " in said and "restarting it in" in said
    wait_for(
        lambda: next(s for s in servers(root) if s["name"] == halting["name"])["health"] == "ok",
        60,
        "the restarted replica to be healthy",
    )
