"""Run every process of a cluster on this machine and stop them all together: the engine
of ``shardwise up``.

**One process per replica.** Each controller replica and each group server is its own
``python -m shardwise.controller`` / ``python -m shardwise.shardserver`` process, exactly
what ``shardwise node`` runs on a real machine, so the local cluster exercises the same
code, ports, files and failure modes as a deployment, and ``kill -9`` of one pid is the
crash of one replica. (Multi-Raft stores host replicas of many groups in one process to
share connections and threads; here that would make a process crash take down one replica
of several groups at once, which is not what a local cluster should teach.)

**No orphans.** Every child runs in its own process group (so the terminal's Ctrl-C
reaches only ``shardwise up``, which then stops the children in order), is told by the
kernel to exit when ``shardwise up`` dies (``PR_SET_PDEATHSIG`` on Linux, so even a
``kill -9`` of the supervisor leaves nothing behind), and inherits the cluster lock, so
the directory counts as in use until the last process of the cluster has exited.

**Crashes.** A child that exits on its own is started again after a back-off
(:data:`RESTART_DELAY_S` doubling to :data:`MAX_RESTART_DELAY_S`); after
:data:`MAX_QUICK_RESTARTS` failures in a row, each within :data:`STABLE_AFTER_S` of its
start, it is left down and the rest keep running.

**Halts.** A replica that halts (it could not apply a committed entry: a disk error, a
corrupt file, a bug) stays up but serves nothing; its server prints
``HALTED <id> <reason>``. The supervisor logs why and restarts it after the same back-off
(a halt from a transient machine error may clear on restart, since a restart rebuilds the
shards from the Raft log); a halt that comes back right after each restart backs off
further and, past :data:`MAX_QUICK_RESTARTS`, is left halted (still answering
``shardwise status``, which shows the reason).
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import fcntl
import json
import os
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Final

from shardwise.cli.control import ControlRequest, ControlServer
from shardwise.clusterfile import ClusterLayout, Process
from shardwise.errors import CliError, ClusterInUseError
from shardwise.storage.fsutil import LOCK_NAME

READY_TIMEOUT_S: Final = 90.0
"""All processes listening (a slow, shared 2-core machine starts a dozen Pythons slowly)."""

STOP_TIMEOUT_S: Final = 15.0
"""A child's clean stop after SIGTERM; then SIGKILL."""

POLL_S: Final = 0.1
RESTART_DELAY_S: Final = 1.0
MAX_RESTART_DELAY_S: Final = 30.0
STABLE_AFTER_S: Final = 30.0
MAX_QUICK_RESTARTS: Final = 5
LOG_TAIL_LINES: Final = 20
MAX_PENDING_LINE_BYTES: Final = 64 * 1024
"""A child's stdout is read line by line; a longer line is cut (never held whole)."""

LOCK_FILE: Final = "up.lock"
RUN_FILE: Final = "run.json"
PR_SET_PDEATHSIG: Final = 1
CHILD_LOG_LEVEL: Final = "INFO"


class ClusterLock:
    """An exclusive ``flock`` on ``<cluster dir>/up.lock``, held while the cluster runs.

    A lock rather than a pid file: the kernel drops it when the last holder exits, so a
    crashed ``shardwise up`` never leaves a stale "in use" behind, and a live one can never
    be mistaken for dead. The file holds the holder's pid only to name it in the error.
    """

    def __init__(self, root: Path) -> None:
        self.path = root / LOCK_FILE
        self.fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise ClusterInUseError(
                f"the cluster in {self.path.parent} is in use: `shardwise up` (pid {holder}) "
                "or a process it started is running it. Stop it with Ctrl-C in its "
                "terminal, or start another cluster with --cluster-dir DIR."
            ) from None
        except OSError:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd

    def holder(self) -> str | None:
        """Without taking it: the pid written in the lock while someone holds it, else
        None."""
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return os.read(fd, 32).decode(errors="replace").strip() or "?"
        finally:
            os.close(fd)  # (closing also drops a lock we took)
        return None

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing our descriptor drops our hold on the lock
            self.fd = None


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - 16 * 1024))
            text = handle.read().decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def _die_with_parent(parent: int) -> Callable[[], None] | None:
    """A ``preexec_fn`` that has the kernel send SIGTERM to the child when ``parent``
    exits, however it exits (Linux only; elsewhere the process groups and the stop in
    ``shardwise up`` are the only cleanup)."""
    if sys.platform != "linux":
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up before fork, not after
    except (OSError, AttributeError):
        return None

    def set_death_signal() -> None:
        prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the call took effect
            os._exit(1)

    return set_death_signal


@dataclass(slots=True)
class _Child:
    spec: Process
    command: list[str]
    log_path: Path
    popen: subprocess.Popen[bytes] | None = None
    log: IO[bytes] | None = None
    started_at: float = 0.0
    ready: bool = False
    quick_failures: int = 0
    restart_at: float | None = None
    given_up: bool = False
    held: bool = False
    """Stopped on request (``shardwise stop``): not started again until asked."""
    spawns: int = 0
    pending: bytes = b""
    halt_stop_at: float | None = None
    """When to stop a halted child (after its back-off; again, with SIGKILL, if SIGTERM
    did not end it)."""
    halt_stopping: bool = False
    """SIGTERM sent to a halted child: start it again as soon as it exits."""

    @property
    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None


@dataclass(slots=True)
class _Active:
    """A control request being carried out: waiting for its processes to be down
    (``stop``, the first half of ``restart``), then up (``start``, the second half)."""

    request: ControlRequest
    children: list[_Child]
    phase: str
    deadline: float
    killed: bool = False


def log_note(path: Path, name: str, level: str, message: str) -> None:
    """Append a line to a process's log in the servers' JSON format, so `shardwise logs`
    shows the supervisor's view (a start, a crash) among the process's own events."""
    now = time.time()
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(now)) + f".{int(now % 1 * 1000):03d}"
    entry = {"time": stamp, "level": level, "logger": "shardwise.up", "node": name}
    entry["message"] = message
    with contextlib.suppress(OSError), open(path, "ab") as handle:
        handle.write(json.dumps(entry).encode() + b"\n")


def running_elsewhere(layout: ClusterLayout) -> list[str]:
    """The processes of ``layout`` whose data directory a live process holds (each
    server locks its ``raft/`` directory): run by something else than this
    ``shardwise up``, e.g. ``shardwise node``."""
    held = []
    for process in layout.processes:
        path = layout.data_dir / process.name / "raft" / LOCK_NAME
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fcntl.flock(fd, fcntl.LOCK_UN)
        except BlockingIOError:
            held.append(process.name)
        finally:
            os.close(fd)
    return held


class Supervisor:
    """Starts, watches and stops every process of ``layout`` on this machine."""

    def __init__(
        self,
        layout: ClusterLayout,
        lock: ClusterLock,
        say: Callable[[str], None],
        *,
        restart: bool = True,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.layout = layout
        self._lock = lock
        self._say = say
        self._restart = restart
        self._env = dict(os.environ if env is None else env)
        # Servers log at WARNING by default; a local cluster's logs should show the moves.
        self._env.setdefault("SHARDWISE_LOG", CHILD_LOG_LEVEL)
        self._env.setdefault("SHARDWISE_LOG_FORMAT", "json")  # structured: one object a line
        self._children = {
            p.name: _Child(p, layout.command(p.name), layout.log_file(p.name))
            for p in layout.processes
        }
        self._selector = selectors.DefaultSelector()
        self._control = ControlServer(layout.root, self._selector)
        self._active: list[_Active] = []
        self._down_requested = False
        self._stopping = False
        self._preexec = _die_with_parent(os.getpid())
        atexit.register(self._kill_all)  # the last resort if the interpreter exits early

    # --- life ------------------------------------------------------------------------

    def start_all(self, timeout_s: float = READY_TIMEOUT_S) -> float:
        """Start every process and wait until each listens; the seconds it took. A
        process that exits first, or the timeout, raises :class:`CliError` (the caller
        stops the rest with :meth:`stop_all`)."""
        started = time.monotonic()
        self.layout.log_dir.mkdir(parents=True, exist_ok=True)
        self.layout.data_dir.mkdir(parents=True, exist_ok=True)
        for child in self._children.values():
            self._spawn(child)
        deadline = started + timeout_s
        while not all(c.ready for c in self._children.values()):
            self._pump(min(POLL_S, max(0.0, deadline - time.monotonic())))
            for child in self._children.values():
                if not child.ready and child.popen is not None and child.popen.poll() is not None:
                    self._pump(0)  # whatever it printed last
                    raise CliError(
                        f"{child.spec.name} exited before it was ready "
                        f"({describe_exit(child.popen.returncode)}). The end of its log, "
                        f"{child.log_path}:\n{log_tail(child.log_path)}"
                    )
            if time.monotonic() >= deadline:
                waiting = [c.spec.name for c in self._children.values() if not c.ready]
                raise CliError(
                    f"{', '.join(waiting)} did not start listening within {timeout_s:.0f} s "
                    f"(see {self.layout.log_dir})"
                )
        return time.monotonic() - started

    def open_control(self) -> str | None:
        """Take requests on the control socket (see ``control.py``); why not, if not."""
        return self._control.open()

    def supervise(self) -> None:
        """Watch the children until interrupted (KeyboardInterrupt: Ctrl-C, or SIGTERM /
        SIGHUP turned into one by the caller, or ``shardwise down``), restarting any that
        exit on their own and carrying out the control socket's requests."""
        while True:
            self._pump(POLL_S)
            now = time.monotonic()
            self._active = [a for a in self._active if not self._carry_on(a, now)]
            if self._down_requested:
                raise KeyboardInterrupt
            for child in self._children.values():
                if child.popen is None or child.given_up or child.held:
                    continue
                if child.halt_stop_at is not None and now >= child.halt_stop_at:
                    self._stop_halted(child, now)
                code = child.popen.poll()
                if code is not None and child.restart_at is None:
                    self._exited(child, code, now)
                if child.restart_at is not None and now >= child.restart_at:
                    child.restart_at = None
                    self._spawn(child)

    def stop_all(self, timeout_s: float = STOP_TIMEOUT_S) -> dict[str, int]:
        """SIGTERM every child's process group, wait for them (a second Ctrl-C skips the
        wait), SIGKILL whatever is left; the exit codes."""
        self._stopping = True
        for active in self._active:
            self._control.reply(active.request.conn, False, "`shardwise up` is stopping")
        self._active = []
        self._control.close()
        running = [c for c in self._children.values() if c.running]
        for child in running:
            self._signal(child, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        try:
            while any(c.running for c in running) and time.monotonic() < deadline:
                self._pump(POLL_S)
        except KeyboardInterrupt:
            self._say("interrupted again: killing what is left")
        self._kill_all()
        codes = {}
        for child in self._children.values():
            if child.popen is not None:
                codes[child.spec.name] = child.popen.wait()
                self._close_pipes(child)
        self._selector.close()
        with contextlib.suppress(FileNotFoundError):
            (self.layout.root / RUN_FILE).unlink()
        return codes

    def pids(self) -> dict[str, int]:
        return {name: c.popen.pid for name, c in self._children.items() if c.popen and c.running}

    # --- requests (shardwise stop / start / restart / down) -----------------------------

    def _begin(self, request: ControlRequest) -> None:
        now = time.monotonic()
        if request.op == "down":
            count = sum(1 for c in self._children.values() if c.running)
            self._control.reply(request.conn, True, f"stopping {count} processes")
            self._down_requested = True
            return
        unknown = [n for n in request.names if n not in self._children]
        if not request.names or unknown:
            known = ", ".join(self._children)
            self._control.reply(
                request.conn, False, f"no process {', '.join(unknown) or '?'} here (known: {known})"
            )
            return
        children = [self._children[n] for n in dict.fromkeys(request.names)]
        busy = [c.spec.name for a in self._active for c in a.children if c in children]
        if busy:
            self._control.reply(request.conn, False, f"{', '.join(busy)}: a request is under way")
            return
        if request.op == "start":
            active = _Active(request, children, "up", now + READY_TIMEOUT_S)
            self._bring_up(active, now)
        else:
            sig = signal.SIGKILL if request.kill else signal.SIGTERM
            for child in children:
                child.held, child.restart_at, child.halt_stop_at = True, None, None
                if child.running:
                    log_note(child.log_path, child.spec.name, "INFO", f"{sig.name} on request")
                    self._signal(child, sig)
            active = _Active(request, children, "down", now + STOP_TIMEOUT_S)
            self._say(f"{request.op} {', '.join(c.spec.name for c in children)} (on request)")
        self._active.append(active)

    def _bring_up(self, active: _Active, now: float) -> None:
        active.phase, active.deadline = "up", now + READY_TIMEOUT_S
        for child in active.children:
            child.held = child.given_up = False
            child.quick_failures, child.restart_at = 0, None
            if not child.running:
                self._spawn(child)

    def _carry_on(self, active: _Active, now: float) -> bool:
        """Move ``active`` on; whether it is finished (and answered)."""
        names = ", ".join(c.spec.name for c in active.children)
        if active.phase == "down":
            if any(c.running for c in active.children):
                if now >= active.deadline and not active.killed:
                    active.killed, active.deadline = True, now + STOP_TIMEOUT_S
                    for child in active.children:
                        self._signal(child, signal.SIGKILL)
                elif now >= active.deadline:
                    self._control.reply(active.request.conn, False, f"{names} did not stop")
                    return True
                return False
            self._write_run_file()
            if active.request.op == "stop":
                codes = [
                    f"{c.spec.name} {describe_exit(c.popen.returncode)}"
                    for c in active.children
                    if c.popen is not None and c.popen.returncode is not None
                ]
                message = f"stopped: {', '.join(codes) or names}; `shardwise start {names}`"
                self._control.reply(active.request.conn, True, message)
                return True
            self._bring_up(active, now)
            return False
        failed = [c for c in active.children if not c.running]
        if failed:
            self._control.reply(
                active.request.conn,
                False,
                f"{', '.join(c.spec.name for c in failed)} exited before it was ready "
                f"(see {self.layout.log_dir})",
            )
            return True
        if all(c.ready for c in active.children):
            pids = ", ".join(f"{c.spec.name} pid {c.popen.pid}" for c in active.children if c.popen)
            verb = "restarted" if active.request.op == "restart" else "started"
            self._control.reply(active.request.conn, True, f"{verb}: {pids}, listening")
            return True
        if now >= active.deadline:
            self._control.reply(active.request.conn, False, f"{names} is not listening yet")
            return True
        return False

    # --- inside ----------------------------------------------------------------------

    def _spawn(self, child: _Child) -> None:
        self._close_pipes(child)
        again = " again" if child.spawns else ""
        log_note(child.log_path, child.spec.name, "INFO", f"shardwise up starts it{again}")
        child.log = open(child.log_path, "ab")  # noqa: SIM115 - closed in _close_pipes
        lock_fd = self._lock.fd
        child.popen = subprocess.Popen(
            child.command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=child.log,
            env=self._env,
            cwd=self.layout.root,
            process_group=0,  # its own group: the terminal's Ctrl-C reaches only us
            preexec_fn=self._preexec,  # noqa: PLW1509 - no threads run while we spawn
            pass_fds=(lock_fd,) if lock_fd is not None else (),
        )
        child.started_at = time.monotonic()
        child.spawns += 1
        child.ready = False
        child.pending = b""
        child.halt_stop_at, child.halt_stopping = None, False
        assert child.popen.stdout is not None
        os.set_blocking(child.popen.stdout.fileno(), False)
        self._selector.register(child.popen.stdout, selectors.EVENT_READ, child)
        self._write_run_file()

    def _pump(self, timeout_s: float) -> None:
        """Read what the children printed (their READY lines) for up to ``timeout_s``."""
        if not self._selector.get_map():
            time.sleep(timeout_s)
            return
        for key, _ in self._selector.select(timeout_s):
            if self._control.owns(key.data):
                for request in self._control.handle(key.data):
                    self._begin(request)
                continue
            child: _Child = key.data
            stream = key.fileobj
            assert not isinstance(stream, int) and hasattr(stream, "fileno")
            try:
                data = os.read(stream.fileno(), 65536)
            except BlockingIOError:
                continue
            if not data:
                self._selector.unregister(stream)
                continue
            child.pending += data
            *lines, child.pending = child.pending.split(b"\n")
            child.pending = child.pending[-MAX_PENDING_LINE_BYTES:]
            for line in lines:
                self._on_line(child, line.decode(errors="replace"))

    def _on_line(self, child: _Child, line: str) -> None:
        if child.log is not None:
            child.log.write(f"{line}\n".encode())
            child.log.flush()
        if line.startswith("HALTED ") and child.halt_stop_at is None and not child.halt_stopping:
            self._halted(child, line.split(" ", 2)[-1], time.monotonic())
        if line.startswith("READY ") and not child.ready:
            child.ready = True
            if child.spawns > 1 and child.popen is not None:
                self._say(f"{child.spec.name} is back (pid {child.popen.pid})")

    def _halted(self, child: _Child, reason: str, now: float) -> None:
        """A child's replica halted: restart it after a back-off (see the docstring)."""
        if self._stopping or child.held or not self._restart:
            return
        name = child.spec.name
        if now - child.started_at >= STABLE_AFTER_S:
            child.quick_failures = 0
        child.quick_failures += 1
        if child.quick_failures > MAX_QUICK_RESTARTS:
            message = f"{name} halted again ({reason}); left halted: {MAX_QUICK_RESTARTS} tries"
            self._say(message)
            log_note(child.log_path, name, "ERROR", message)
            return
        delay = min(MAX_RESTART_DELAY_S, RESTART_DELAY_S * 2 ** (child.quick_failures - 1))
        child.halt_stop_at = now + delay
        message = (
            f"{name} halted: {reason}; restarting it in {delay:.0f} s (a halt from a "
            "transient machine error may clear on restart)"
        )
        self._say(message)
        log_note(child.log_path, name, "WARNING", message)

    def _stop_halted(self, child: _Child, now: float) -> None:
        if not child.halt_stopping:
            child.halt_stopping = True
            child.halt_stop_at = now + STOP_TIMEOUT_S
            self._signal(child, signal.SIGTERM)
        else:
            child.halt_stop_at = None
            self._signal(child, signal.SIGKILL)

    def _exited(self, child: _Child, code: int, now: float) -> None:
        self._pump(0)
        if self._stopping:
            return
        if child.halt_stopping:  # stopped by us after a halt: its back-off is over
            child.halt_stopping, child.halt_stop_at, child.restart_at = False, None, now
            log_note(child.log_path, child.spec.name, "INFO", "stopped after its halt")
            return
        what = f"{child.spec.name} (pid {child.popen.pid if child.popen else '?'}) "
        what += f"exited: {describe_exit(code)}"
        if not self._restart:
            child.given_up = True
            self._say(f"{what}; not restarting it (--no-restart)")
            log_note(child.log_path, child.spec.name, "WARNING", f"{what} (--no-restart)")
            return
        if now - child.started_at >= STABLE_AFTER_S:
            child.quick_failures = 0
        child.quick_failures += 1
        if child.quick_failures > MAX_QUICK_RESTARTS:
            child.given_up = True
            self._say(
                f"{what}; it failed {MAX_QUICK_RESTARTS} times in a row, so it stays down "
                f"(see {child.log_path})"
            )
            return
        delay = min(MAX_RESTART_DELAY_S, RESTART_DELAY_S * 2 ** (child.quick_failures - 1))
        child.restart_at = now + delay
        self._say(f"{what}; starting it again in {delay:.0f} s")
        log_note(
            child.log_path,
            child.spec.name,
            "WARNING",
            f"{what.split(' ', 1)[1]}; shardwise up starts it again in {delay:.0f} s",
        )
        self._write_run_file()

    def _signal(self, child: _Child, sig: signal.Signals) -> None:
        if child.popen is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(child.popen.pid, sig)

    def _kill_all(self) -> None:
        for child in self._children.values():
            if child.running:
                self._signal(child, signal.SIGKILL)

    def _close_pipes(self, child: _Child) -> None:
        if child.popen is not None and child.popen.stdout is not None:
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(child.popen.stdout)
            child.popen.stdout.close()
        if child.log is not None:
            child.log.close()
            child.log = None

    def _write_run_file(self) -> None:
        """``run.json``: the supervisor's and every child's pid, for operators (and the
        tests) who want to signal one process."""
        path = self.layout.root / RUN_FILE
        temp = path.with_name(RUN_FILE + ".tmp")
        temp.write_text(json.dumps({"up": os.getpid(), "processes": self.pids()}, indent=2))
        os.replace(temp, path)
