"""Picking free TCP ports for servers started later (tests, local clusters)."""

from __future__ import annotations

import os
import random
import socket
from typing import Final

FREE_PORT_RANGE: Final = (20_000, 32_767)
"""Where :func:`free_ports` looks: below Linux's ephemeral range (32768-60999 by default).
A port the OS hands out for ``bind(0)`` comes from that range, and so does the source
port of every outgoing connection: between picking such a port and a server binding it,
any connection of any process may take it (a listener then fails with "address already
in use"). Ports below the range are only ever taken by a bind."""

PORT_RANGE_VARIABLE: Final = "SHARDWISE_PORT_RANGE"
"""``LOW-HIGH``: the ports :func:`free_ports` and ``testing.procs.free_base_port`` pick
from, in place of their defaults. Processes that pick ports at the same time (the test
suite's workers) each get a range of their own, so one never takes a port another picked
for a server that is stopped or not yet started."""

MAX_FREE_PORT_TRIES: Final = 1000
"""Random ports tried before :func:`free_ports` gives up."""


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """Ports free right now in :data:`FREE_PORT_RANGE` (held open together, so they
    differ), at random so concurrent callers rarely meet."""
    low, high = port_range(FREE_PORT_RANGE)
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


def port_range(default: tuple[int, int]) -> tuple[int, int]:
    """``default``, or the range :data:`PORT_RANGE_VARIABLE` names."""
    named = os.environ.get(PORT_RANGE_VARIABLE)
    if not named:
        return default
    low, _, high = named.partition("-")
    return int(low), int(high)
