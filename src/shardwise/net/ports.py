"""Picking free TCP ports for servers started later (tests, local clusters)."""

from __future__ import annotations

import random
import socket
from typing import Final

FREE_PORT_RANGE: Final = (20_000, 32_767)
"""Where :func:`free_ports` looks: below Linux's ephemeral range (32768-60999 by default).
A port the OS hands out for ``bind(0)`` comes from that range, and so does the source
port of every outgoing connection: between picking such a port and a server binding it,
any connection of any process may take it (a listener then fails with "address already
in use"). Ports below the range are only ever taken by a bind."""

MAX_FREE_PORT_TRIES: Final = 1000
"""Random ports tried before :func:`free_ports` gives up."""


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """Ports free right now in :data:`FREE_PORT_RANGE` (held open together, so they
    differ), at random so concurrent callers rarely meet."""
    low, high = FREE_PORT_RANGE
    rng = random.SystemRandom()
    sockets: list[socket.socket] = []
    try:
        for _ in range(MAX_FREE_PORT_TRIES):
            if len(sockets) == count:
                break
            candidate = socket.socket()
            try:
                candidate.bind((host, rng.randint(low, high)))
            except OSError:
                candidate.close()
                continue
            sockets.append(candidate)
        if len(sockets) < count:
            raise OSError(f"found only {len(sockets)} of {count} free ports in {low}-{high}")
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()
