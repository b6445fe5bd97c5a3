"""Real server processes on loopback, for tests and benchmarks: start, kill, restart.

Each server is ``python -m <module>`` (a KV group by default, or the controller) in its
own process with its own data directory; the harness waits (with a deadline) for the
``READY`` line a server prints once it listens, and can stop it with SIGTERM or kill it
with SIGKILL.
"""

from __future__ import annotations

import os
import random
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any, Final

from shardwise.clusterfile import DEFAULT_BASE_PORT, ClusterLayout
from shardwise.net.certs import CA_CERT, make_node_certificate
from shardwise.net.links import Address
from shardwise.net.ports import free_ports, port_range
from shardwise.net.tls import TlsFiles

__all__ = ["ProcessGroup", "free_ports", "wait_for_line"]

READY_TIMEOUT_S: Final = 30.0
STOP_TIMEOUT_S: Final = 15.0


def _file_name(node: str) -> str:
    return node.replace(":", "_")


def wait_for_line(stream: IO[str], prefix: str, timeout_s: float) -> str:
    """The first line starting with ``prefix``, or TimeoutError after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"no line starting with {prefix!r} within {timeout_s} s")
        ready, _, _ = select.select([stream], [], [], remaining)
        if ready:
            line = stream.readline()
            if not line:
                raise RuntimeError(f"the process closed its output before {prefix!r}")
            if line.startswith(prefix):
                return line.strip()


class ProcessGroup:
    """``size`` replicas of one service, named ``<prefix>1``.., under ``base_dir``."""

    def __init__(
        self,
        base_dir: Path,
        size: int = 3,
        *,
        secret: bytes = b"test-secret-for-a-local-group",
        tick_ms: int = 50,
        extra_args: tuple[str, ...] = (),
        module: str = "shardwise.kvgroup",
        prefix: str = "n",
        ids_are_addresses: bool = False,
        tls_ca: Path | None = None,
    ) -> None:
        """``ids_are_addresses``: name each server by its ``127.0.0.1:PORT`` (how replica
        group servers are named) instead of ``<prefix><n>``. ``tls_ca``: a CA directory
        (``certs.make_ca``): each server gets a node certificate from it and runs TLS."""
        self.base_dir = base_dir
        self.module = module
        ports = free_ports(size)
        if ids_are_addresses:
            self.ids = [f"127.0.0.1:{port}" for port in ports]
        else:
            self.ids = [f"{prefix}{i}" for i in range(1, size + 1)]
        self.ports = dict(zip(self.ids, ports, strict=True))
        self.secret = secret
        self.secret_file = base_dir / "secret"
        base_dir.mkdir(parents=True, exist_ok=True)
        self.secret_file.write_bytes(secret)
        os.chmod(self.secret_file, 0o600)
        self.tick_ms = tick_ms
        self.extra_args = extra_args
        self.procs: dict[str, subprocess.Popen[str]] = {}
        self._logs: list[IO[str]] = []
        self.tls: dict[str, TlsFiles] = {}
        """Each server's TLS files, when the group runs TLS."""
        if tls_ca is not None:
            for node in self.ids:
                issued = make_node_certificate(tls_ca, node, base_dir / "tls")
                self.tls[node] = TlsFiles(issued.cert, issued.key, tls_ca / CA_CERT)

    @property
    def addresses(self) -> dict[str, Address]:
        return {node: ("127.0.0.1", port) for node, port in self.ports.items()}

    def command(self, node: str) -> list[str]:
        peers = [f"--peer={p}=127.0.0.1:{self.ports[p]}" for p in self.ids if p != node]
        return [
            sys.executable, "-m", self.module,
            f"--id={node}",
            f"--listen=127.0.0.1:{self.ports[node]}",
            *peers,
            f"--data={self.base_dir / _file_name(node)}",
            f"--secret-file={self.secret_file}",
            f"--tick-ms={self.tick_ms}",
            *self._tls_args(node),
            *self.extra_args,
        ]  # fmt: skip

    def _tls_args(self, node: str) -> list[str]:
        files = self.tls.get(node)
        if files is None:
            return []
        return [f"--tls-cert={files.cert}", f"--tls-key={files.key}", f"--tls-ca={files.ca}"]

    def start(self, node: str) -> None:
        old = self.procs.get(node)
        if old is not None:
            if old.poll() is None:
                raise RuntimeError(f"{node} is already running")
            if old.stdout is not None:
                old.stdout.close()
        log = open(self.base_dir / f"{_file_name(node)}.log", "a")  # noqa: SIM115 - closed in close()
        self._logs.append(log)
        proc = subprocess.Popen(self.command(node), stdout=subprocess.PIPE, stderr=log, text=True)
        self.procs[node] = proc
        assert proc.stdout is not None
        wait_for_line(proc.stdout, "READY", READY_TIMEOUT_S)

    def start_all(self) -> None:
        for node in self.ids:
            self.start(node)

    def alive(self, node: str) -> bool:
        proc = self.procs.get(node)
        return proc is not None and proc.poll() is None

    def kill(self, node: str) -> None:
        """SIGKILL: no chance to flush or say goodbye, as in a power cut of the process."""
        proc = self.procs[node]
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=STOP_TIMEOUT_S)

    def stop(self, node: str) -> int:
        """SIGTERM and wait: a clean shutdown; returns the exit code."""
        proc = self.procs[node]
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        return proc.wait(timeout=STOP_TIMEOUT_S)

    def close(self) -> dict[str, int]:
        codes = {}
        for node in list(self.procs):
            try:
                codes[node] = self.stop(node)
            except subprocess.TimeoutExpired:
                self.procs[node].kill()
                codes[node] = self.procs[node].wait()
            stdout = self.procs[node].stdout
            if stdout is not None:
                stdout.close()
        for log in self._logs:
            log.close()
        self._logs.clear()
        return codes

    def __enter__(self) -> ProcessGroup:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


BASE_PORT_RANGE: Final = (20_000, 30_000)
"""Below Linux's ephemeral ports (32768 and up), so that no client connection of another
test can take one of a cluster's ports while it is stopped between two starts."""


def free_base_port(layout: ClusterLayout, attempts: int = 50) -> int:
    """A ``--base-port`` in :data:`BASE_PORT_RANGE` at which every port of ``layout``
    (laid out from the default base) is free now."""
    offsets = [
        port - DEFAULT_BASE_PORT
        for p in layout.processes
        for port in (p.listen[1], p.metrics[1] if p.metrics else None)
        if port is not None
    ]
    rng = random.Random()
    for _ in range(attempts):
        low, high = port_range(BASE_PORT_RANGE)
        base = rng.randrange(low, high - max(offsets))
        sockets = []
        try:
            for offset in offsets:
                s = socket.socket()
                sockets.append(s)
                s.bind(("127.0.0.1", base + offset))
        except OSError:
            continue
        finally:
            for s in sockets:
                s.close()
        return base
    raise RuntimeError(f"no free base port in {BASE_PORT_RANGE} after {attempts} tries")


CLI_TIMEOUT_S: Final = 120.0
"""The longest one ``shardwise`` command run by a test may take."""


def run_cli(
    root: Path,
    *args: str,
    stdin: str | bytes | None = None,
    env: Mapping[str, str] | None = None,
    text: bool = True,
    timeout_s: float = CLI_TIMEOUT_S,
) -> subprocess.CompletedProcess[Any]:
    """``shardwise ARGS`` as a user types it, against the cluster directory ``root``,
    with its output a pipe (as in a script); extra environment ``env``."""
    return subprocess.run(
        [sys.executable, "-m", "shardwise.cli", *args],
        env={**os.environ, "SHARDWISE_CLUSTER_DIR": str(root), **(env or {})},
        input=stdin,
        capture_output=True,
        text=text,
        timeout=timeout_s,
        check=False,
    )


def start_python_child(
    code: str, argument: str, ready: str, timeout_s: float
) -> subprocess.Popen[str]:
    """``python -c code argument``, once it printed a line starting with ``ready`` (a
    client process a test can kill with ``kill -9``; its stderr is dropped)."""
    child = subprocess.Popen(
        [sys.executable, "-c", code, argument],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert child.stdout is not None
    wait_for_line(child.stdout, ready, timeout_s)
    return child


def kill_child(child: subprocess.Popen[str]) -> None:
    """``kill -9`` a child, wherever it is, and reap it."""
    child.kill()
    child.wait()
    if child.stdout is not None:
        child.stdout.close()
