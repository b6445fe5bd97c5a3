"""Stopping, starting and restarting one process of a running ``shardwise up``, stopping
and deleting the whole cluster, what the logs say after a crash, and ``shardwise up``
over processes that ``shardwise node`` runs: all through the real commands, on a small
cluster (a controller of 1, one group of 3)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Final

import pytest

from shardwise.cli.exits import ExitCode
from shardwise.cli.up import UP_MARKER
from shardwise.clusterfile import ensure_secret, local_layout
from shardwise.testing.procs import run_cli

pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]

UP_TIMEOUT_S: Final = 120.0
CLI_TIMEOUT_S: Final = 120.0
POLL_S: Final = 0.1


def wait_for(condition: Callable[[], Any], timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while not (result := condition()):
        if time.monotonic() >= deadline:
            pytest.fail(f"waited {timeout_s} s for {what}")
        time.sleep(POLL_S)
    return result


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[-1][0] != "Z"
    except (ProcessLookupError, OSError):
        return False


def cli(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(root, *args, timeout_s=CLI_TIMEOUT_S)


def pids(root: Path) -> dict[str, int]:
    data = json.loads((root / "run.json").read_text())
    return {k: int(v) for k, v in data["processes"].items()}


def status(root: Path) -> dict[str, Any]:
    shown = cli(root, "status", "--json", "--interval", "0")
    assert shown.returncode == 0, shown.stderr
    data: dict[str, Any] = json.loads(shown.stdout)
    return data


def events(root: Path, *names: str) -> list[dict[str, Any]]:
    shown = cli(root, "logs", *names, "--json", "-n", "100000")
    assert shown.returncode == 0, shown.stderr
    return [json.loads(line) for line in shown.stdout.splitlines()]


@pytest.fixture
def up(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], Path, Path]]:
    root = tmp_path / "cluster"
    output = tmp_path / "up.out"
    flags = ["--controllers", "1", "--groups", "1", "--base-port", "0"]
    with open(output, "wb") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "shardwise.cli", "up", "--cluster-dir", str(root), *flags],
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for(
            lambda: proc.poll() is None and UP_MARKER in output.read_text(errors="replace"),
            UP_TIMEOUT_S,
            f"shardwise up to be ready:\n{output.read_text(errors='replace')}",
        )
        yield proc, root, output
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=60)


def test_one_process_stops_starts_and_restarts_and_the_cluster_goes_down_and_away(
    up: tuple[subprocess.Popen[bytes], Path, Path],
) -> None:
    proc, root, output = up
    assert "restart g1-1" in output.read_text()  # the connect panel shows the commands
    # status --json names each process's pid (what the README's tour kills).
    snapshot = status(root)
    recorded = pids(root)
    servers = snapshot["groups"]["1"]["servers"]
    assert {s["name"]: s["pid"] for s in servers} == {
        n: p for n, p in recorded.items() if n.startswith("g1-")
    }
    assert snapshot["controllers"][0]["pid"] == recorded["c1"]

    refused = cli(root, "down", "--purge")
    assert refused.returncode == ExitCode.IN_USE, refused.stderr
    assert "--force" in refused.stderr and root.exists()

    stopped = cli(root, "stop", "g1-1")
    assert stopped.returncode == 0, stopped.stderr
    assert not alive(recorded["g1-1"]) and "g1-1" not in pids(root)
    # Past the supervisor's first restart delay (1 s) it is still down: held, not crashed.
    watch_until = time.monotonic() + 2.0
    while time.monotonic() < watch_until:
        assert "g1-1" not in pids(root)
        time.sleep(POLL_S)
    assert next(s["role"] for s in status(root)["groups"]["1"]["servers"]) == "down"

    started = cli(root, "start", "g1-1")
    assert started.returncode == 0, started.stderr
    assert "listening" in started.stdout and alive(pids(root)["g1-1"])

    before = pids(root)["g1-2"]
    restarted = cli(root, "restart", "g1-2", "--kill")
    assert restarted.returncode == 0, restarted.stderr
    assert pids(root)["g1-2"] != before and not alive(before)
    told = [e["message"] for e in events(root, "g1-2") if e.get("logger") == "shardwise.up"]
    assert "SIGKILL on request" in told and "shardwise up starts it again" in told

    # A crash of the group's leader, as in the README: the logs tell the story.
    group = wait_for(lambda: (g := status(root)["groups"]["1"])["leader"] and g, 30, "a leader")
    leader = next(s for s in group["servers"] if s["node_id"] == group["leader"])
    os.kill(leader["pid"], signal.SIGKILL)
    wait_for(
        lambda: pids(root).get(leader["name"], leader["pid"]) != leader["pid"],
        60,
        "the crashed leader to be started again",
    )
    wait_for(
        lambda: any(
            e["process"] != leader["name"]
            and "leads group 1 from term" in e["message"]
            and f"the leader before was {leader['node_id']}" in e["message"]
            for e in events(root)
        ),
        30,
        "the new leader's line in the logs",
    )
    story = events(root, leader["name"])
    assert any(
        e["level"] == "WARNING" and "exited: killed by SIGKILL" in e["message"] for e in story
    )
    people = cli(root, "logs", "-n", "50")
    assert people.returncode == 0 and "{" not in people.stdout

    running = pids(root).values()
    down = cli(root, "down")
    assert down.returncode == 0, down.stderr
    assert proc.wait(timeout=60) == 0
    assert not any(alive(p) for p in running)
    purged = cli(root, "down", "--purge")
    assert purged.returncode == 0, purged.stderr
    assert not root.exists()


def test_up_refuses_a_cluster_that_node_runs_and_logs_say_where_node_logs_go(
    tmp_path: Path,
) -> None:
    root = tmp_path / "cluster"
    layout = local_layout(root, base_port=0, controllers=1, groups=1, replicas=1)
    layout.write()
    ensure_secret(layout.secret_file)
    nothing = cli(root, "logs")
    assert nothing.returncode == ExitCode.ERROR
    assert "shardwise node" in nothing.stderr and "--log-file" in nothing.stderr

    command = [sys.executable, "-m", "shardwise.cli", "node", "--config", str(layout.path)]
    node = subprocess.Popen(
        [*command, "--id", "c1", "--log-file"], stdin=subprocess.DEVNULL, env=dict(os.environ)
    )
    try:
        log = layout.log_file("c1")
        wait_for(lambda: log.exists() and "READY" in log.read_text(), UP_TIMEOUT_S, "c1")
        refused = cli(root, "up", "--cluster-dir", str(root))
        assert refused.returncode == ExitCode.IN_USE, refused.stdout + refused.stderr
        assert "in use" in refused.stderr and "c1" in refused.stderr
        assert "{'" not in refused.stdout + refused.stderr
        shown = cli(root, "logs", "c1", "--json")
        assert shown.returncode == 0, shown.stderr
        messages = [json.loads(line)["message"] for line in shown.stdout.splitlines()]
        assert any("the controller replica starts in term" in m for m in messages), messages
    finally:
        node.send_signal(signal.SIGTERM)
        node.wait(timeout=60)
    assert node.returncode == 0
