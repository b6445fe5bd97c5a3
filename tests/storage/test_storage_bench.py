"""The Raft log benchmark must keep running: a quick pass, checking its table."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_raft_log_benchmark_quick_run(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "raft_log.py"), "--quick", "--dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    rows = [line for line in run.stdout.splitlines() if line.startswith("| B=")]
    assert [row.split("|")[1].strip() for row in rows] == [
        "B=1",
        "B=16",
        "B=256",
        "B=16 + hard state",
    ]
    # Group commit: one fsync per batch, so B=256 needs far fewer per entry than B=1.
    per_entry = [float(row.split("|")[-2]) for row in rows]
    assert per_entry[2] < per_entry[0] / 10
