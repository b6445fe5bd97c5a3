"""The real ``shardwise up`` in a subprocess, used through the real CLI and the Python
client: what a person does in the README's tour, checked.

One cluster (a controller of 1, groups 1 and 2 joined, group 3 spare, 3 servers each)
serves the tests of this module in order; the last two stop it (Ctrl-C) and start it
again on the same data. Waiting is polling with deadlines, never a fixed sleep.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import pytest

import shardwise
from shardwise.cli.exits import ExitCode
from shardwise.cli.main import main
from shardwise.cli.up import UP_MARKER
from shardwise.clusterfile import load_layout, local_layout
from shardwise.testing.procs import free_base_port, run_cli

pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]

UP_TIMEOUT_S: Final = 120.0
"""Starting ten Python processes and electing leaders on a busy 2-core machine."""
CLI_TIMEOUT_S: Final = 60.0
STOP_TIMEOUT_S: Final = 60.0
POLL_S: Final = 0.1
KEYS: Final = {f"user:{i}": f"value-{i}" for i in range(40)}


def wait_for(condition: Callable[[], Any], timeout_s: float, what: str) -> Any:
    """Poll ``condition`` until it returns something truthy; fail naming ``what``."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() >= deadline:
            pytest.fail(f"waited {timeout_s} s for {what}")
        time.sleep(POLL_S)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purposes (its parent has not reaped it yet).
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[-1][0] != "Z"
    except OSError:
        return False


def processes_using(directory: Path) -> list[int]:
    """Pids of live processes whose command line names ``directory``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if str(directory) in cmdline and alive(int(entry.name)):
            found.append(int(entry.name))
    return found


@dataclass
class Up:
    """A running ``shardwise up``."""

    proc: subprocess.Popen[bytes]
    root: Path
    output: Path

    def text(self) -> str:
        return self.output.read_text(errors="replace")

    def run_file(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads((self.root / "run.json").read_text())
        return data

    def pids(self) -> dict[str, int]:
        return {k: int(v) for k, v in self.run_file()["processes"].items()}


def start_up(root: Path, *extra: str) -> Up:
    output = root.parent / f"up-{time.monotonic_ns()}.out"
    with open(output, "wb") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "shardwise.cli", "up", "--cluster-dir", str(root), *extra],
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    up = Up(proc, root, output)

    def ready() -> bool:
        if proc.poll() is not None:
            pytest.fail(f"shardwise up exited ({proc.returncode}):\n{up.text()}")
        return UP_MARKER in up.text()

    wait_for(ready, UP_TIMEOUT_S, "shardwise up to print its ready line")
    return up


def stop_up(up: Up, sig: signal.Signals = signal.SIGINT) -> int:
    up.proc.send_signal(sig)
    try:
        return up.proc.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        up.proc.kill()
        pytest.fail(f"shardwise up did not stop after {sig.name}:\n{up.text()}")


def cli(root: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return run_cli(root, *args, stdin=stdin, timeout_s=CLI_TIMEOUT_S)


def status(root: Path, interval: float = 0) -> dict[str, Any]:
    """``shardwise status --json``, run in this process (the same code as the command,
    without the half second a fresh interpreter costs); by default one sample, without
    operation rates (which take ``interval`` seconds)."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = main(["status", "--json", "--interval", str(interval), "--cluster-dir", str(root)])
    assert code == 0, printed.getvalue()
    data: dict[str, Any] = json.loads(printed.getvalue())
    return data


def owners(snapshot: dict[str, Any]) -> set[int]:
    return {row["owner"] for row in snapshot["shards"]}


def read_all(root: Path) -> dict[str | bytes, str | bytes | None]:
    with shardwise.connect(root) as kv:
        return kv.mget(KEYS)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    root = tmp_path_factory.mktemp("cli") / ".shardwise"
    layout = local_layout(root, controllers=1, groups=2, spare_groups=1)  # as the flags say
    base = free_base_port(layout)
    flags = ["--controllers", "1", "--groups", "2", "--spare-groups", "1"]
    up = start_up(root, "--base-port", str(base), *flags)
    try:
        yield up
    finally:
        if up.proc.poll() is None:
            stop_up(up)
        for pid in processes_using(root):  # never leave a process behind, even on failure
            os.kill(pid, signal.SIGKILL)


def test_a_first_start_writes_its_description_and_a_private_secret(cluster: Up) -> None:
    text = cluster.text()
    assert "Starting a new cluster" in text
    assert "First start: groups 1, 2 joined" in text
    secret = cluster.root / "secret"
    assert secret.stat().st_mode & 0o777 == 0o600
    assert secret.read_text().strip() not in " ".join(
        Path(f"/proc/{pid}/cmdline").read_text() for pid in cluster.pids().values()
    ), "the secret must never be on a command line"
    snapshot = status(cluster.root)
    assert snapshot["config_num"] == 1
    assert owners(snapshot) == {1, 2}
    assert snapshot["groups"]["3"]["joined"] is False


def test_a_second_up_on_the_same_directory_is_refused(cluster: Up) -> None:
    result = cli(cluster.root, "up", "--cluster-dir", str(cluster.root))
    assert result.returncode == ExitCode.IN_USE
    assert "in use" in result.stderr


def test_a_wrong_secret_is_named_as_such(cluster: Up, tmp_path: Path) -> None:
    impostor = tmp_path / "impostor"
    impostor.mkdir()
    (impostor / "cluster.toml").write_text((cluster.root / "cluster.toml").read_text())
    (impostor / "secret").write_text("not the secret of this cluster at all\n")
    os.chmod(impostor / "secret", 0o600)
    result = cli(impostor, "status")
    assert result.returncode == ExitCode.WRONG_SECRET, result.stderr
    assert "refused the secret" in result.stderr


def test_keys_through_the_cli_and_the_python_client(cluster: Up) -> None:
    root = cluster.root
    assert cli(root, "kv", "put", "greeting", "hello").returncode == 0
    got = cli(root, "kv", "get", "greeting")
    assert (got.returncode, got.stdout) == (0, "hello\n")
    absent = cli(root, "kv", "get", "nobody")
    assert absent.returncode == ExitCode.NOT_FOUND
    with shardwise.connect(root) as kv:
        assert kv.get("greeting") == "hello"  # written by the CLI, read from Python
        kv.mput(KEYS)
    scan = cli(root, "kv", "scan", "user:1")
    assert scan.returncode == 0
    assert scan.stdout.splitlines() == [
        f"{k}\t{v}" for k, v in sorted(KEYS.items()) if k.startswith("user:1")
    ]
    assert cli(root, "kv", "del", "greeting").returncode == 0
    with shardwise.connect(root) as kv:
        assert kv.get("greeting") is None


def test_a_group_joins_and_leaves_through_the_cli_and_every_key_stays(cluster: Up) -> None:
    root = cluster.root
    joined = cli(root, "group", "join", "3")
    assert joined.returncode == 0, joined.stderr
    assert "Done: every move finished" in joined.stdout
    snapshot = status(root)
    assert owners(snapshot) == {1, 2, 3}
    assert snapshot["migrations"] == []
    assert read_all(root) == KEYS

    refused = cli(root, "group", "leave", "1", "2", "3")
    assert refused.returncode == ExitCode.ORPHANED_SHARDS, refused.stderr
    unknown = cli(root, "group", "leave", "7")
    assert unknown.returncode == ExitCode.UNKNOWN_GROUP, unknown.stderr

    left = cli(root, "group", "leave", "3")
    assert left.returncode == 0, left.stderr
    assert owners(status(root)) == {1, 2}
    assert read_all(root) == KEYS


def test_each_server_serves_prometheus_metrics(cluster: Up) -> None:
    text = (cluster.root / "cluster.toml").read_text()
    g1 = next(line for line in text.splitlines() if line.startswith("g1-1 "))
    address = g1.split('metrics = "')[1].split('"')[0]
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as reply:
        body = reply.read().decode()
    assert 'shardwise_raft_term{group="1"' in body
    assert "shardwise_rpc_latency_seconds_bucket" in body
    assert 'shardwise_shards{group="1"' in body


def test_status_bench_and_logs_print_for_people(cluster: Up) -> None:
    shown = cli(cluster.root, "status")
    assert shown.returncode == 0, shown.stderr
    assert "Configuration 3" in shown.stdout
    assert "Migrations in flight: none" in shown.stdout
    bench = cli(cluster.root, "bench", "--ops", "200", "--concurrency", "8")
    assert bench.returncode == 0, bench.stderr
    assert "200 operations" in bench.stdout
    logs = cli(cluster.root, "logs", "g1-1", "-n", "1000")
    assert logs.returncode == 0, logs.stderr
    # One line per event, merged by time: the time, the process, then the line itself.
    assert any(line.split()[1:3] == ["g1-1", "READY"] for line in logs.stdout.splitlines())


def test_status_counts_each_shards_operations_and_shows_their_rate(cluster: Up) -> None:
    root = cluster.root

    def served() -> dict[str, tuple[int, int]]:
        return {row["shard"]: (row["reads"], row["writes"]) for row in status(root)["shards"]}

    before = served()
    with shardwise.connect(root) as kv:
        for i in range(5):
            kv.put("counted", str(i))
        for _ in range(7):
            kv.get("counted")
        after = served()
        changed = {
            shard: (reads - before[shard][0], writes - before[shard][1])
            for shard, (reads, writes) in after.items()
            if (reads, writes) != before[shard]
        }
        assert len(changed) == 1, changed  # all on the key's shard, nothing elsewhere
        ((shard, (reads, writes)),) = changed.items()
        assert reads >= 7 and writes >= 5  # (a retried request may count twice)

        stop = threading.Event()

        def load() -> None:
            while not stop.is_set():
                kv.get("counted")

        reader = threading.Thread(target=load)
        reader.start()
        try:
            sampled = status(root, interval=0.5)
        finally:
            stop.set()
            reader.join()
    assert sampled["rate_window_s"] >= 0.5
    rates = {row["shard"]: (row["reads_per_s"], row["writes_per_s"]) for row in sampled["shards"]}
    assert rates.pop(shard)[0] > 0
    assert set(rates.values()) == {(0, 0)}


def test_the_sql_shell_runs_statements_from_c_and_from_a_pipe(cluster: Up) -> None:
    root = cluster.root
    made = cli(
        root,
        "sql",
        "-c",
        "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT NOT NULL, price REAL DEFAULT 0)"
        " WITH (distribution = 'id');"
        " INSERT INTO items VALUES (1, 'apple', 1.5), (2, 'pear', 2.25), (3, 'fig', NULL)",
    )
    assert made.returncode == 0, made.stderr
    assert "CREATE TABLE (" in made.stdout and "3 rows inserted (" in made.stdout

    script = "\n".join(
        [
            "SELECT name, price",
            "FROM items WHERE id IN (1, 3)",
            "ORDER BY id;",
            "EXPLAIN SELECT count(*) FROM items;",
            "SELECT *",
            "FROM items WHERE id = = 1;",  # printed with a caret; the rest still runs
            "\\d",
            "\\d items",
            "SELECT count(*) AS n FROM items",  # the last statement needs no ;
        ]
    )
    piped = cli(root, "sql", stdin=script)
    assert piped.returncode == ExitCode.SQL, piped.stderr  # the syntax error's code
    lines = piped.stdout.splitlines()
    assert lines[0].split() == ["name", "price"]
    assert [line.split() for line in lines[2:4]] == [["apple", "1.5"], ["fig", "NULL"]]
    assert lines[4].startswith("2 rows (")
    assert "QUERY PLAN" in lines and any(line.startswith("  shards: all") for line in lines)
    assert any(line.split()[:3] == ["items", "default", "id"] for line in lines)  # the list
    assert "Table items · keyspace default · distributed by id" in lines  # one table
    assert any(line.split() == ["price", "REAL", "0"] for line in lines)
    assert lines[-2].split() == ["3"] and lines[-1].startswith("1 row (")
    errors = piped.stderr.splitlines()
    assert errors[0].startswith("ERROR (syntax): syntax error at line 2"), piped.stderr
    assert errors[1] == "LINE 2: FROM items WHERE id = = 1"
    assert errors[1][errors[2].index("^")] == "="

    missing = cli(root, "sql", "-c", "SELECT nope FROM items")
    assert missing.returncode == ExitCode.SQL
    assert "ERROR (catalog)" in missing.stderr and "nope" in missing.stderr

    # Joins: one co-located with items (sales distributed by item_id), one subquery, one
    # with a reference table (a copy on every shard, written to all of them at once).
    joined = cli(
        root,
        "sql",
        "-c",
        "CREATE TABLE sales (id INTEGER, item_id INTEGER, qty INTEGER)"
        " WITH (distribution = 'item_id');"
        " INSERT INTO sales VALUES (1, 1, 5), (2, 1, 2), (3, 2, 4), (4, 9, 1);"
        " SELECT i.name, sum(s.qty) AS sold FROM items i JOIN sales s ON s.item_id = i.id"
        " GROUP BY i.name ORDER BY sold DESC;"
        " EXPLAIN SELECT i.name FROM items i JOIN sales s ON s.item_id = i.id WHERE s.item_id = 2;"
        " SELECT name FROM items WHERE id NOT IN (SELECT item_id FROM sales) ORDER BY 1;"
        " CREATE TABLE colours (item_id INTEGER UNIQUE, colour TEXT) WITH (reference = true);"
        " INSERT INTO colours VALUES (1, 'red'), (2, 'green'), (7, 'blue');"
        " UPDATE colours SET colour = 'ruby' WHERE item_id = 1;"
        " EXPLAIN SELECT i.name, c.colour FROM items i JOIN colours c ON c.item_id = i.id;"
        " SELECT i.name, c.colour FROM items i LEFT JOIN colours c ON c.item_id = i.id"
        " ORDER BY 1;"
        " ANALYZE;"  # row counts into the controller's configuration, for EXPLAIN
        " EXPLAIN SELECT * FROM items WHERE id = 2",
    )
    assert joined.returncode == 0, joined.stderr
    words = [line.split() for line in joined.stdout.splitlines()]
    assert ["apple", "7"] in words and ["pear", "4"] in words
    assert words.index(["apple", "7"]) < words.index(["pear", "4"])
    assert any(
        "co-located" in line and "single-shard" in line for line in joined.stdout.splitlines()
    )
    assert ["fig"] in words
    assert words[words.index(["fig"]) + 3][:3] == ["3", "rows", "inserted"], words
    assert words[words.index(["fig"]) + 4][:3] == ["1", "row", "updated"], words
    assert "co-located join items AS i JOIN colours AS c" in joined.stdout, joined.stdout
    assert ["apple", "ruby"] in words and ["pear", "green"] in words and ["fig", "NULL"] in words
    assert ["colours", "3"] in words and ["items", "3"] in words and ["sales", "4"] in words
    assert "expected rows read: items ~1" in joined.stdout
    listed = cli(root, "sql", stdin="\\d")
    rows = {line.split()[0]: line.split() for line in listed.stdout.splitlines() if line.strip()}
    assert rows["colours"][2:4] == ["reference", "table"] and rows["colours"][-1] == "3"
    assert rows["items"][-1] == "3" and rows["sales"][-1] == "4"  # ANALYZE's counts


def test_a_server_killed_with_sigkill_and_the_cluster_keeps_serving(cluster: Up) -> None:
    root = cluster.root
    group = wait_for(
        lambda: (g := status(root)["groups"]["1"])["leader"] and g, 30, "a leader in group 1"
    )
    name = next(s["name"] for s in group["servers"] if s["node_id"] == group["leader"])
    victim = cluster.pids()[name]
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: not alive(victim), 30, f"{name} to die")
    with shardwise.connect(root) as kv:
        assert kv.mget(KEYS) == KEYS
        kv.put("after-the-kill", "still here")
        assert kv.get("after-the-kill") == "still here"
    # shardwise up notices and starts it again on its data.
    wait_for(
        lambda: cluster.pids().get(name, victim) != victim and f"{name} is back" in cluster.text(),
        60,
        f"{name} to be started again",
    )


def test_ctrl_c_stops_every_process(cluster: Up) -> None:
    pids = cluster.pids()
    assert len(pids) == 10
    assert stop_up(cluster) == 0
    assert "Stopped 10 processes" in cluster.text()
    assert [p for p in pids.values() if alive(p)] == []
    assert processes_using(cluster.root) == []
    assert not (cluster.root / "run.json").exists()
    stopped = cli(cluster.root, "status")
    assert stopped.returncode == ExitCode.NOT_RUNNING, stopped.stderr


def test_up_again_reuses_the_data_and_a_killed_supervisor_leaves_nothing(cluster: Up) -> None:
    assert cluster.proc.poll() is not None, "runs after the Ctrl-C test"
    # The very flags of the first start (as the README's `make up UP=...` again): no note.
    base = load_layout(cluster.root / "cluster.toml").process("c1").listen[1]
    flags = ["--controllers", "1", "--groups", "2", "--spare-groups", "1"]
    again = start_up(cluster.root, "--base-port", str(base), *flags)
    try:
        assert "Starting the cluster again (data kept)" in again.text()
        assert "sizing flags" not in again.text()
        assert "First start" not in again.text()
        snapshot = status(cluster.root)
        # Two joins, a leave, the SQL test's three CREATE TABLEs and its ANALYZE; nothing
        # joined again.
        assert snapshot["config_num"] == 7
        assert owners(snapshot) == {1, 2}
        with shardwise.connect(cluster.root) as kv:
            assert kv.mget(KEYS) == KEYS
            assert kv.get("after-the-kill") == "still here"
            assert kv.sql("SELECT count(*) FROM items").rows == [(3,)]
        pids = again.pids()
    finally:
        # Even a supervisor killed outright takes its processes with it (the kernel's
        # parent-death signal), and its lock goes with the last of them.
        again.proc.kill()
        again.proc.wait(timeout=STOP_TIMEOUT_S)
    wait_for(
        lambda: not any(alive(p) for p in pids.values()), STOP_TIMEOUT_S, "the servers to exit"
    )
    assert processes_using(cluster.root) == []
