"""Memory held for unfinished frames goes back to the operating system.

A server in its own process; authenticated connections from this one each send all but
the last KiB of a 16 MiB frame, then close. Round after round, the server's resident
memory must rise (the buffers are real) and come back near where it started (freed at
once, not at the next garbage collection, and not kept by malloc's heap).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest

from shardwise.net.auth import DialerHandshake
from shardwise.net.frames import (
    CLOSED,
    MAX_FRAME_BYTES,
    NEED_BUFFER,
    NEED_DATA,
    Codec,
    encode_frame,
)
from shardwise.net.harness import TEST_SECRET
from shardwise.net.wire import Challenge, PeerRole, RpcRequest, Welcome, WireMessage

HOGS = 16
"""Connections per round, each holding one near-maximal frame: the whole default budget."""
ROUNDS = 3
MARGIN_MB = 64
"""Resident memory a server may keep after a round (the frames held were 256 MiB)."""
DEADLINE_S = 30.0

SERVER = """
import asyncio, sys
from shardwise.net.harness import TEST_SECRET as SECRET
from shardwise.net.transport import Transport
async def main():
    t = Transport("srv", SECRET)
    await t.start()
    print(t.address[1], flush=True)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while await reader.readline():
        print(t.stats.frame_bytes_buffered, t.connection_count, flush=True)
    await t.close()
asyncio.run(main())
"""

pytestmark = pytest.mark.skipif(
    not os.path.exists("/proc/self/status"), reason="reads resident memory from /proc"
)


def rss_mb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) // 1024
    raise AssertionError("no VmRSS")


def poll(what: str, condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {DEADLINE_S} s: {what}")
        time.sleep(0.02)


def receive(sock: socket.socket, codec: Codec) -> WireMessage:
    while (event := codec.next_event()) is NEED_DATA:
        codec.receive_data(sock.recv(4096))
    assert event is not CLOSED and event is not NEED_BUFFER, event
    return event


def authenticated(port: int, name: str) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port))
    codec = Codec()
    handshake = DialerHandshake(TEST_SECRET, name, PeerRole.CLIENT)
    sock.sendall(encode_frame(handshake.hello()))
    challenge = receive(sock, codec)
    assert isinstance(challenge, Challenge), challenge
    sock.sendall(encode_frame(handshake.on_challenge(challenge)))
    welcome = receive(sock, codec)
    assert isinstance(welcome, Welcome), welcome
    handshake.on_welcome(welcome)
    return sock


@contextmanager
def server() -> Iterator[tuple[subprocess.Popen[str], int, Callable[[], tuple[int, int]]]]:
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    stdin, stdout = proc.stdin, proc.stdout
    assert stdin is not None and stdout is not None

    def gauge() -> tuple[int, int]:
        """Bytes buffered for unfinished frames, and open connections."""
        stdin.write("?\n")
        stdin.flush()
        buffered, connections = stdout.readline().split()
        return int(buffered), int(connections)

    try:
        yield proc, int(stdout.readline()), gauge
    finally:
        stdin.close()
        proc.wait(timeout=DEADLINE_S)
        stdout.close()


def test_buffers_of_unfinished_frames_are_returned_once_their_connections_close() -> None:
    body = bytes(MAX_FRAME_BYTES - 200)
    frame = encode_frame(RpcRequest(call_id=1, method="x", timeout_ms=1000, body=body))
    part = memoryview(frame)[: len(frame) - 1024]
    with server() as (proc, port, gauge):
        baseline = rss_mb(proc.pid)
        for round_ in range(ROUNDS):
            hogs = [authenticated(port, f"hog-{round_}-{n}") for n in range(HOGS)]
            for hog in hogs:
                hog.sendall(part)
            poll("every frame buffered", lambda: gauge()[0] == HOGS * len(frame))
            held = rss_mb(proc.pid)
            assert held > baseline + HOGS * 8, (baseline, held)  # the buffers are real
            for hog in hogs:
                hog.close()
            poll("every connection gone", lambda: gauge() == (0, 0))
            poll(
                f"memory back near {baseline} MB (round {round_}, {rss_mb(proc.pid)} MB now)",
                lambda: rss_mb(proc.pid) < baseline + MARGIN_MB,
            )
