"""The benchmark scripts must keep running: a quick pass of each, checking its tables."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_script(
    args: list[str], *, timeout: float, check: bool = False, **kwargs: Any
) -> subprocess.CompletedProcess[str]:
    """``subprocess.run`` in a session of its own: a timeout (this one, or pytest's
    around the test) kills the script and every server it started, where killing the
    script alone would leave its cluster running and loading the machine."""
    proc = subprocess.Popen(
        args,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        **kwargs,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except BaseException:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    if check and proc.returncode != 0:
        raise subprocess.CalledProcessError(proc.returncode, args, out, err)
    return subprocess.CompletedProcess(args, proc.returncode, out, err)


def test_placement_benchmark_quick_run() -> None:
    run = run_script(
        [sys.executable, str(ROOT / "bench" / "placement.py"), "--quick"],
        timeout=300,
        check=True,
    )
    out = run.stdout
    for heading in ("## Lookups", "## Load spread", "## Ring against theory", "## Keys moved"):
        assert heading in out
    for name in ("ring V=256", "rendezvous", "jump", "maglev", "bounded c=1.25", "uhashring"):
        assert f"| {name}" in out
    # The peer row is the unit of the ratio column.
    assert "| uhashring (peer) |" in out and "| 1.00x |" in out


@pytest.mark.slow
def test_faults_benchmark_quick_etcd_run() -> None:
    """etcd's side of ``bench/faults.py`` (its addresses, cut links and client, which no
    other test covers), about 20 s; skipped without root, nftables or etcd."""
    script = ROOT / "bench" / "faults.py"
    run = run_script(
        [sys.executable, str(script), "--quick", "--systems", "etcd", "--duration", "10"],
        timeout=120,
        check=False,
    )
    if run.returncode == 2:  # the script says what is missing
        pytest.skip(run.stderr.strip())
    assert run.returncode == 0, run.stdout + run.stderr
    assert "| fault | injected (shardwise / etcd) |" in run.stdout
    assert "linearizable, 0 lost, 0 doubled" in run.stdout


@pytest.mark.timeout(300)  # a cluster of 12 processes, 5 tables loaded, 5 queries
def test_join_benchmark_small_run() -> None:
    """``bench/sql_joins.py`` on 2,000 sales rows: every query answers as SQLite does (the
    script checks) and the table has a row per query."""
    run = run_script(
        [sys.executable, str(ROOT / "bench" / "sql_joins.py"), "--sales", "2000", "--repeat", "1"],
        timeout=270,  # (under the test's own limit: our kill comes first)
        check=False,
        cwd=ROOT / "bench",
    )
    assert run.returncode == 0, run.stdout + run.stderr
    for name in ("co-located join, grouped", "star join", "join on a column neither", "top-10"):
        assert f"| {name}" in run.stdout

    def line(name: str) -> str:
        return run.stdout.split(f"| {name}")[1].split("\n")[0]

    assert "partial-aggregates" in line("star join with a 1,000-row reference table")
    assert "coordinator-join" in line("the same star join, the dimension distributed")
