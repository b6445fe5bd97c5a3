"""``shardwise kv`` through the real command, against a real ``shardwise up`` (a controller
of 1 and one group of 3 servers): values from stdin and files, binary values printed
safely, sizes refused before anything is sent.

Waiting is polling with deadlines, never a fixed sleep.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Final

import pytest

import shardwise
from shardwise.cli.exits import ExitCode
from shardwise.cli.up import UP_MARKER
from shardwise.clusterfile import local_layout
from shardwise.model.kv import MAX_VALUE_BYTES
from shardwise.testing.procs import free_base_port, run_cli

pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]

UP_TIMEOUT_S: Final = 120.0
CLI_TIMEOUT_S: Final = 60.0
STOP_TIMEOUT_S: Final = 60.0
FLAGS: Final = ("--controllers", "1", "--groups", "1", "--spare-groups", "0")


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("kvcli") / ".shardwise"
    output = root.parent / "up.out"
    base = free_base_port(local_layout(root, controllers=1, groups=1, spare_groups=0))
    with open(output, "wb") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "shardwise.cli", "up", "--cluster-dir", str(root),
             "--base-port", str(base), *FLAGS],
            stdin=subprocess.DEVNULL, stdout=sink, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + UP_TIMEOUT_S
        while UP_MARKER not in output.read_text(errors="replace"):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"shardwise up did not start:\n{output.read_text(errors='replace')}")
            time.sleep(0.1)
        yield root
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()


def kv(root: Path, *args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    """``shardwise kv ARGS`` with its output a pipe (as in a script)."""
    return shardwise_cli(root, "kv", *args, stdin=stdin)


BINARY: Final = bytes(range(256)) * 3 + b"\n\x00-"


def test_a_value_from_stdin_is_stored_byte_for_byte(root: Path) -> None:
    put = kv(root, "put", "from-stdin", "-", stdin=BINARY)
    assert put.returncode == 0, put.stderr
    with shardwise.connect(root) as client:
        assert client.get("from-stdin") == BINARY  # not "-"
    got = kv(root, "get", "from-stdin")  # a pipe: the raw bytes, no newline added
    assert got.returncode == 0 and got.stdout == BINARY


def test_a_value_from_a_file_up_to_the_limit(root: Path, tmp_path: Path) -> None:
    big = tmp_path / "big.bin"
    data = random.Random(7).randbytes(MAX_VALUE_BYTES)
    big.write_bytes(data)
    assert kv(root, "put", "from-file", f"@{big}").returncode == 0
    out = tmp_path / "out.bin"
    with open(out, "wb") as sink:
        got = subprocess.run(
            [sys.executable, "-m", "shardwise.cli", "kv", "get", "from-file"],
            env={**os.environ, "SHARDWISE_CLUSTER_DIR": str(root)},
            stdout=sink, timeout=CLI_TIMEOUT_S, check=False,
        )  # fmt: skip
    assert got.returncode == 0 and out.read_bytes() == data  # kv get > file round-trips


def test_a_value_over_the_limit_is_refused_before_sending(root: Path, tmp_path: Path) -> None:
    started = time.monotonic()
    result = kv(root, "put", "too-big", "-", stdin=b"x" * (50 << 20))
    assert result.returncode == ExitCode.REFUSED, result.stderr
    assert str(MAX_VALUE_BYTES).encode() in result.stderr
    assert time.monotonic() - started < 10.0  # (the deadline is 10 s: nothing waited it out)
    missing = tmp_path / "missing"
    result = kv(root, "put", "k", f"@{missing}")
    assert result.returncode == ExitCode.USAGE and b"cannot read" in result.stderr


def test_text_literals_and_the_text_flag(root: Path) -> None:
    assert kv(root, "put", "dash", "-", "--literal").returncode == 0
    assert kv(root, "put", "at", "@home", "--literal").returncode == 0
    assert kv(root, "put", "text", "-", "--text", stdin="héllo".encode()).returncode == 0
    with shardwise.connect(root) as client:
        assert client.get("dash") == "-"
        assert client.get("at") == "@home"
        assert client.get("text") == "héllo"  # a str, not bytes
    assert kv(root, "get", "text").stdout == "héllo\n".encode()
    bad = kv(root, "put", "k", "-", "--text", stdin=b"\xff")
    assert bad.returncode == ExitCode.USAGE and b"not UTF-8" in bad.stderr


def test_binary_values_print_escaped_when_asked_and_scan_stays_one_line_per_pair(
    root: Path,
) -> None:
    with shardwise.connect(root) as client:
        client.put(b"scan/\xff", b"a\tb\nc\x00")
        client.put("scan/text", "plain")
        client.put("scan/tab", "x\ty")
    escaped = kv(root, "get", "--escaped", "from-stdin")
    assert escaped.stdout.startswith(b"\\x00\\x01\\x02") and escaped.stdout.endswith(b"-\n")
    scan = kv(root, "scan", "scan/")
    assert scan.returncode == 0
    assert scan.stdout.decode().splitlines() == [
        "scan/tab\tx\\ty",
        "scan/text\tplain",
        "scan/\\xff\ta\\tb\\nc\\x00",  # keys in byte order: 0xff after every ASCII byte
    ]


def shardwise_cli(
    root: Path, *args: str, stdin: bytes | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[bytes]:
    """``shardwise ARGS`` against the cluster, output as bytes, extra environment ``env``."""
    return run_cli(root, *args, stdin=stdin, env=env, text=False, timeout_s=CLI_TIMEOUT_S)


def test_users_roles_and_logins_through_the_cli(root: Path) -> None:
    """The operator (holding the secret) makes a role and a user; the user then works
    with its password alone and is refused what its role does not grant."""
    assert kv(root, "put", "cli-user-key", "v0").returncode == 0
    made = shardwise_cli(root, "role", "set", "viewer", "--grant", "read:default")
    assert made.returncode == 0, made.stderr
    made = shardwise_cli(
        root, "user", "create", "carol", "--role", "viewer", "--password-stdin", stdin=b"pw-1\n"
    )
    assert made.returncode == 0, made.stderr
    listed = shardwise_cli(root, "user", "list", "--json")
    assert listed.returncode == 0 and b'"carol": [\n      "viewer"' in listed.stdout, listed
    carol = {"SHARDWISE_USER": "carol", "SHARDWISE_PASSWORD": "pw-1"}
    deadline = time.monotonic() + CLI_TIMEOUT_S
    while (got := shardwise_cli(root, "kv", "get", "cli-user-key", env=carol)).returncode != 0:
        # The servers learn of a new user by watching the controller.
        assert time.monotonic() < deadline, got.stderr
    assert got.stdout.rstrip(b"\n") == b"v0"
    put = shardwise_cli(root, "kv", "put", "cli-user-key", "pwned", env=carol)
    assert put.returncode == ExitCode.DENIED, put.stderr
    assert b"may not write" in put.stderr
    wrong = shardwise_cli(
        root, "kv", "get", "cli-user-key", env={**carol, "SHARDWISE_PASSWORD": "x"}
    )
    assert wrong.returncode == ExitCode.WRONG_SECRET, wrong.stderr
    assert b"carol" in wrong.stderr and b"password" in wrong.stderr
    as_admin = shardwise_cli(
        root, "user", "create", "eve", "--password-stdin", stdin=b"p\n", env=carol
    )
    assert as_admin.returncode == ExitCode.DENIED, as_admin.stderr
    assert shardwise_cli(root, "user", "drop", "carol").returncode == 0
