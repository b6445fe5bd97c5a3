"""A hostile peer against real server processes over real TLS.

Holding the cluster secret used to be enough to act as any Raft peer: declare the node
role with a made-up id and one InstallSnapshot with undecodable membership halted a
replica, one Heartbeat with a huge term halted the leader, a Heartbeat with term + 1
every 0.3 s kept a group leaderless, and ``shard.pull`` handed out whole shards. Now a
node must hold the node certificate of the id it claims, and a node that is no member of
a group is not listened to by it.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from pathlib import Path

import pytest

from shardwise.errors import NetError
from shardwise.model.config import ShardId
from shardwise.net.certs import CA_CERT, make_client_certificate, make_node_certificate
from shardwise.net.tls import client_context
from shardwise.net.transport import Transport
from shardwise.net.wire import PeerRole
from shardwise.raft.messages import Heartbeat, InstallSnapshot, Message
from shardwise.shardserver.protocol import PULL, STATUS, PullRequest, StatusReply, StatusRequest
from shardwise.storage.types import SnapshotMeta
from shardwise.testing.cluster import ProcessCluster

pytestmark = pytest.mark.timeout(240)

INTRUDER = "intruder-node"
CALL_S = 3.0
WAIT_S = 30.0
TERM_BUMPS = 10
BUMP_EVERY_S = 0.3
"""The attack's own pace (as found: term + 1 every 0.3 s), not a wait for a condition."""


def _node_context(cluster: ProcessCluster, tmp: Path, node: str) -> ssl.SSLContext:
    """A dialer context carrying a node certificate for ``node`` from the cluster's CA."""
    assert cluster.ca_dir is not None
    issued = make_node_certificate(cluster.ca_dir, node, tmp / "intruder")
    return client_context(cluster.ca_dir / CA_CERT, certfile=issued.cert, keyfile=issued.key)


async def _transport(
    cluster: ProcessCluster, node_id: str, context: ssl.SSLContext | None, role: PeerRole
) -> Transport:
    transport = Transport(node_id, cluster.secret, role=role, listen=None, client_ssl=context)
    for server in cluster.servers[1]:
        if server != node_id:
            transport.set_peer(server, _address(server))
    await transport.start()
    return transport


def _address(server: str) -> tuple[str, int]:
    host, _, port = server.rpartition(":")
    return host, int(port)


async def _status(transport: Transport, server: str) -> StatusReply:
    return await transport.call(server, STATUS, StatusRequest(), timeout_s=CALL_S)


async def _refused(transport: Transport, server: str) -> bool:
    try:
        await _status(transport, server)
    except NetError:
        return True
    return False


async def test_only_a_node_certificate_for_the_claimed_id_makes_a_node(tmp_path: Path) -> None:
    async with ProcessCluster(tmp_path, groups=1, controllers=1, tls=True) as cluster:
        assert cluster.ca_dir is not None
        server, other = cluster.servers[1][:2]
        ca = cluster.ca_dir / CA_CERT
        client_cert = make_client_certificate(cluster.ca_dir, "alice", tmp_path / "alice")
        with_client_cert = client_context(ca, certfile=client_cert.cert, keyfile=client_cert.key)
        someone_elses = _node_context(cluster, tmp_path, INTRUDER)
        attempts = {
            "a client certificate": (INTRUDER, with_client_cert),
            "no certificate": (INTRUDER, client_context(ca)),
            "another node's certificate": (other, someone_elses),
        }
        for what, (claimed, context) in attempts.items():
            transport = await _transport(cluster, claimed, context, PeerRole.NODE)
            try:
                assert await _refused(transport, server), f"admitted as a node with {what}"
            finally:
                await transport.close()
        # The same certificates are fine for what they are: a client, and that node.
        for context in (with_client_cert, client_context(ca)):
            transport = await _transport(cluster, "a-client", context, PeerRole.CLIENT)
            try:
                assert (await _status(transport, server)).node_id == server
            finally:
                await transport.close()
        transport = await _transport(cluster, INTRUDER, someone_elses, PeerRole.NODE)
        try:
            assert (await _status(transport, server)).node_id == server
        finally:
            await transport.close()
        # A dialler reaching the wrong node is refused (by the handshake's id check here;
        # test_tls has an impostor that passes the handshake and fails the certificate).
        misdirected = Transport(
            INTRUDER,
            cluster.secret,
            listen=None,
            client_ssl=someone_elses,
            peers={server: _address(other)},
        )
        await misdirected.start()
        try:
            assert await _refused(misdirected, server)
        finally:
            await misdirected.close()


async def _leader(cluster: ProcessCluster, transport: Transport) -> StatusReply:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        for server in cluster.servers[1]:
            status = await _status(transport, server)
            if status.role == "leader":
                return status
        await asyncio.sleep(0.05)  # polling real processes, with a deadline
    raise AssertionError("no leader")


async def _log_says(path: Path, text: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while text not in path.read_text():
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} never said {text!r}")
        await asyncio.sleep(0.05)  # polling a file written by another process


async def test_a_non_member_node_neither_halts_nor_unseats_anyone(tmp_path: Path) -> None:
    async with ProcessCluster(tmp_path, groups=1, controllers=1, tls=True) as cluster:
        await cluster.join(1)
        await cluster.settled()
        members = cluster.servers[1]
        intruder = await _transport(
            cluster, INTRUDER, _node_context(cluster, tmp_path, INTRUDER), PeerRole.NODE
        )
        try:
            before = await _leader(cluster, intruder)
            leader = before.node_id

            def send(message: Message) -> None:
                intruder.send_raft(1, message)

            for member in members:
                send(
                    InstallSnapshot(
                        term=before.term + 1,
                        sender=INTRUDER,
                        to=member,
                        meta=SnapshotMeta(index=10**9, term=before.term + 1, config=b"\xc1junk"),
                        offset=0,
                        total=3,
                        data=b"abc",
                        done=True,
                    )
                )
                send(Heartbeat(term=2**63 - 1, sender=INTRUDER, to=member, commit=2**63 - 1))
            for bump in range(TERM_BUMPS):
                for member in members:
                    send(Heartbeat(term=before.term + 1 + bump, sender=INTRUDER, to=member))
                await asyncio.sleep(BUMP_EVERY_S)
            async with cluster.client(deadline_s=CALL_S * 4) as client:
                for i in range(10):
                    await client.put(f"k{i}", "v")
            after = [await _status(intruder, m) for m in members]
            assert not any(s.halted for s in after), after
            assert {s.leader for s in after} == {leader}, after
            assert {s.term for s in after} == {before.term}, after
            assert max(s.applied for s in after) > before.applied
            # Every message reached the servers (each logs what it drops, once per sender).
            for member in members:
                log = tmp_path / "group1" / f"{member.replace(':', '_')}.log"
                await _log_says(log, f"dropped InstallSnapshot from {INTRUDER!r}")
                await _log_says(log, f"dropped Heartbeat from {INTRUDER!r}")

            # Whole shards go only to the group that gains them.
            config = await cluster.configuration()
            pull = PullRequest(ShardId("default", 0), config.num, mode="base")
            reply = await intruder.call(leader, PULL, pull, timeout_s=CALL_S)
            assert reply.status == "forbidden", reply
            assert not reply.data
        finally:
            await intruder.close()
