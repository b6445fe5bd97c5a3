"""``shardwise logs`` through the real command on log files as processes write them: merged
by time across processes, one line per event, ``--json`` for machines, and a clear
message where there are no logs (a cluster run with ``shardwise node``)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from shardwise.cli.exits import ExitCode
from shardwise.cli.logreader import parse_line
from shardwise.cli.main import main
from shardwise.cli.supervisor import log_note
from shardwise.clusterfile import ClusterLayout, local_layout


def _layout(tmp_path: Path) -> ClusterLayout:
    layout = local_layout(tmp_path, base_port=0, controllers=1, groups=1, replicas=2)
    layout.write()
    layout.log_dir.mkdir()
    return layout


def _record(when: str, level: str, node: str, message: str, **extra: str) -> str:
    entry = {"time": f"2030-01-02T{when}", "level": level, "logger": "shardwise.x"}
    return json.dumps({**entry, "node": node, "message": message, **extra})


def _write(layout: ClusterLayout, name: str, lines: list[str]) -> None:
    with open(layout.log_file(name), "a") as handle:
        handle.write("".join(line + "\n" for line in lines))


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["logs", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_events_of_every_process_come_merged_by_time_one_line_each(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    layout = _layout(tmp_path)
    node = layout.process("g1-1").node_id
    _write(
        layout,
        "c1",
        [
            _record("10:00:01.000", "INFO", "c1", "c1: leads the controller from term 1"),
            _record("10:00:04.000", "WARNING", "c1", "c1: slow disk"),
        ],
    )
    _write(
        layout,
        "g1-1",
        [
            _record("10:00:00.500", "INFO", node, f"{node}: group 1 replica starts in term 0"),
            "READY 127.0.0.1:1 127.0.0.1:1",  # no time of its own: stays after the line before
            _record("10:00:02.000", "ERROR", node, f"{node}: boom", exception="Traceback\n  x"),
            "2030-01-02 10:00:03,250 INFO shardwise.y: a line of the text format",
        ],
    )
    code, printed, _ = _run(capsys, "--cluster-dir", str(tmp_path), "-n", "100")
    assert code == 0
    lines = printed.splitlines()
    assert [line.split()[:3] for line in lines if not line.startswith(" ")] == [
        ["10:00:00.500", "g1-1", "INFO"],
        ["10:00:00.500", "g1-1", "READY"],
        ["10:00:01.000", "c1", "INFO"],
        ["10:00:02.000", "g1-1", "ERROR"],
        ["10:00:03.250", "g1-1", "INFO"],
        ["10:00:04.000", "c1", "WARNING"],
    ]
    assert lines[0].endswith("group 1 replica starts in term 0")  # without the node id
    assert "    Traceback" in lines  # the exception, indented under its event
    assert "{" not in printed  # no raw JSON for people

    code, printed, _ = _run(capsys, "--cluster-dir", str(tmp_path), "-n", "2", "--json")
    events = [json.loads(line) for line in printed.splitlines()]
    assert [(e["process"], e["level"], e["time"]) for e in events] == [
        ("g1-1", "INFO", "2030-01-02T10:00:03.250"),
        ("c1", "WARNING", "2030-01-02T10:00:04.000"),
    ]

    code, printed, _ = _run(capsys, "g1-1", "--cluster-dir", str(tmp_path), "--level", "error")
    assert [line.split()[1:3] for line in printed.splitlines() if not line.startswith(" ")] == [
        ["g1-1", "ERROR"]
    ]


def test_merging_keeps_each_files_order_for_any_interleaving(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], seed: int
) -> None:
    capsys.readouterr()  # (the seed's line)
    rng = random.Random(seed)
    layout = _layout(tmp_path)
    names = [p.name for p in layout.processes]
    written: list[tuple[str, str, int]] = []
    for name in names:
        times = sorted(rng.sample(range(10_000), 30))
        lines = []
        for i, t in enumerate(times):
            when = f"10:{t // 6000:02d}:{t // 100 % 60:02d}.{t % 100 * 10:03d}"
            lines.append(_record(when, "INFO", name, f"{name} event {i}"))
            written.append((f"2030-01-02T{when}", name, i))
        _write(layout, name, lines)
    code, printed, _ = _run(capsys, "--cluster-dir", str(tmp_path), "-n", "1000", "--json")
    assert code == 0
    events = [json.loads(line) for line in printed.splitlines()]
    assert [e["time"] for e in events] == sorted(t for t, _, _ in written)
    for name in names:
        mine = [e["message"] for e in events if e["process"] == name]
        assert mine == [f"{name} event {i}" for i in range(30)]


def test_the_supervisors_notes_read_as_events_of_the_process(tmp_path: Path) -> None:
    path = tmp_path / "g1-1.log"
    log_note(path, "g1-1", "WARNING", "(pid 7) exited: killed by SIGKILL")
    event = parse_line("g1-1", path.read_text().strip(), "")
    assert (event.level, event.logger, event.message) == (
        "WARNING",
        "shardwise.up",
        "(pid 7) exited: killed by SIGKILL",
    )
    assert len(event.time) == len("2030-01-02T10:00:00.000")


def test_no_log_files_say_where_the_logs_of_node_processes_are(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    layout = _layout(tmp_path)
    code, printed, error = _run(capsys, "--cluster-dir", str(tmp_path))
    assert code == ExitCode.ERROR and printed == ""
    assert "shardwise node" in error and "stderr" in error and str(layout.log_dir) in error
    _write(layout, "c1", [_record("10:00:00.000", "INFO", "c1", "c1: here")])
    code, printed, error = _run(capsys, "--cluster-dir", str(tmp_path))
    assert code == 0 and "here" in printed
    assert "no log of g1-1, g1-2" in error  # the ones missing on this machine, named
