"""etcd under the fault harness's faults: members on addresses of their own, cut links, a client.

``bench/faults.py`` runs the fault harness's workload and nemeses against 3 etcd members
(Debian's ``etcd-server``) as it does against shardwise. This module holds the etcd side:

* :class:`EtcdMembers`: member ``i`` listens (clients on 2379, peers on 2380) on
  ``127.<net>.0.<i>``, like the harness's servers (``faults/cluster.py``), with a
  ``<net>`` of its own (:func:`choose_net`); crash (``kill -9``, restarted on the same
  data dir), pause (SIGSTOP), leader discovery through ``/v3/maintenance/status``.
* :class:`EtcdFirewall`: the harness's :class:`Firewall` (drop exactly the packets from
  ``a`` to ``b`` for each cut ``(a, b)``), made to work for etcd, see below.
* :class:`EtcdKv`: a client of etcd's v3 JSON gateway with the ``Client`` methods the
  harness's ``Workload`` calls (``get``, ``put``, ``cas``, ``append``).

**Cutting etcd's links.** The harness's servers dial from their own address
(``faults/serve.py``) and its rule matches a packet's (source, destination). etcd 3.4
does not bind its outgoing peer connections: ``ss -tnp`` shows them leaving from
``127.0.0.1`` (``127.0.0.1:47722 -> 127.N.0.1:2380``). On such a connection the dialer's
packets have source 127.0.0.1 and the listener's have destination 127.0.0.1, so no rule
on member addresses matches either: every partition would be a no-op. Two things fix it,
both in our own nft table:

1. Each member runs under a user id of its own (a bare number, no account: nothing on
   the machine changes), and a ``postrouting`` NAT rule rewrites the source of that
   user's new connections into our /16 to the member's own address (``meta skuid ...
   snat``). The dialer's packets now carry (dialer, listener), as on a real network.
2. That alone still leaks: conntrack undoes the SNAT on the listener's answers before
   the input hook (their destination is 127.0.0.1 again), so an input rule on
   (source, destination) would cut one direction of a connection only, and a one-way cut
   (``one-way-leader``) would let the leader's messages through on the connections the
   followers dialed. So the rule reads conntrack's reply tuple, which holds both true
   endpoints (reply source = the listener, reply destination = the dialer's translated
   address): a packet in the original direction goes dialer -> listener, one in the reply
   direction listener -> dialer. That is the harness's rule, ``(a, b)`` dropping exactly
   what ``a`` sends ``b``, whichever of the two dialed.

Clients (this process, root, from 127.0.0.1) are neither translated nor cut, as in the
harness. Our tables (this one and the harness's in ``bench/faults.py``) are named
``shardwise_bench_faults_<pid>_...``, not with the harness's prefix: the harness's
``main`` deletes every table with its prefix when it starts, so another run of ``make
jepsen`` on the machine would silently heal our cuts (it did, while this was written).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ctypes
import json
import os
import shutil
import signal
import subprocess
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Final

from shardwise.errors import ClientTimeoutError
from shardwise.net.leader import ATTEMPT_TIMEOUT_S, RETRY_PAUSE_S
from shardwise.net.links import Address
from shardwise.testing.faults.cluster import NETS
from shardwise.testing.faults.firewall import Firewall, nft, run_nft

MEMBERS: Final = 3
CLIENT_PORT: Final = 2379
PEER_PORT: Final = 2380
UID_BASE: Final = 1_900_000_000
"""Member ``i`` of net ``n`` runs as uid ``UID_BASE + 8 * n + i`` (no account needed)."""
TABLE_PREFIX: Final = "shardwise_bench_faults_"
START_TIMEOUT_S: Final = 30.0
STOP_TIMEOUT_S: Final = 10.0
STATUS_TIMEOUT_S: Final = 0.5
NO_LEADER: Final = "no leader"
"""etcd's answer, with the ``hasleader`` metadata, from a member that knows no leader: the
request was refused before it was proposed, so another member may take it."""


def table_exists(table: str) -> bool:
    return run_nft("list", "table", "inet", table).returncode == 0


def nat_unavailable_reason() -> str | None:
    """Why this kernel cannot translate the members' addresses (``None`` if it can)."""
    probe = f"{TABLE_PREFIX}{os.getpid()}_probe"
    done = run_nft(
        "-f",
        "-",
        script=f"add table inet {probe}\n"
        f"add chain inet {probe} source {{ type nat hook postrouting priority srcnat; }}\n"
        f"delete table inet {probe}\n",
    )
    return None if done.returncode == 0 else f"nft cannot add a NAT chain: {done.stderr.strip()}"


def delete_stale_tables() -> list[str]:
    """Delete our tables whose run (the pid in the name) is gone."""
    stale = []
    for line in run_nft("list", "tables").stdout.splitlines():
        name = line.split()[-1] if line.startswith("table inet ") else ""
        pid = name.removeprefix(TABLE_PREFIX).split("_")[0]
        if name.startswith(TABLE_PREFIX) and pid.isdigit() and not Path(f"/proc/{pid}").exists():
            nft(f"delete table inet {name}\n")
            stale.append(name)
    return stale


def _nets_in_use() -> set[int]:
    """Second bytes of 127/8 addresses with sockets on them, or with a harness table."""
    used = set()
    for table in ("/proc/net/tcp", "/proc/net/udp"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                for address in line.split()[1:3]:
                    ip = bytes.fromhex(address.split(":")[0])[::-1]
                    if ip[0] == 127:
                        used.add(ip[1])
    for line in run_nft("list", "tables").stdout.splitlines():
        tail = line.split()[-1].rsplit("_", 1)[-1]
        if line.startswith("table inet shardwise_") and tail.isdigit():
            used.add(int(tail))
    return used


def choose_net() -> int:
    """A second byte for etcd's addresses: from the harness's range, never the one the
    harness picks for this process (``pid % span``), and none with sockets on it."""
    low, high = NETS
    span = high - low
    harness = low + os.getpid() % span
    used = _nets_in_use() | {harness}
    start = (os.getpid() * 7 + span // 2) % span
    for step in range(span):
        net = low + (start + step) % span
        if net not in used:
            return net
    raise RuntimeError("no free 127.<net>.0.0/16 for etcd")


class GuardedFirewall(Firewall):
    """The harness's firewall in a table of our own (``python -m shardwise.testing.faults``
    deletes every table of the harness's prefix when it starts, and others may run it on
    this machine meanwhile), which also notices (and undoes) the loss of its table."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.table = f"{TABLE_PREFIX}{os.getpid()}_{name}"
        self.live = False
        self.lost_table = 0
        """How many times the table was found gone: the fault before was healed early."""

    def open(self) -> None:
        super().open()
        self.live = True

    def ensure_table(self) -> None:
        if self.live and not table_exists(self.table):
            self.lost_table += 1
            self.open()

    def set_cuts(self, links: Iterable[tuple[str, str]]) -> None:
        self.ensure_table()
        super().set_cuts(links)

    def close(self) -> None:
        self.live = False
        super().close()


class EtcdFirewall(GuardedFirewall):
    """Cuts between etcd members (see the module docstring): ``uids`` maps each member's
    address to the user id it runs under."""

    def __init__(self, uids: dict[str, int], net: int) -> None:
        super().__init__("etcd")
        self.uids = uids
        self.net = net

    def open(self) -> None:
        t = self.table
        script = (
            f"add table inet {t}\n"
            f"add chain inet {t} source {{ type nat hook postrouting priority srcnat; }}\n"
            f"flush chain inet {t} source\n"
        )
        for ip, uid in sorted(self.uids.items()):
            script += (
                f"add rule inet {t} source meta skuid {uid} "
                f"ip daddr 127.{self.net}.0.0/16 snat ip to {ip}\n"
            )
        nft(script)
        super().open()  # the input chain, and the table's deletion at exit

    def set_cuts(self, links: Iterable[tuple[str, str]]) -> None:
        self.ensure_table()
        cut = frozenset(links)
        t = self.table
        script = f"flush chain inet {t} input\n"
        if cut:
            pairs = ", ".join(f"{a} . {b}" for a, b in sorted(cut))
            script += (
                f"add rule inet {t} input ct direction original "
                f"ct reply ip daddr . ct reply ip saddr {{ {pairs} }} drop\n"
                f"add rule inet {t} input ct direction reply "
                f"ct reply ip saddr . ct reply ip daddr {{ {pairs} }} drop\n"
            )
        nft(script)
        self.cut = cut


# --- the JSON gateway ----------------------------------------------------------------


class NotSentError(OSError):
    """The request never reached the member (it could not be connected to)."""


class UnansweredError(OSError):
    """The request was sent but no answer came: its outcome is unknown."""


class Gateway:
    """One HTTP/1.1 keep-alive connection to one member's v3 JSON gateway."""

    def __init__(self, address: Address) -> None:
        self.address = address
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None

    async def post(self, path: str, body: dict[str, Any], timeout_s: float) -> tuple[int, Any]:
        """(HTTP status, decoded JSON); :class:`NotSentError` or :class:`UnansweredError`."""
        if self.reader is None or self.reader.at_eof() or self.reader.exception() is not None:
            self.close()  # the member closed it (a crash): dial again, nothing was sent yet
            try:
                async with asyncio.timeout(timeout_s):
                    self.reader, self.writer = await asyncio.open_connection(*self.address)
            except (OSError, TimeoutError) as exc:
                raise NotSentError(f"{self.address}: {exc!r}") from exc
        assert self.reader is not None and self.writer is not None
        data = json.dumps(body).encode()
        host, port = self.address
        self.writer.write(
            f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
            # Refused at once by a member that knows no leader (clientv3's WithRequireLeader).
            f"Grpc-Metadata-Hasleader: true\r\nContent-Length: {len(data)}\r\n\r\n".encode()
            + data
        )
        try:
            async with asyncio.timeout(timeout_s):
                return await self._response(self.reader)
        except BaseException as exc:
            self.close()  # whatever was cut short, its answer must not be read as the next's
            if isinstance(exc, OSError | TimeoutError | asyncio.IncompleteReadError | ValueError):
                raise UnansweredError(f"{self.address}: {exc!r}") from exc
            raise

    async def _response(self, reader: asyncio.StreamReader) -> tuple[int, Any]:
        status = await reader.readline()
        if not status:
            raise ConnectionResetError("closed before an answer")
        headers = {}
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            headers[name.strip().lower()] = value.strip().lower()
        if "content-length" in headers:
            payload = await reader.readexactly(int(headers["content-length"]))
        elif headers.get("transfer-encoding") == "chunked":
            chunks = []
            while size := int((await reader.readline()).split(b";")[0], 16):
                chunks.append(await reader.readexactly(size))
                await reader.readexactly(2)
            while await reader.readline() not in (b"\r\n", b""):
                pass  # trailers
            payload = b"".join(chunks)
        else:
            payload = await reader.read()
            self.close()
        if headers.get("connection") == "close":
            self.close()
        return int(status.split()[1]), json.loads(payload or b"{}")


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def unb64(text: str | None) -> str:
    return base64.b64decode(text or "").decode()


class EtcdKv:
    """The calls of ``shardwise.Client`` that the harness's ``Workload`` makes, on etcd.

    Retries as shardwise's client does (``net/leader.py``): one attempt at one member for
    at most ``ATTEMPT_TIMEOUT_S``, then the next member, a short pause after a round of
    all three, until the call's deadline; it starts with the member that answered last.
    A read may be retried anywhere. A write is retried only when it certainly did not
    happen (no connection, or refused for want of a leader): etcd keeps no client
    sequence numbers, so a write sent twice could apply twice, and clientv3 does not
    retry such writes either. Any other failure of a write ends the call with
    :class:`ClientTimeoutError` (outcome unknown), as a shardwise call past its deadline.
    """

    def __init__(self, members: list[Address], first: int, deadline_s: float) -> None:
        self.gateways = [Gateway(a) for a in members]
        self.current = first % len(members)
        self.deadline_s = deadline_s

    async def close(self) -> None:
        for gateway in self.gateways:
            gateway.close()

    def _deadline(self) -> float:
        return asyncio.get_running_loop().time() + self.deadline_s

    async def _call(
        self, path: str, body: dict[str, Any], deadline: float, *, idempotent: bool
    ) -> Any:
        loop = asyncio.get_running_loop()
        why = ""
        while True:
            for step in range(len(self.gateways)):
                i = (self.current + step) % len(self.gateways)
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise ClientTimeoutError(f"{path} past its {self.deadline_s} s: {why}")
                gateway = self.gateways[i]
                try:
                    code, reply = await gateway.post(path, body, min(ATTEMPT_TIMEOUT_S, remaining))
                except NotSentError as exc:
                    why = str(exc)
                    continue
                except UnansweredError as exc:
                    if not idempotent:
                        self.current = (i + 1) % len(self.gateways)
                        raise ClientTimeoutError(f"{path}: outcome unknown: {exc}") from exc
                    why = str(exc)
                    continue
                if code == 200:
                    self.current = i
                    return reply
                why = f"{gateway.address}: {code} {json.dumps(reply)[:200]}"
                if not idempotent and NO_LEADER not in why:
                    self.current = (i + 1) % len(self.gateways)
                    raise ClientTimeoutError(f"{path}: outcome unknown: {why}")
            await asyncio.sleep(min(RETRY_PAUSE_S, max(0.0, deadline - loop.time())))

    async def _read(self, key: str, deadline: float) -> tuple[str | None, int]:
        reply = await self._call("/v3/kv/range", {"key": b64(key)}, deadline, idempotent=True)
        kvs = reply.get("kvs") or []
        if not kvs:
            return None, 0
        return unb64(kvs[0].get("value")), int(kvs[0].get("mod_revision", 0))

    async def get(self, key: str) -> str | None:
        # Linearizable (serializable=false, etcd's default): a ReadIndex round at the leader.
        return (await self._read(key, self._deadline()))[0]

    async def put(self, key: str, value: str) -> None:
        body = {"key": b64(key), "value": b64(value)}
        await self._call("/v3/kv/put", body, self._deadline(), idempotent=False)

    async def _txn(self, key: str, compare: dict[str, Any], value: str, deadline: float) -> bool:
        body = {
            "compare": [{"key": b64(key), "result": "EQUAL", **compare}],
            "success": [{"request_put": {"key": b64(key), "value": b64(value)}}],
        }
        reply = await self._call("/v3/kv/txn", body, deadline, idempotent=False)
        return bool(reply.get("succeeded", False))

    async def cas(self, key: str, expected: str | None, new: str) -> bool:
        if expected is None:
            compare: dict[str, Any] = {"target": "CREATE", "create_revision": "0"}
        else:
            compare = {"target": "VALUE", "value": b64(expected)}
        return await self._txn(key, compare, new, self._deadline())

    async def append(self, key: str, value: str) -> None:
        """Read, then put the longer value if the key is unchanged since (else again), all
        under one deadline: a refused compare changed nothing, so only the last try's
        outcome can be unknown."""
        deadline = self._deadline()
        while True:
            old, revision = await self._read(key, deadline)
            compare = {"target": "MOD", "mod_revision": str(revision)}
            if await self._txn(key, compare, (old or "") + value, deadline):
                return


# --- the members ---------------------------------------------------------------------


_prctl = ctypes.CDLL(None, use_errno=True).prctl
PR_SET_PDEATHSIG: Final = 1


def _die_with_parent() -> None:
    """In the child, before etcd starts: SIGKILL when the bench dies (with its main
    thread, which starts every member), so no member outlives it."""
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


class EtcdMembers:
    """Three etcd members on ``127.<net>.0.{1,2,3}`` under ``base``."""

    def __init__(self, base: Path, net: int, *, heartbeat_ms: int, election_ms: int) -> None:
        self.base = base
        self.net = net
        self.names = [f"e{i}" for i in range(1, MEMBERS + 1)]
        self.hosts = {n: f"127.{net}.0.{i}" for i, n in enumerate(self.names, 1)}
        self.uids = {n: UID_BASE + 8 * net + i for i, n in enumerate(self.names, 1)}
        self.flags = [
            f"--heartbeat-interval={heartbeat_ms}",
            f"--election-timeout={election_ms}",
            "--pre-vote=true",
        ]
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.paused: set[str] = set()
        self.ids: dict[str, str] = {}
        """etcd's member id (decimal, as the gateway prints it) -> name."""

    @property
    def addresses(self) -> list[Address]:
        return [(self.hosts[n], CLIENT_PORT) for n in self.names]

    def command(self, name: str) -> list[str]:
        host = self.hosts[name]
        cluster = ",".join(f"{n}=http://{self.hosts[n]}:{PEER_PORT}" for n in self.names)
        return [
            shutil.which("etcd") or "etcd",
            f"--name={name}",
            f"--data-dir={self.base / name}",
            f"--listen-client-urls=http://{host}:{CLIENT_PORT}",
            f"--advertise-client-urls=http://{host}:{CLIENT_PORT}",
            f"--listen-peer-urls=http://{host}:{PEER_PORT}",
            f"--initial-advertise-peer-urls=http://{host}:{PEER_PORT}",
            f"--initial-cluster={cluster}",
            "--initial-cluster-state=new",  # ignored on a restart: the data dir has a WAL
            "--initial-cluster-token=shardwise-faults",
            "--log-level=info",
            *self.flags,
        ]

    def _spawn(self, name: str) -> None:
        uid = self.uids[name]
        data = self.base / name
        data.mkdir(mode=0o700, exist_ok=True)
        os.chown(data, uid, uid)
        with open(self.base / f"{name}.log", "ab") as log:
            self.procs[name] = subprocess.Popen(
                self.command(name),
                stdout=log,
                stderr=subprocess.STDOUT,
                user=uid,
                group=uid,
                extra_groups=[],
                preexec_fn=_die_with_parent,  # noqa: PLW1509 (it only calls prctl, loaded already)
            )

    async def start(self) -> None:
        self.base.mkdir(parents=True, exist_ok=True)
        self.base.chmod(0o755)  # the members' users must reach their data dirs
        for parent in self.base.resolve().parents:
            if not parent.stat().st_mode & 0o001:
                raise RuntimeError(f"etcd's users cannot reach {self.base}: {parent} is not o+x")
        for name in self.names:
            self._spawn(name)
        for name in self.names:
            status = await self._wait_for(name)
            self.ids[str(status["header"]["member_id"])] = name

    async def _wait_for(self, name: str) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + START_TIMEOUT_S
        while loop.time() < deadline:
            if not self.running(name):
                raise RuntimeError(f"etcd {name} exited: see {self.base / name}.log")
            status = await self.status(name)
            if status is not None:
                return status
            await asyncio.sleep(0.05)
        raise TimeoutError(f"etcd {name} did not answer within {START_TIMEOUT_S} s")

    def running(self, name: str) -> bool:
        proc = self.procs.get(name)
        return proc is not None and proc.poll() is None

    async def status(self, name: str) -> dict[str, Any] | None:
        gateway = Gateway((self.hosts[name], CLIENT_PORT))
        try:
            code, reply = await gateway.post("/v3/maintenance/status", {}, STATUS_TIMEOUT_S)
        except OSError:
            return None
        finally:
            gateway.close()
        return reply if code == 200 and isinstance(reply, dict) else None

    async def leader(self) -> str | None:
        """The leader named by the members that answer, the newest term's first."""
        replies = await asyncio.gather(*(self.status(n) for n in self.names))
        named = [
            (int(r.get("raftTerm", 0)), str(r.get("leader", "0")))
            for r in replies
            if r is not None and str(r.get("leader", "0")) in self.ids
        ]
        if not named:
            return None
        newest = max(term for term, _ in named)
        votes = Counter(leader for term, leader in named if term == newest)
        return self.ids[votes.most_common(1)[0][0]]

    async def settled(self, timeout_s: float) -> None:
        """Every member answers and names the same leader."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while loop.time() < deadline:
            replies = await asyncio.gather(*(self.status(n) for n in self.names))
            leaders = {str(r.get("leader")) for r in replies if r is not None}
            if None not in replies and len(leaders) == 1 and leaders <= set(self.ids):
                return
            await asyncio.sleep(0.1)
        raise TimeoutError(f"etcd did not settle within {timeout_s} s")

    def signal(self, name: str, signum: signal.Signals) -> None:
        if self.running(name):
            self.procs[name].send_signal(signum)

    async def pause(self, name: str) -> None:
        self.signal(name, signal.SIGSTOP)
        self.paused.add(name)

    async def resume(self, name: str) -> None:
        self.signal(name, signal.SIGCONT)
        self.paused.discard(name)

    async def crash(self, name: str) -> None:
        self.signal(name, signal.SIGKILL)
        await asyncio.to_thread(self.procs[name].wait, STOP_TIMEOUT_S)
        self.paused.discard(name)

    async def restart(self, name: str) -> None:
        self._spawn(name)
        await self._wait_for(name)

    async def close(self) -> None:
        for name in sorted(self.paused):
            await self.resume(name)
        for name in self.names:
            self.signal(name, signal.SIGTERM)
        for proc in self.procs.values():
            try:
                await asyncio.to_thread(proc.wait, STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                await asyncio.to_thread(proc.wait, STOP_TIMEOUT_S)
