"""What the operator commands ask of a running cluster: is it there (and do we know its
secret), what state is it in, make a change and follow its shard moves to the end.

Everything here is asyncio and prints nothing; ``render.py`` draws it and ``main.py``
wires it to commands.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import secrets
import ssl
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, TypeAlias

import msgspec

from shardwise.cli.moves import MoveState, copy_progress, move_state
from shardwise.clusterfile import ClusterLayout, Process, format_address
from shardwise.controller.client import ControllerClient
from shardwise.controller.protocol import STATUS as CONTROLLER_STATUS
from shardwise.controller.protocol import StatusReply as ControllerStatus
from shardwise.controller.protocol import StatusRequest as ControllerStatusRequest
from shardwise.errors import (
    AuthenticationError,
    ChangeTimeoutError,
    ClusterConfigError,
    ClusterNotRunningError,
    HandshakeInterruptedError,
    NetError,
    ServerBusyError,
    WrongSecretError,
)
from shardwise.model.config import NO_GROUP, ChangeResult, Configuration, Op, ShardId
from shardwise.net.auth import Credentials, DialerHandshake, credentials_login, credentials_secret
from shardwise.net.connection import PeerConnection
from shardwise.net.links import Address
from shardwise.net.transport import Transport
from shardwise.net.wire import PeerRole
from shardwise.shardserver.protocol import (
    STATUS,
    CheckOutcome,
    StatusReply,
    StatusRequest,
    server_address,
)

PROBE_TIMEOUT_S: Final = 2.0
"""Connecting to one controller replica and authenticating, during the first check."""

STATUS_TIMEOUT_S: Final = 1.5
"""One STATUS (or role) call to one server; a server slower than this shows as down."""

DEFAULT_RATE_INTERVAL_S: Final = 1.0
"""``shardwise status`` reads every server's operation counters twice, this far apart,
for each shard's operations per second."""

DEFAULT_MOVE_TIMEOUT_S: Final = 120.0
"""How long a change's shard moves may take before the command gives up waiting (the
moves go on in the cluster regardless)."""

PROGRESS_POLL_S: Final = 0.2
PROBE_READ_BYTES: Final = 64 * 1024


# --- is the cluster there? -----------------------------------------------------------


async def probe(
    controllers: Mapping[str, Address],
    secret: Credentials,
    secret_file: object = "the secret file",
    *,
    ssl_context: ssl.SSLContext | None = None,
) -> None:
    """Return once one controller replica accepts our secret; otherwise raise
    :class:`ClusterNotRunningError` (nobody listens), :class:`WrongSecretError` (a
    replica says our proof failed), :class:`ServerBusyError` (a replica turned us away
    for another reason it gave: too many connections, shutting down) or
    :class:`HandshakeInterruptedError` (cut during the handshake without a reason).

    The transport's own dialer retries quietly and turns both into a timeout, which tells
    an operator nothing; this one connection per replica tells the two apart in a second.
    """
    refused_by: list[str] = []
    busy: ServerBusyError | None = None
    cut: HandshakeInterruptedError | None = None
    for name, address in controllers.items():
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(*address, ssl=ssl_context), PROBE_TIMEOUT_S
            )
        except (OSError, TimeoutError):
            continue  # nothing listens there (or it does not answer): the next replica
        conn = PeerConnection(
            reader,
            writer,
            local_id=f"cli-probe-{secrets.token_hex(4)}",
            outbound=True,
            read_chunk_bytes=PROBE_READ_BYTES,
        )
        try:
            handshake = DialerHandshake(
                credentials_secret(secret),
                conn.local_id,
                PeerRole.CLIENT,
                login=credentials_login(secret),
            )
            await asyncio.wait_for(conn.dial_handshake(handshake), PROBE_TIMEOUT_S)
        except TimeoutError:
            continue
        except AuthenticationError:
            # The acceptor said it refused our proof (or its own proof failed).
            refused_by.append(f"{name} at {format_address(address)}")
            continue
        except ServerBusyError as exc:
            busy = exc  # too many connections, shutting down: nothing about the secret
            continue
        except (NetError, OSError) as exc:
            cut = HandshakeInterruptedError(f"{name} at {format_address(address)}: {exc}")
            continue
        finally:
            conn.abort()
            await conn.close()
        if conn.peer_id != name:
            raise ClusterConfigError(
                f"{format_address(address)} is {conn.peer_id!r}, but the cluster description "
                f"says {name!r} listens there: is it another cluster's?"
            )
        return
    login = credentials_login(secret)
    if refused_by and login is not None:
        raise WrongSecretError(
            f"{', '.join(refused_by)} refused the login of user {login.user!r}: a wrong "
            "password, or no such user"
        )
    if refused_by:
        raise WrongSecretError(
            f"{', '.join(refused_by)} refused the secret in {secret_file}: it is not this "
            "cluster's secret"
        )
    if busy is not None:
        raise busy
    if cut is not None:
        raise cut
    where = ", ".join(f"{n} at {format_address(a)}" for n, a in controllers.items())
    raise ClusterNotRunningError(
        f"no controller replica answers ({where}): the cluster is not running. "
        "Start it with `shardwise up` (or `shardwise node` on each machine)."
    )


# --- what state is it in? ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ControllerState:
    name: str
    address: Address
    status: ControllerStatus | None
    """Its own report (``None``: it did not answer)."""

    @property
    def role(self) -> str:
        return self.status.role if self.status is not None else "down"


@dataclass(frozen=True, slots=True)
class ServerState:
    node_id: str
    gid: int
    process: Process | None
    """The description's entry (``None``: a server the description does not name)."""
    status: StatusReply | None
    """Its own report (``None``: it did not answer)."""

    @property
    def name(self) -> str:
        return self.process.name if self.process is not None else self.node_id

    @property
    def health(self) -> str:
        """``ok``, ``halted`` (it stopped on an entry: ``status.halt_reason`` says why) or
        ``unreachable`` (no answer)."""
        return "unreachable" if self.status is None else "halted" if self.status.halted else "ok"


@dataclass(slots=True)
class GroupState:
    gid: int
    joined: bool
    """In the latest configuration."""
    servers: list[ServerState]

    @property
    def leader(self) -> StatusReply | None:
        return leader_of(s.status for s in self.servers)

    @property
    def last_check(self) -> CheckOutcome | None:
        """The newest consistency check any of its servers ran as leader."""
        checks = [s.status.last_check for s in self.servers if s.status and s.status.last_check]
        return max(checks, key=lambda c: c.index) if checks else None


def leader_of(replies: Iterable[StatusReply | None]) -> StatusReply | None:
    """The report of the group's leader: of the replicas that say they lead, the one in
    the highest term (a deposed leader may not know it yet); a halted one leads nothing."""
    leaders = [r for r in replies if r is not None and r.role == "leader" and not r.halted]
    return max(leaders, key=lambda r: r.term) if leaders else None


@dataclass(frozen=True, slots=True)
class ShardRow:
    shard: ShardId
    owner: int
    state: str
    """The shard's state at its owner's leader (``unknown`` if no leader answered)."""
    keys: int
    bytes: int
    reads: int = 0
    writes: int = 0
    """Reads and writes of the shard served by every server that answered, since each
    started (the servers count them; see ``ShardInfo``)."""
    reads_per_s: float | None = None
    writes_per_s: float | None = None
    """Over the snapshot's rate window (``None``: not sampled twice)."""

    @property
    def ops_per_s(self) -> float | None:
        if self.reads_per_s is None or self.writes_per_s is None:
            return None
        return self.reads_per_s + self.writes_per_s


Counts: TypeAlias = dict[tuple[str, ShardId], tuple[int, int]]
"""(server node id, shard) -> (reads, writes) the server reported."""


@dataclass(slots=True)
class Snapshot:
    config: Configuration
    controllers: list[ControllerState]
    groups: dict[int, GroupState]
    shards: list[ShardRow] = field(default_factory=list)
    taken_at: float = 0.0
    """When the snapshot started (the event loop's clock)."""
    rate_window_s: float | None = None
    """The time between the two samples the shards' rates come from (``None``: no
    rates)."""

    def counts(self) -> Counts:
        return {
            (server.node_id, info.shard): (info.reads, info.writes)
            for group in self.groups.values()
            for server in group.servers
            if server.status is not None
            for info in server.status.shards
        }

    def add_rates(self, earlier: Snapshot) -> None:
        """Each shard's reads and writes per second between ``earlier`` and this one.

        Counters are per server, so the deltas are taken per server and summed: a leader
        change between the samples moves the counting to another server without losing
        or double-counting anything, and a server that answered only once is left out.
        A counter that went down belongs to a server that restarted in between: what it
        counts now was all served in the window."""
        window = self.taken_at - earlier.taken_at
        if window <= 0:
            return
        before = earlier.counts()
        deltas: dict[ShardId, list[int]] = {}
        for (node, shard), (reads, writes) in self.counts().items():
            old = before.get((node, shard))
            if old is None:
                continue
            delta = deltas.setdefault(shard, [0, 0])
            delta[0] += reads - old[0] if reads >= old[0] else reads
            delta[1] += writes - old[1] if writes >= old[1] else writes
        self.rate_window_s = window
        self.shards = [
            dataclasses.replace(
                row,
                reads_per_s=deltas.get(row.shard, [0, 0])[0] / window,
                writes_per_s=deltas.get(row.shard, [0, 0])[1] / window,
            )
            for row in self.shards
        ]

    @property
    def settled(self) -> bool:
        """Every joined group has a leader, and every server that answers is in the
        latest configuration; nothing moves."""
        return (
            all(
                g.leader is not None
                and all(s.status.config_num == self.config.num for s in g.servers if s.status)
                for g in self.groups.values()
                if g.joined
            )
            and not self.migrations()
        )

    def migrations(self) -> list[str]:
        """Moves in flight, in words: groups behind the latest configuration, shards
        being pulled, frozen copies not yet confirmed."""
        lines: list[str] = []
        for gid, group in self.groups.items():
            leader = group.leader
            if leader is None:
                if group.joined:
                    lines.append(f"group {gid}: no leader answers")
                continue
            if group.joined and leader.config_num < self.config.num:
                lines.append(
                    f"group {gid} is at configuration {leader.config_num} of {self.config.num}"
                )
            for arriving in leader.arrivals:
                words, _ = copy_progress(arriving)
                lines.append(
                    f"{arriving.shard}: group {gid} is taking it for configuration "
                    f"{arriving.config_num}: {words}"
                )
            arriving_shards = {a.shard for a in leader.arrivals}
            for info in leader.shards:
                if info.state == "pulling" and info.shard not in arriving_shards:
                    lines.append(f"{info.shard}: group {gid} is pulling it")
                elif info.state in ("frozen", "garbage"):
                    lines.append(
                        f"{info.shard}: group {gid} keeps a {info.state} copy until the "
                        "new owner confirms it"
                    )
        return lines

    def moves(self) -> list[dict[str, Any]]:
        """Every shard being copied into a group, as its leader reports it."""
        found = []
        for gid, group in self.groups.items():
            for info in group.leader.arrivals if group.leader is not None else ():
                found.append(
                    {
                        "shard": str(info.shard),
                        "group": gid,
                        "config_num": info.config_num,
                        "phase": info.phase,
                        "copied_bytes": info.copied,
                        "total_bytes": info.total or None,
                        "percent": round(100 * info.copied / info.total, 1) if info.total else None,
                    }
                )
        return found

    def to_json(self, pids: Mapping[str, int] | None = None) -> dict[str, Any]:
        """``pids``: each process's, by name, where known (``shardwise up`` records them)."""
        pids = pids or {}
        return {
            "config_num": self.config.num,
            # The latest configurations that changed the shard map and the catalog (-1:
            # not recorded by this controller); DDL makes configurations too.
            "shard_map_changed_at": self.config.shard_map_changed_at,
            "catalog_changed_at": self.config.catalog_changed_at,
            "controllers": [
                {
                    "name": c.name,
                    "address": format_address(c.address),
                    "pid": pids.get(c.name),
                    "role": c.role,
                    "term": c.status.term if c.status else None,
                    "config_num": c.status.config_num if c.status else None,
                }
                for c in self.controllers
            ],
            "groups": {
                str(gid): {
                    "joined": g.joined,
                    "leader": g.leader.node_id if g.leader else None,
                    "term": g.leader.term if g.leader else None,
                    "servers": [
                        {
                            "name": s.name,
                            "node_id": s.node_id,
                            "pid": pids.get(s.name),
                            "role": s.status.role if s.status else "down",
                            "health": s.health,
                            "halt_reason": s.status.halt_reason if s.status else "",
                            "term": s.status.term if s.status else None,
                            "commit": s.status.commit if s.status else None,
                            "applied": s.status.applied if s.status else None,
                            "config_num": s.status.config_num if s.status else None,
                        }
                        for s in g.servers
                    ],
                    "last_check": msgspec.to_builtins(g.last_check) if g.last_check else None,
                }
                for gid, g in self.groups.items()
            },
            "shards": [
                {
                    "shard": str(r.shard),
                    "owner": r.owner,
                    "state": r.state,
                    "keys": r.keys,
                    "bytes": r.bytes,
                    "reads": r.reads,
                    "writes": r.writes,
                    "reads_per_s": r.reads_per_s,
                    "writes_per_s": r.writes_per_s,
                }
                for r in self.shards
            ],
            "rate_window_s": self.rate_window_s,
            "migrations": self.migrations(),
            "moves": self.moves(),
        }


class Admin:
    """A connection to a running cluster for operator commands: the controller client
    and a transport that can ask any server for its STATUS."""

    def __init__(self, layout: ClusterLayout, secret: Credentials) -> None:
        self.layout = layout
        self.secret = secret
        client_id = f"cli-{secrets.token_hex(4)}"
        self.transport = Transport(
            client_id, secret, role=PeerRole.CLIENT, client_ssl=layout.client_ssl()
        )
        self.controller = ControllerClient(
            layout.controller_addresses, secret, f"{client_id}/ctl", transport=self.transport
        )
        self._known: set[str] = set()

    async def __aenter__(self) -> Admin:
        await probe(
            self.layout.controller_addresses,
            self.secret,
            self.layout.secret_file,
            ssl_context=self.layout.client_ssl(),
        )
        await self.transport.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.transport.close()

    # --- reading -----------------------------------------------------------------------

    async def configuration(self, num: int = -1) -> Configuration:
        return await self.controller.query(num)

    async def status(self, node_id: str) -> StatusReply | None:
        if node_id not in self._known:
            self.transport.set_peer(node_id, server_address(node_id))
            self._known.add(node_id)
        try:
            return await self.transport.call(
                node_id, STATUS, StatusRequest(), timeout_s=STATUS_TIMEOUT_S
            )
        except NetError:
            return None

    async def controller_states(self) -> list[ControllerState]:
        async def state(name: str, address: Address) -> ControllerState:
            try:
                reply = await self.transport.call(
                    name, CONTROLLER_STATUS, ControllerStatusRequest(), timeout_s=STATUS_TIMEOUT_S
                )
            except NetError:
                reply = None
            return ControllerState(name, address, reply)

        return list(
            await asyncio.gather(*(state(c.name, c.listen) for c in self.layout.controllers))
        )

    def servers_of(self, config: Configuration | None = None) -> dict[int, list[str]]:
        """Every group's servers: the description's groups and any the configuration
        names that the description does not."""
        groups = {gid: g.node_ids for gid, g in self.layout.groups.items()}
        if config is not None:
            for gid, servers in config.groups.items():
                groups.setdefault(gid, list(servers))
        return dict(sorted(groups.items()))

    async def leaders(self, groups: Mapping[int, list[str]]) -> dict[int, StatusReply | None]:
        async def leader(servers: list[str]) -> StatusReply | None:
            return leader_of(await asyncio.gather(*(self.status(s) for s in servers)))

        found = await asyncio.gather(*(leader(servers) for servers in groups.values()))
        return dict(zip(groups, found, strict=True))

    async def snapshot(self) -> Snapshot:
        taken_at = asyncio.get_running_loop().time()
        config, controllers = await asyncio.gather(self.configuration(), self.controller_states())
        processes = self.layout.by_node_id()
        groups: dict[int, GroupState] = {}
        for gid, servers in self.servers_of(config).items():
            replies = await asyncio.gather(*(self.status(s) for s in servers))
            groups[gid] = GroupState(
                gid,
                gid in config.groups,
                [
                    ServerState(s, gid, processes.get(s), reply)
                    for s, reply in zip(servers, replies, strict=True)
                ],
            )
        snapshot = Snapshot(config, controllers, groups, taken_at=taken_at)
        snapshot.shards = _shard_rows(config, groups)
        return snapshot

    async def sampled_snapshot(self, interval_s: float = DEFAULT_RATE_INTERVAL_S) -> Snapshot:
        """A snapshot with each shard's operation rate over the last ``interval_s``
        seconds (two snapshots; with ``interval_s <= 0`` one, without rates)."""
        first = await self.snapshot()
        if interval_s <= 0:
            return first
        await asyncio.sleep(interval_s)
        second = await self.snapshot()
        second.add_rates(first)
        return second

    # --- changing ----------------------------------------------------------------------

    async def change(self, op: Op) -> ChangeResult:
        return await self.controller.change(op)

    async def follow(
        self,
        result: ChangeResult,
        on_update: Callable[[list[MoveState]], None],
        timeout_s: float = DEFAULT_MOVE_TIMEOUT_S,
    ) -> list[MoveState]:
        """Poll the groups a change moves shards between until every move is done;
        :class:`ChangeTimeoutError` after ``timeout_s``."""
        if not result.moves:
            return []
        num = result.num
        # The configuration before the change still names a group that just left.
        before, after = await asyncio.gather(
            self.configuration(max(0, num - 1)), self.configuration(num)
        )
        servers = self.servers_of(after)
        for gid, ids in before.groups.items():
            servers.setdefault(gid, list(ids))
        involved = {m.source for m in result.moves} | {m.target for m in result.moves}
        involved.discard(NO_GROUP)
        watched = {gid: servers[gid] for gid in sorted(involved) if gid in servers}
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            leaders = await self.leaders(watched)
            states = [move_state(m, num, leaders) for m in result.moves]
            on_update(states)
            if all(s.done for s in states):
                return states
            if loop.time() >= deadline:
                stuck = [s for s in states if not s.done]
                detail = "; ".join(f"{s.move.shard}: {s.note}" for s in stuck[:5])
                more = f" (and {len(stuck) - 5} more)" if len(stuck) > 5 else ""
                raise ChangeTimeoutError(
                    f"configuration {num} was made, but {len(stuck)} of {len(states)} shard "
                    f"moves were not done after {timeout_s:.0f} s: {detail}{more}. They go on "
                    "in the background; `shardwise status` shows them."
                )
            await asyncio.sleep(PROGRESS_POLL_S)


def _shard_rows(config: Configuration, groups: Mapping[int, GroupState]) -> list[ShardRow]:
    infos: dict[tuple[int, ShardId], tuple[str, int, int]] = {}
    served: dict[ShardId, list[int]] = {}
    for gid, group in groups.items():
        leader = group.leader
        if leader is not None:
            for info in leader.shards:
                infos[gid, info.shard] = (info.state, info.keys, info.bytes)
        for server in group.servers:
            for info in server.status.shards if server.status is not None else ():
                counts = served.setdefault(info.shard, [0, 0])
                counts[0] += info.reads
                counts[1] += info.writes
    rows = []
    for keyspace, owners in sorted(config.owners.items()):
        for index, owner in enumerate(owners):
            shard = ShardId(keyspace, index)
            state, keys, size = infos.get((owner, shard), ("unknown", 0, 0))
            if owner == NO_GROUP:
                state = "unowned"
            reads, writes = served.get(shard, (0, 0))
            rows.append(ShardRow(shard, owner, state, keys, size, reads, writes))
    return rows


async def wait_for_controller(admin: Admin, timeout_s: float) -> Configuration:
    """The latest configuration, once the controller has elected a leader (right after
    the processes start it may not have one yet)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        remaining = deadline - loop.time()
        with contextlib.suppress(NetError, TimeoutError):
            return await admin.controller.query(deadline_s=max(0.1, min(remaining, 5.0)))
        if loop.time() >= deadline:
            raise ClusterNotRunningError(
                f"the controller did not elect a leader within {timeout_s:.0f} s "
                "(see its logs: `shardwise logs c1`)"
            )
        await asyncio.sleep(PROGRESS_POLL_S)


async def wait_until_settled(admin: Admin, timeout_s: float) -> Snapshot:
    """The cluster's snapshot once it has settled (see :attr:`Snapshot.settled`), or as it
    is after ``timeout_s``: right after a restart, groups are still electing leaders."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        snapshot = await admin.snapshot()
        if snapshot.settled or loop.time() >= deadline:
            return snapshot
        await asyncio.sleep(PROGRESS_POLL_S)
