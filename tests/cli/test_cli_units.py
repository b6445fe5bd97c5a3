"""The CLI's parts that need no running cluster: the description file, the lock, the exit
codes, how a move's progress is read, and the errors a person sees."""

from __future__ import annotations

import os
import sys
import tomllib
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
from msgspec.structs import replace

from shardwise import errors
from shardwise.cli import supervisor as sup
from shardwise.cli.admin import GroupState, ServerState, Snapshot
from shardwise.cli.exits import ExitCode, exit_code_for
from shardwise.cli.main import main
from shardwise.cli.moves import DONE, move_state
from shardwise.cli.render import commands_as_typed
from shardwise.cli.supervisor import ClusterLock
from shardwise.cli.up import UpOptions, sizing_differences
from shardwise.clusterfile import (
    DESCRIPTION_FILE,
    ensure_secret,
    find_layout,
    load_layout,
    local_layout,
    parse_layout,
    read_secret,
    secret_is_private,
)
from shardwise.model.config import Configuration, MoveInfo, ShardId
from shardwise.shardserver.protocol import ArrivalInfo, ShardInfo, StatusReply


def test_a_local_layout_round_trips_through_its_file(tmp_path: Path) -> None:
    layout = local_layout(tmp_path, controllers=3, groups=2, spare_groups=1, replicas=3)
    layout.write()
    again = load_layout(tmp_path / DESCRIPTION_FILE)
    assert again == layout
    assert [p.name for p in again.controllers] == ["c1", "c2", "c3"]
    assert {gid: g.join for gid, g in again.groups.items()} == {1: True, 2: True, 3: False}
    # The documented default ports: controllers at 7100.., group g at 7100 + 100 g..,
    # metrics 1000 above.
    assert again.process("c1").listen == ("127.0.0.1", 7100)
    assert again.process("g2-3").listen == ("127.0.0.1", 7302)
    assert again.process("g2-3").metrics == ("127.0.0.1", 8302)
    assert again.process("g2-3").node_id == "127.0.0.1:7302"


def test_free_ports_are_distinct_and_kept_in_the_file(tmp_path: Path) -> None:
    layout = local_layout(tmp_path, base_port=0, groups=2, controllers=1)
    addresses = [a for p in layout.processes for a in (p.listen, p.metrics) if a]
    assert len(set(addresses)) == len(addresses) == 2 * 7
    layout.write()
    assert load_layout(layout.path) == layout


def test_a_command_line_names_the_secret_file_never_the_secret(tmp_path: Path) -> None:
    layout = local_layout(tmp_path)
    ensure_secret(layout.secret_file)
    secret = read_secret(layout.secret_file).decode()
    server = layout.command("g1-2")
    assert server[1:3] == ["-m", "shardwise.shardserver"]
    assert f"--id={layout.process('g1-2').node_id}" in server
    assert f"--secret-file={layout.secret_file}" in server
    assert sum(a.startswith("--peer=") for a in server) == 2
    assert sum(a.startswith("--controller=") for a in server) == 3
    controller = layout.command("c2")
    assert "--id=c2" in controller
    assert all(secret not in arg for arg in server + controller)


def test_the_secret_is_created_once_and_private(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    assert ensure_secret(path)
    first = read_secret(path)
    assert not ensure_secret(path)
    assert read_secret(path) == first
    assert secret_is_private(path)
    os.chmod(path, 0o644)
    assert not secret_is_private(path)


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("[controller]\n", "a [controller] table"),
        ('[controller]\nc1 = { listen = "nowhere" }\n', "HOST:PORT"),
        ('[controller]\nc1 = { listen = "h:1", port = 2 }\n', "unknown keys"),
        ('tick = 5\n[controller]\nc1 = { listen = "h:1" }\n', "unknown keys"),
        ('[controller]\nc1 = { listen = "h:1" }\n[groups.0]\ns = { listen = "h:2" }\n', "positive"),
        ('[controller]\nc1 = { listen = "h:1" }\n[groups.1]\njoin = true\n', "1 to 15 servers"),
        ('[controller]\nc1 = { listen = "h:1" }\nc2 = { listen = "h:1" }\n', "both use h:1"),
        ('[controller]\nc1 = { listen = "h:1" }\n[groups.1]\nc1 = { listen = "h:2" }\n', "named"),
        ('[controller]\n"../x" = { listen = "h:1" }\n', "process name"),
    ],
)
def test_an_invalid_description_says_what_is_wrong(
    tmp_path: Path, text: str, complaint: str
) -> None:
    with pytest.raises(errors.ClusterConfigError, match=complaint.replace("[", r"\[")):
        parse_layout(tmp_path / DESCRIPTION_FILE, tomllib.loads(text))


def test_the_cluster_directory_comes_from_the_flag_then_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    layout = local_layout(tmp_path / "a")
    layout.write()
    monkeypatch.setenv("SHARDWISE_CLUSTER_DIR", str(tmp_path / "a"))
    assert find_layout(None).path == layout.path
    with pytest.raises(errors.ClusterNotFoundError, match="shardwise up"):
        find_layout(tmp_path / "b")


def test_the_lock_refuses_a_second_holder_and_frees_on_release(tmp_path: Path) -> None:
    first = ClusterLock(tmp_path)
    first.acquire()
    with pytest.raises(errors.ClusterInUseError, match=f"pid {os.getpid()}"):
        ClusterLock(tmp_path).acquire()
    first.release()
    second = ClusterLock(tmp_path)
    second.acquire()
    second.release()


def test_each_failure_has_its_exit_code() -> None:
    cases = {
        errors.ClusterNotFoundError("x"): ExitCode.NO_CLUSTER,
        errors.ClusterNotRunningError("x"): ExitCode.NOT_RUNNING,
        errors.WrongSecretError("x"): ExitCode.WRONG_SECRET,
        errors.ClusterInUseError("x"): ExitCode.IN_USE,
        errors.ClientTimeoutError("x"): ExitCode.TIMEOUT,
        errors.ChangeTimeoutError("x"): ExitCode.TIMEOUT,
        errors.UnknownGroupError("x"): ExitCode.UNKNOWN_GROUP,
        errors.OrphanedShardsError("x"): ExitCode.ORPHANED_SHARDS,
        errors.UnknownShardError("x"): ExitCode.REFUSED,
        errors.ShardwiseError("x"): ExitCode.ERROR,
    }
    assert {type(e): exit_code_for(e) for e in cases} == {type(e): c for e, c in cases.items()}
    assert len(set(ExitCode)) == len(ExitCode)


def _leader(gid: int, config_num: int, **states: str) -> StatusReply:
    shards = [ShardInfo(ShardId("default", int(i[1:])), s, 0, 0) for i, s in states.items()]
    return StatusReply(
        node_id=f"g{gid}",
        role="leader",
        term=1,
        leader=f"g{gid}",
        commit=1,
        applied=1,
        halted=False,
        gid=gid,
        config_num=config_num,
        shards=shards,
    )


def test_a_move_is_done_when_the_target_serves_and_the_source_let_go() -> None:
    move = MoveInfo(ShardId("default", 7), source=1, target=2)

    def stage(g1: StatusReply | None, g2: StatusReply | None) -> int:
        return move_state(move, 5, {1: g1, 2: g2}).stage

    assert stage(_leader(1, 5, s7="frozen"), _leader(2, 4)) == 0  # target not there yet
    assert stage(_leader(1, 5, s7="frozen"), None) == 0  # no leader in the target
    assert stage(_leader(1, 5, s7="frozen"), _leader(2, 5, s7="pulling")) == 1
    assert stage(_leader(1, 5, s7="frozen"), _leader(2, 5, s7="serving")) == 2
    assert stage(_leader(1, 5), _leader(2, 5, s7="serving")) == DONE
    first = MoveInfo(ShardId("default", 7), source=0, target=2)  # a first placement
    assert move_state(first, 1, {2: _leader(2, 1, s7="serving")}).stage == DONE


def test_commands_fail_with_a_message_and_a_code_when_nothing_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["status", "--cluster-dir", str(tmp_path / "none")]) == ExitCode.NO_CLUSTER
    assert "no cluster description" in capsys.readouterr().err
    layout = local_layout(tmp_path, base_port=0, controllers=1, groups=1)
    layout.write()
    ensure_secret(layout.secret_file)
    assert main(["kv", "get", "k", "--cluster-dir", str(tmp_path)]) == ExitCode.NOT_RUNNING
    assert "not running" in capsys.readouterr().err
    assert main(["group", "join", "5", "--cluster-dir", str(tmp_path)]) == ExitCode.UNKNOWN_GROUP
    assert "not in" in capsys.readouterr().err
    assert main(["shard", "move", "x/y", "1", "--cluster-dir", str(tmp_path)]) == ExitCode.USAGE


def test_a_moves_copy_shows_its_phase_bytes_and_percentage() -> None:
    move = MoveInfo(ShardId("default", 7), source=1, target=2)
    shard = ShardId("default", 7)
    precopy = _leader(2, 4)
    precopy = StatusReply(
        **{f: getattr(precopy, f) for f in precopy.__struct_fields__ if f != "arrivals"},
        arrivals=[ArrivalInfo(shard, 5, "base", 3 << 20, 12 << 20)],
    )
    state = move_state(move, 5, {1: _leader(1, 4, s7="serving"), 2: precopy})
    assert (state.stage, state.fraction) == (0, 0.25)
    assert state.note == "pre-copy, copying a base: 3.0 MiB of 12 MiB (25%)"

    pulling = StatusReply(
        **{f: getattr(precopy, f) for f in precopy.__struct_fields__ if f != "arrivals"},
        arrivals=[ArrivalInfo(shard, 5, "frozen-wait", 12 << 20, 12 << 20)],
    )
    pulling = replace(pulling, config_num=5, shards=[ShardInfo(shard, "pulling", 0, 0)])
    state = move_state(move, 5, {1: _leader(1, 5, s7="frozen"), 2: pulling})
    assert (state.stage, state.fraction) == (1, 1.0)
    assert "waiting for the source to freeze it" in state.note

    snapshot = Snapshot(
        Configuration(5, {2: ("g2",)}, {}, {}),
        [],
        {2: GroupState(2, True, [ServerState("g2", 2, None, replace(pulling, role="leader"))])},
    )
    (row,) = snapshot.to_json({"g2": 4242})["moves"]
    assert row == {
        "shard": "default/7",
        "group": 2,
        "config_num": 5,
        "phase": "frozen-wait",
        "copied_bytes": 12 << 20,
        "total_bytes": 12 << 20,
        "percent": 100.0,
    }
    assert snapshot.to_json({"g2": 4242})["groups"]["2"]["servers"][0]["pid"] == 4242


def test_sizing_flags_warn_only_when_they_differ_from_the_cluster(tmp_path: Path) -> None:
    layout = local_layout(tmp_path, groups=3, spare_groups=1)
    same = UpOptions(spare_groups=1, given=frozenset({"spare_groups"}))
    assert sizing_differences(same, layout) == []  # the README's `make up` run again
    assert sizing_differences(UpOptions(), layout) == []  # no flag given
    other = UpOptions(groups=2, replicas=3, base_port=0, given=frozenset({"groups", "replicas"}))
    assert sizing_differences(other, layout) == ["--groups 2 (the cluster has 3)"]
    anywhere = UpOptions(base_port=0, given=frozenset({"base_port"}))
    assert sizing_differences(anywhere, layout) == []
    moved = UpOptions(base_port=9000, tick_ms=20, given=frozenset({"base_port", "tick_ms"}))
    assert sizing_differences(moved, layout) == [
        "--base-port 9000 (the cluster has 7100)",
        "--tick-ms 20 (the cluster has 50)",
    ]


def test_the_connect_panel_names_commands_a_new_terminal_can_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")  # a new terminal: the venv is not on it
    shardwise, python, hint = commands_as_typed()
    assert Path(python) == Path(sys.executable)
    assert shardwise.startswith("/") and "shardwise" in shardwise
    assert hint.startswith("# full paths")
    bin_dir = str(Path(sys.executable).parent)
    monkeypatch.setenv("PATH", bin_dir)
    if (Path(bin_dir) / "shardwise").exists():
        assert commands_as_typed() == ("shardwise", "python", "")


def test_a_replica_that_halts_again_after_each_restart_is_left_halted(tmp_path: Path) -> None:
    """The supervisor's back-off for halts (``Supervisor._halted``): doubling delays, then,
    past ``MAX_QUICK_RESTARTS`` halts each soon after its start, no more restarts; a halt
    after a stable run starts the count again."""
    said: list[str] = []
    fake = cast(Any, SimpleNamespace(_stopping=False, _restart=True, _say=said.append))
    spec = cast(Any, SimpleNamespace(name="g1-2"))
    child = sup._Child(spec, [], tmp_path / "g1-2.log")
    delays: list[float | None] = []
    now = 1000.0
    for _ in range(sup.MAX_QUICK_RESTARTS + 1):
        child.started_at, child.halt_stop_at = now, None
        sup.Supervisor._halted(fake, child, "disk I/O error", now + 1)
        delays.append(None if child.halt_stop_at is None else child.halt_stop_at - (now + 1))
        now += 100
    assert delays[:-1] == [
        min(sup.MAX_RESTART_DELAY_S, sup.RESTART_DELAY_S * 2**i)
        for i in range(sup.MAX_QUICK_RESTARTS)
    ]
    assert delays[-1] is None and "left halted" in said[-1] and "disk I/O error" in said[-1]
    assert "left halted" in (tmp_path / "g1-2.log").read_text()
    child.started_at = now
    sup.Supervisor._halted(fake, child, "again", now + sup.STABLE_AFTER_S)
    assert child.halt_stop_at == now + sup.STABLE_AFTER_S + sup.RESTART_DELAY_S
