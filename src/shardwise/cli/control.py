"""How ``shardwise stop / start / restart / down`` reach a running ``shardwise up``: a
Unix socket in the cluster directory (``up.sock``).

A socket rather than signals to pids: a request names processes and waits for the
answer (stopped, listening again, or why not), nothing can signal a pid that has been
reused by another program, and the directory's mode (0700) keeps other users out. One
request per connection, one JSON line each way::

    -> {"op": "restart", "names": ["g1-2"], "kill": false}
    <- {"ok": true, "message": "g1-2 restarted (pid 4242)"}

The server half is driven by the supervisor's own ``select`` loop (it never blocks it);
the client half is a plain blocking socket with a deadline.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from shardwise.errors import CliError, ClusterNotRunningError

CONTROL_SOCKET: Final = "up.sock"
MAX_SOCKET_PATH_BYTES: Final = 100
"""Linux allows 107 bytes in a Unix socket's path; a longer cluster directory has no
control socket (``shardwise up`` says so)."""
MAX_REQUEST_BYTES: Final = 4096
MAX_CONNECTIONS: Final = 16
"""Control connections open at once; more are closed at once."""
MAX_REPLY_BYTES: Final = 64 * 1024
OPS: Final = ("stop", "start", "restart", "down")


@dataclass(slots=True)
class ControlRequest:
    op: str
    names: list[str]
    kill: bool
    conn: socket.socket


@dataclass(slots=True)
class _Connection:
    conn: socket.socket
    buffer: bytearray = field(default_factory=bytearray)


class _Listener:
    """The selector's tag for the listening socket."""


class ControlServer:
    """The listening socket and its connections, on the supervisor's selector."""

    def __init__(self, root: Path, selector: selectors.BaseSelector) -> None:
        self.path = root / CONTROL_SOCKET
        self._selector = selector
        self._listener: socket.socket | None = None
        self._connections: dict[int, _Connection] = {}

    def open(self) -> str | None:
        """Listen; a reason it cannot (then the commands say `shardwise up` has none)."""
        if len(os.fsencode(self.path)) > MAX_SOCKET_PATH_BYTES:
            return f"{self.path} is too long a path for a Unix socket"
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()  # left by a `shardwise up` that was killed (we hold the lock)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        # Made 0600 from the start (the umask decides a new socket's mode), not narrowed
        # after: the cluster directory may not be 0700 (one made before `shardwise up`).
        umask = os.umask(0o177)
        try:
            try:
                listener.bind(str(self.path))
            finally:
                os.umask(umask)
            os.chmod(self.path, 0o600)
            listener.listen(MAX_CONNECTIONS)
        except OSError as exc:
            listener.close()
            return f"cannot listen on {self.path}: {exc}"
        listener.setblocking(False)
        self._selector.register(listener, selectors.EVENT_READ, _Listener())
        self._listener = listener
        return None

    def owns(self, data: object) -> bool:
        return isinstance(data, (_Listener, _Connection))

    def handle(self, data: object) -> list[ControlRequest]:
        """The selector said ``data``'s socket is readable: the complete requests."""
        if isinstance(data, _Listener):
            assert self._listener is not None
            with contextlib.suppress(BlockingIOError, InterruptedError):
                conn, _ = self._listener.accept()
                if len(self._connections) >= MAX_CONNECTIONS:
                    conn.close()
                    return []
                conn.setblocking(False)
                entry = _Connection(conn)
                self._connections[conn.fileno()] = entry
                self._selector.register(conn, selectors.EVENT_READ, entry)
            return []
        assert isinstance(data, _Connection)
        try:
            chunk = data.conn.recv(MAX_REQUEST_BYTES)
        except BlockingIOError:
            return []
        except OSError:
            chunk = b""
        data.buffer += chunk
        if b"\n" not in data.buffer:
            if not chunk or len(data.buffer) > MAX_REQUEST_BYTES:
                self._drop(data.conn)
            return []
        self._selector.unregister(data.conn)  # one request per connection
        line = bytes(data.buffer.split(b"\n", 1)[0])
        try:
            request = json.loads(line)
            op, names, kill = request["op"], request.get("names", []), bool(request.get("kill"))
            if op not in OPS or not isinstance(names, list):
                raise ValueError(op)
            names = [str(n) for n in names]
        except (ValueError, KeyError, TypeError):
            self.reply(data.conn, False, "not a request this `shardwise up` understands")
            return []
        return [ControlRequest(op, names, kill, data.conn)]

    def reply(self, conn: socket.socket, ok: bool, message: str) -> None:
        payload = json.dumps({"ok": ok, "message": message}).encode()[:MAX_REPLY_BYTES]
        with contextlib.suppress(OSError):
            conn.setblocking(True)
            conn.settimeout(1.0)
            conn.sendall(payload + b"\n")
        self._drop(conn)

    def _drop(self, conn: socket.socket) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(conn)
        self._connections.pop(conn.fileno(), None)
        conn.close()

    def close(self) -> None:
        for entry in list(self._connections.values()):
            self._drop(entry.conn)
        if self._listener is not None:
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(self._listener)
            self._listener.close()
            self._listener = None
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()


def send_control(
    root: Path, op: str, names: list[str], *, kill: bool = False, timeout_s: float
) -> str:
    """Ask the ``shardwise up`` running ``root``; its message (:class:`CliError` with its
    message when it refused; :class:`ClusterNotRunningError` when none listens)."""
    path = root / CONTROL_SOCKET
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.settimeout(timeout_s)
    try:
        try:
            conn.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError):
            raise ClusterNotRunningError(
                f"no `shardwise up` runs the cluster in {root} (nothing listens on {path}). "
                "Processes run with `shardwise node` are stopped and started by whatever "
                "runs them (systemd: `systemctl restart shardwise@NAME`)."
            ) from None
        request: dict[str, Any] = {"op": op, "names": names, "kill": kill}
        conn.sendall(json.dumps(request).encode() + b"\n")
        data = b""
        while b"\n" not in data and len(data) < MAX_REPLY_BYTES:
            chunk = conn.recv(MAX_REPLY_BYTES)
            if not chunk:
                break
            data += chunk
    except TimeoutError:
        raise CliError(f"`shardwise up` did not answer within {timeout_s:.0f} s") from None
    finally:
        conn.close()
    try:
        reply = json.loads(data.split(b"\n", 1)[0])
        ok, message = bool(reply["ok"]), str(reply["message"])
    except (ValueError, KeyError, TypeError):
        raise CliError("`shardwise up` gave no answer (it may be stopping)") from None
    if not ok:
        raise CliError(message)
    return message
