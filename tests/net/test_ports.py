"""free_ports picks ports below the ephemeral range, where no outgoing connection can
take one between the pick and the server's bind."""

from __future__ import annotations

import socket

from shardwise.net.ports import FREE_PORT_RANGE, free_ports


def test_free_ports_are_distinct_bindable_and_below_the_ephemeral_range() -> None:
    ports = free_ports(20)
    low, high = FREE_PORT_RANGE
    assert len(set(ports)) == 20 and all(low <= p <= high for p in ports)
    with open("/proc/sys/net/ipv4/ip_local_port_range") as file:
        ephemeral_low = int(file.read().split()[0])
    assert high < ephemeral_low
    held = []
    try:
        for port in ports:
            s = socket.socket()
            held.append(s)
            s.bind(("127.0.0.1", port))
    finally:
        for s in held:
            s.close()
