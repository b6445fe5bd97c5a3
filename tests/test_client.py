"""The cluster client against stub servers: real transports on loopback whose handlers
play a controller and replica groups, so every routing decision can be staged and every
request the client sent can be inspected.

Each stub group keeps its shards' data in a :class:`KVStateMachine` per shard, shared by
the whole stub cluster (so a shard "moves" with its data and its de-duplication table, as
in the real system): a write retried with the same client id and sequence number applies
once, and an older sequence number comes back stale, exactly as on a real server.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final, TypeVar

import msgspec
import pytest

from shardwise import Client, SyncClient
from shardwise.controller.protocol import QUERY, QueryReply, QueryRequest
from shardwise.errors import (
    ClientClosedError,
    ClientTimeoutError,
    RequestRefusedError,
    StaleWriteError,
    UnknownKeyspaceError,
)
from shardwise.model.config import (
    NO_GROUP,
    Configuration,
    Keyspace,
    Scheme,
    ShardId,
)
from shardwise.model.kv import Key, KVResult, Value
from shardwise.model.schemes import shard_map
from shardwise.net.rpc import CallContext, RpcMethod
from shardwise.net.transport import Transport
from shardwise.raft.kv import KVStateMachine, decode_result, encode_command
from shardwise.shardserver.protocol import (
    BATCH,
    READ,
    SCAN,
    WRITE,
    BatchReply,
    BatchRequest,
    KVReply,
    ReadRequest,
    ScanRequest,
    WriteRequest,
)
from shardwise.testing.procs import free_ports

SECRET: Final = b"client-test-secret"
KEYSPACE: Final = "default"
WAIT_S: Final = 10.0
"""Longest a test waits for a condition it polls (a hang fails instead of blocking)."""

T = TypeVar("T")
Request = WriteRequest | ReadRequest | ScanRequest
Gate = Callable[[Request], Awaitable[KVReply | None]]
"""Runs before a stub server's own handling: a reply to send instead, or None to go on."""


def keyspace(shards: int, name: str = KEYSPACE) -> Keyspace:
    return Keyspace(name, Scheme(kind="hash", shards=shards))


def configuration(
    num: int,
    groups: dict[int, list[str]],
    owners: list[int],
    spaces: list[Keyspace] | None = None,
    space_owners: dict[str, list[int]] | None = None,
) -> Configuration:
    spaces = spaces or [keyspace(len(owners))]
    all_owners = {KEYSPACE: tuple(owners), **{k: tuple(v) for k, v in (space_owners or {}).items()}}
    return Configuration(
        num=num,
        groups={g: tuple(s) for g, s in groups.items()},
        keyspaces={k.name: k for k in spaces},
        owners={k.name: all_owners[k.name] for k in spaces},
    )


async def until(condition: Callable[[], bool], what: str) -> None:
    """Poll a condition of the stubs until it holds (they run on this loop)."""
    deadline = time.monotonic() + WAIT_S
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {WAIT_S} s")
        await asyncio.sleep(0.005)


# --- the stubs -----------------------------------------------------------------------


class StubController:
    """Serves QUERY: the latest configuration, holding a watch until a newer one exists
    (or its ``wait_s`` passes), as the real controller does."""

    def __init__(self, first: Configuration) -> None:
        self.id = "ctl-1"
        self.transport = Transport(self.id, SECRET)
        self.transport.serve(QUERY, self._query)
        self.latest = first
        self.queries: list[QueryRequest] = []
        self._changed = asyncio.Event()

    async def _query(self, request: QueryRequest, context: CallContext) -> QueryReply:
        self.queries.append(request)
        if request.wait_s > 0:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(request.wait_s):
                    while self.latest.num <= request.newer_than:
                        await self._changed.wait()
        return QueryReply("ok", config=self.latest)

    def publish(self, config: Configuration) -> None:
        self.latest = config
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def watches(self) -> list[QueryRequest]:
        return [q for q in self.queries if q.wait_s > 0]


class StubServer:
    """One group server, named by its address. Answers as its group says: not_leader
    unless it leads, wrong_group for a shard its group does not serve in the
    configuration it is at, else the operation on the cluster's shared shard data."""

    def __init__(self, cluster: StubCluster, gid: int, port: int) -> None:
        self.cluster = cluster
        self.gid = gid
        self.id = f"127.0.0.1:{port}"
        self.transport = Transport(self.id, SECRET, listen=("127.0.0.1", port))
        self.received: list[Request] = []
        self.gate: Gate | None = None
        self.transport.serve(WRITE, self._handle)
        self.transport.serve(READ, self._handle)
        self.transport.serve(SCAN, self._handle)
        self.transport.serve(BATCH, self._batch)

    def writes(self) -> list[WriteRequest]:
        return [r for r in self.received if isinstance(r, WriteRequest)]

    def scans(self) -> list[ScanRequest]:
        return [r for r in self.received if isinstance(r, ScanRequest)]

    async def _handle(self, request: Any, context: CallContext) -> KVReply:
        self.received.append(request)
        if self.gate is not None:
            reply = await self.gate(request)
            if reply is not None:
                return reply
        group = self.cluster.groups[self.gid]
        if group.leader != self.id:
            return KVReply("not_leader", leader=group.leader)
        if group.config.owner(request.shard) != self.gid:
            return KVReply("wrong_group", config_num=group.config.num)
        return self.cluster.execute(request, group.config.num)

    async def _batch(self, request: BatchRequest, context: CallContext) -> BatchReply:
        """Each operation as if it had come alone, all at once (the real server shares
        one log entry and one ReadIndex round among them, which a stub has no use for)."""
        ops = [*request.reads, *request.writes]
        replies = await asyncio.gather(*(self._handle(op, context) for op in ops))
        return BatchReply(replies[: len(request.reads)], replies[len(request.reads) :])


class StubGroup:
    def __init__(self, gid: int, servers: list[StubServer], config: Configuration) -> None:
        self.gid = gid
        self.servers = servers
        self.leader: str | None = servers[0].id if servers else None
        self.config = config
        """The configuration the group is at (what it serves)."""

    @property
    def ids(self) -> list[str]:
        return [s.id for s in self.servers]


class StubCluster:
    """A controller and groups of stub servers. ``groups`` gives each group's server
    count; the first configuration (num 1) gives the shards to ``owners``."""

    def __init__(
        self,
        groups: dict[int, int],
        owners: list[int],
        spaces: list[Keyspace] | None = None,
        space_owners: dict[str, list[int]] | None = None,
    ) -> None:
        ports = iter(free_ports(sum(groups.values())))
        self.servers: dict[str, StubServer] = {}
        members: dict[int, list[StubServer]] = {}
        for gid, count in groups.items():
            members[gid] = [StubServer(self, gid, next(ports)) for _ in range(count)]
            for server in members[gid]:
                self.servers[server.id] = server
        self.first = configuration(
            1, {g: [s.id for s in m] for g, m in members.items()}, owners, spaces, space_owners
        )
        self.groups = {gid: StubGroup(gid, m, self.first) for gid, m in members.items()}
        self.controller = StubController(self.first)
        self._shards: dict[ShardId, KVStateMachine] = {}
        self._applied: dict[ShardId, int] = {}

    async def __aenter__(self) -> StubCluster:
        await self.controller.transport.start()
        for server in self.servers.values():
            await server.transport.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        for server in self.servers.values():
            await server.transport.close()
        await self.controller.transport.close()

    def client(self, **options: Any) -> Client:
        options = {"deadline_s": 5.0, "attempt_timeout_s": 1.0, "first_seq": 0, **options}
        return Client({"ctl-1": self.controller.transport.address}, SECRET, **options)

    def data(self, shard: ShardId) -> KVStateMachine:
        return self._shards.setdefault(shard, KVStateMachine())

    def execute(self, request: Request, config_num: int) -> KVReply:
        sm = self.data(request.shard)
        if isinstance(request, WriteRequest):
            index = self._applied[request.shard] = self._applied.get(request.shard, 0) + 1
            command = encode_command(request.op, client_id=request.client_id, seq=request.seq)
            result = decode_result(sm.apply(index, command))
            return KVReply("ok", config_num=config_num, result=result)
        if isinstance(request, ReadRequest):
            return KVReply("ok", config_num=config_num, value=sm.get(text(request.key)))
        low = max(text(request.start or ""), text(request.prefix or ""))
        end, prefix = request.end, request.prefix
        rows: list[tuple[Key, Value]] = sorted(
            (k, v)
            for k, v in sm.items().items()
            if k >= low
            and (end is None or k < text(end))
            and (prefix is None or k.startswith(text(prefix)))
        )
        return KVReply("ok", config_num=config_num, items=rows[: request.limit])

    def received(self, gid: int) -> list[Request]:
        return [r for s in self.groups[gid].servers for r in s.received]


def text(key: Key) -> str:
    """A key or value of these stubs, which keep text only (their state machine does)."""
    assert isinstance(key, str)
    return key


def shard_of(key: Key, space: Keyspace | None = None) -> ShardId:
    return shard_map(space or keyspace(4)).shard(key)


def keys_by_shard(count: int, shards: int) -> dict[int, list[str]]:
    """``count`` keys per shard of a hash keyspace of ``shards`` shards."""
    found: dict[int, list[str]] = {i: [] for i in range(shards)}
    n = 0
    while any(len(v) < count for v in found.values()):
        key = f"key-{n}"
        n += 1
        bucket = found[shard_of(key, keyspace(shards)).index]
        if len(bucket) < count:
            bucket.append(key)
    return found


# --- routing -------------------------------------------------------------------------


async def test_each_key_goes_to_the_group_owning_its_shard() -> None:
    async with StubCluster({1: 1, 2: 1}, owners=[1, 2, 1, 2]) as cluster:
        async with cluster.client() as client:
            keys = [f"user:{i}" for i in range(24)]
            for key in keys:
                await client.put(key, f"v-{key}")
            for key in keys:
                assert await client.get(key) == f"v-{key}"

        for gid in (1, 2):
            received = cluster.received(gid)
            assert received, f"group {gid} got nothing"
            for request in received:
                assert cluster.first.owner(request.shard) == gid
                if isinstance(request, WriteRequest):
                    assert request.shard == shard_of(request.op.key)
                else:
                    assert isinstance(request, ReadRequest)
                    assert request.shard == shard_of(request.key)
        # The configuration is fetched once and cached.
        assert len(cluster.controller.queries) == 1


async def test_wrong_group_refreshes_the_configuration_and_retries_the_same_write() -> None:
    async with (
        StubCluster({1: 1, 2: 1}, owners=[1, 1, 1, 1]) as cluster,
        cluster.client() as client,
    ):
        await client.put("warm", "up")  # caches configuration 1
        # Every shard moves to group 2; both groups are at configuration 2 already.
        moved = configuration(2, {1: cluster.groups[1].ids, 2: cluster.groups[2].ids}, [2] * 4)
        cluster.groups[1].config = cluster.groups[2].config = moved
        cluster.controller.publish(moved)

        await client.put("k", "v")

        (refused,) = [w for w in cluster.groups[1].servers[0].writes() if w.op.key == "k"]
        (applied,) = cluster.groups[2].servers[0].writes()
        assert (applied.client_id, applied.seq) == (refused.client_id, refused.seq)
        assert applied.op == refused.op
        # The refusal named configuration 2, so anything from 2 on would do.
        assert cluster.controller.watches()[-1].newer_than == 1
        assert client.configuration == moved
        assert await client.get("k") == "v"


async def test_a_group_still_pulling_the_shard_is_asked_again_until_it_serves_it() -> None:
    async with StubCluster({1: 1, 2: 1}, owners=[1, 1, 1, 1]) as cluster:
        moved = configuration(2, {1: cluster.groups[1].ids, 2: cluster.groups[2].ids}, [2] * 4)
        cluster.controller.publish(moved)
        cluster.groups[1].config = moved
        # Group 2 is still at configuration 1: it does not serve the shards yet.
        async with cluster.client() as client:
            put = asyncio.create_task(client.put("k", "v"))
            target = cluster.groups[2].servers[0]
            await until(lambda: len(target.writes()) >= 2, "a second try at group 2")
            assert not put.done()
            cluster.groups[2].config = moved  # the pull finished
            await put
            attempts = {(w.client_id, w.seq) for w in target.writes()}
            assert len(attempts) == 1, "every try is the same write"
            # While it waited the client watched for a newer configuration, no faster.
            assert all(q.newer_than == 2 for q in cluster.controller.watches())


async def test_a_not_leader_hint_is_followed_and_remembered() -> None:
    async with StubCluster({1: 3}, owners=[1, 1, 1, 1]) as cluster:
        group = cluster.groups[1]
        first, middle, last = sorted(group.ids)
        group.leader = last
        async with cluster.client() as client:
            await client.put("a", "1")
            await client.put("b", "2")
            assert await client.get("a") == "1"
        servers = cluster.servers
        assert len(servers[first].received) == 1  # answered not_leader, named the leader
        assert servers[middle].received == []  # skipped thanks to the hint
        assert len(servers[last].received) == 3


async def test_a_read_a_follower_served_sends_the_next_call_to_the_leader_it_names() -> None:
    async with StubCluster({1: 3}, owners=[1, 1, 1, 1]) as cluster:
        group = cluster.groups[1]
        first, _, last = sorted(group.ids)
        group.leader = last
        follower = cluster.servers[first]

        async def serve_reads_as_a_follower(request: Request) -> KVReply | None:
            if isinstance(request, ReadRequest):  # a real follower reads through ReadIndex
                sm = cluster.data(request.shard)
                return KVReply("ok", leader=last, config_num=1, value=sm.get(text(request.key)))
            return None

        follower.gate = serve_reads_as_a_follower
        async with cluster.client() as client:
            assert await client.get("a") is None  # the first server asked is the follower
            assert await client.get("a") is None
            assert await client.get("b") is None
        assert len(follower.received) == 1
        assert len(cluster.servers[last].received) == 2


async def test_a_dead_or_unready_server_is_skipped() -> None:
    async with StubCluster({1: 2}, owners=[1, 1, 1, 1]) as cluster:
        group = cluster.groups[1]
        # Port 1: nothing listens there, and the id sorts before the others, so it is tried
        # first (attempts go in a fixed order while no leader is known).
        dead_id = "127.0.0.1:1"
        first, second = sorted(group.ids)
        assert dead_id < first
        group.leader = second

        async def retry(request: Request) -> KVReply:
            return KVReply("retry")

        cluster.servers[first].gate = retry
        config = configuration(2, {1: [dead_id, *group.ids]}, [1] * 4)
        cluster.controller.publish(config)
        async with cluster.client(attempt_timeout_s=0.3) as client:
            await client.put("k", "v")
            assert client.configuration == config
            # The leader is known now: the next call goes straight to it.
            started = time.monotonic()
            assert await client.get("k") == "v"
            assert time.monotonic() - started < 0.25
        assert len(cluster.servers[first].received) == 1
        assert len(cluster.servers[second].received) == 2


async def test_the_deadline_raises_client_timeout_error_naming_key_and_shard() -> None:
    async with StubCluster({1: 2}, owners=[1, 1, 1, 1]) as cluster:

        async def retry(request: Request) -> KVReply:
            return KVReply("retry")

        for server in cluster.servers.values():
            server.gate = retry
        async with cluster.client() as client:
            started = time.monotonic()
            with pytest.raises(ClientTimeoutError) as raised:
                await client.put("stuck", "v", deadline_s=0.3)
            elapsed = time.monotonic() - started
        assert 0.3 <= elapsed < 2.0
        message = str(raised.value)
        assert "'stuck'" in message
        assert str(shard_of("stuck")) in message
        assert "retry" in message
        # A pause between rounds: the group is not hammered.
        rounds = max(len(s.received) for s in cluster.servers.values())
        assert rounds <= 0.3 / 0.02 + 2


async def test_a_shard_no_group_owns_waits_for_a_configuration_that_gives_it_one() -> None:
    async with StubCluster({1: 1}, owners=[NO_GROUP] * 4) as cluster, cluster.client() as client:
        with pytest.raises(ClientTimeoutError, match="no group serves"):
            await client.get("k", deadline_s=0.3)
        # Waited on watches, not a busy loop.
        assert 1 <= len(cluster.controller.watches()) <= 0.3 / 0.1 + 2

        put = asyncio.create_task(client.put("k", "v"))
        watched = len(cluster.controller.watches())
        await until(lambda: len(cluster.controller.watches()) > watched, "a watch")
        joined = configuration(2, {1: cluster.groups[1].ids}, [1] * 4)
        cluster.groups[1].config = joined
        cluster.controller.publish(joined)
        await put
        assert await client.get("k") == "v"


async def test_a_group_that_keeps_failing_makes_the_client_look_for_a_new_configuration() -> None:
    async with (
        StubCluster({1: 1, 2: 1}, owners=[1, 1, 1, 1]) as cluster,
        cluster.client() as client,
    ):
        await client.put("warm", "up")

        async def down(request: Request) -> KVReply:
            return KVReply("halted")

        # Group 1 stops answering usefully (never wrong_group) while the shards move on.
        cluster.groups[1].servers[0].gate = down
        moved = configuration(2, {1: cluster.groups[1].ids, 2: cluster.groups[2].ids}, [2] * 4)
        cluster.groups[2].config = moved
        cluster.controller.publish(moved)
        await client.put("k", "v")
        assert client.configuration == moved
        assert [w.op.key for w in cluster.groups[2].servers[0].writes()] == ["k"]


async def test_an_unreachable_controller_ends_in_client_timeout_error() -> None:
    port = free_ports(1)[0]  # nothing listens there
    async with Client({"ctl-1": ("127.0.0.1", port)}, SECRET, deadline_s=0.3) as client:
        with pytest.raises(ClientTimeoutError, match=r"'k'.*configuration"):
            await client.get("k")


# --- exactly once --------------------------------------------------------------------


async def test_concurrent_writes_use_their_own_client_ids_and_none_is_stale() -> None:
    # One shard: every write meets the same de-duplication table.
    async with StubCluster({1: 1}, owners=[1]) as cluster:
        server = cluster.groups[1].servers[0]
        held = 16
        arrived: list[WriteRequest] = []
        turns = [asyncio.Event() for _ in range(held)]

        async def reverse_first_writes(request: Request) -> None:
            """Hold the first writes until all are in, then apply them newest first: a
            client numbering concurrent writes under one id would see stale results."""
            if not isinstance(request, WriteRequest) or len(arrived) >= held:
                return None
            arrived.append(request)
            mine = len(arrived) - 1
            if len(arrived) == held:
                turns[-1].set()
            await turns[mine].wait()
            if mine:
                # Let this one apply before the next older one goes.
                asyncio.get_running_loop().call_soon(turns[mine - 1].set)
            return None

        server.gate = reverse_first_writes
        async with cluster.client() as client:
            await asyncio.gather(*(client.put(f"k{i}", str(i)) for i in range(64)))
            assert client.writer_ids_made <= 64
            assert await client.mget(f"k{i}" for i in range(64)) == {
                f"k{i}": str(i) for i in range(64)
            }
        assert len({w.client_id for w in arrived}) == held
        writes = server.writes()
        assert len({(w.client_id, w.seq) for w in writes}) == len(writes) == 64
        last: dict[str, int] = {}
        for write in writes:  # per id, numbers only go up
            assert write.seq > last.get(write.client_id, -1)
            last[write.client_id] = write.seq


async def test_the_writer_pool_bounds_writes_in_flight() -> None:
    async with StubCluster({1: 1}, owners=[1, 1]) as cluster:
        limit = 3
        waiting: list[asyncio.Event] = []
        most = 0

        async def batches(request: Request) -> None:
            nonlocal most
            gate = asyncio.Event()
            waiting.append(gate)
            most = max(most, len(waiting))
            if len(waiting) == limit:  # a full batch: let it through
                for event in waiting:
                    event.set()
                waiting.clear()
            await gate.wait()

        cluster.groups[1].servers[0].gate = batches
        async with cluster.client(max_writes_in_flight=limit) as client:
            await asyncio.gather(*(client.put(f"k{i}", "v") for i in range(7 * limit)))
            assert client.writer_ids_made <= limit
        assert most == limit
        assert len({w.client_id for w in cluster.groups[1].servers[0].writes()}) <= limit


async def test_a_stale_result_is_an_error_never_a_success() -> None:
    async with StubCluster({1: 1}, owners=[1, 1]) as cluster:

        async def stale(request: Request) -> KVReply:
            return KVReply("ok", result=KVResult(ok=False, stale=True))

        cluster.groups[1].servers[0].gate = stale
        async with cluster.client() as client:
            with pytest.raises(StaleWriteError, match="another live client"):
                await client.put("k", "v")


async def test_a_request_refused_at_the_door_raises_a_typed_error() -> None:
    async with StubCluster({1: 1}, owners=[1, 1]) as cluster:

        async def refuse(request: Request) -> KVReply:
            return KVReply("ok", error="a value is at most 1048576 bytes")

        cluster.groups[1].servers[0].gate = refuse
        async with cluster.client() as client:
            with pytest.raises(RequestRefusedError, match="at most 1048576 bytes"):
                await client.put("k", "v")
            with pytest.raises(RequestRefusedError):
                await client.scan(limit=10**9)


class _Unreadable(msgspec.Struct, frozen=True):
    """A request type no client request validates as: the server answers BAD_REQUEST."""

    never: list[int]


async def test_a_request_the_server_cannot_read_fails_at_once_not_at_the_deadline() -> None:
    """``bad_request`` (e.g. bytes keys sent to a server of an older version) can never
    succeed: the client says so at once, after asking one server, instead of trying
    every server until its deadline and then calling the outcome unknown."""
    async with StubCluster({1: 3}, owners=[1, 1]) as cluster:
        for server in cluster.servers.values():
            server.transport.serve(RpcMethod(WRITE.name, _Unreadable, KVReply), _never)
        async with cluster.client() as client:
            started = time.monotonic()
            with pytest.raises(RequestRefusedError, match="cannot succeed: bad_request"):
                await client.put(b"bk", b"v", deadline_s=5)
            assert time.monotonic() - started < 1.0  # not the 5 s deadline
        assert sum(len(s.received) for s in cluster.servers.values()) == 0  # (never handled)


async def _never(request: _Unreadable, context: CallContext) -> KVReply:
    raise AssertionError("a request that does not validate reaches no handler")


# --- operations ----------------------------------------------------------------------


async def test_single_key_operations() -> None:
    async with (
        StubCluster({1: 1, 2: 1}, owners=[1, 2, 1, 2]) as cluster,
        cluster.client() as client,
    ):
        assert await client.get("k") is None
        assert await client.cas("k", None, "a")
        assert not await client.cas("k", None, "b")
        assert await client.cas("k", "a", "b")
        await client.append("k", "c")
        await client.append("new", "x")
        assert await client.mget(["k", "new"]) == {"k": "bc", "new": "x"}
        await client.delete("k")
        assert await client.get("k") is None


async def test_mput_and_mget_fan_out_to_every_group() -> None:
    async with StubCluster({1: 1, 2: 1}, owners=[1, 2, 1, 2]) as cluster:
        items = {f"item:{i}": f"value {i}" for i in range(40)}
        async with cluster.client() as client:
            await client.mput(items)
            got = await client.mget([*items, "missing", "item:3", "absent"])
        assert got == {**items, "missing": None, "absent": None}
        for gid in (1, 2):
            writes = [r for r in cluster.received(gid) if isinstance(r, WriteRequest)]
            reads = [r for r in cluster.received(gid) if isinstance(r, ReadRequest)]
            assert writes and reads
        assert sum(len(cluster.received(g)) for g in (1, 2)) == 40 + 42


async def test_scan_merges_every_shard_in_key_order_page_by_page() -> None:
    async with StubCluster({1: 1, 2: 1}, owners=[1, 2, 1, 2]) as cluster:
        items = {f"k{i:02}": str(i) for i in range(30)} | {"other": "o", "a": "first"}
        expected = sorted(items.items())
        async with cluster.client() as client:
            await client.mput(items)
            assert await client.scan(page_rows=3) == expected
            assert await client.scan(limit=7, page_rows=2) == expected[:7]
            assert await client.scan("k1", page_rows=2) == [
                (k, v) for k, v in expected if k.startswith("k1")
            ]
            assert await client.scan(start="k05", end="k12", page_rows=2) == [
                (k, v) for k, v in expected if "k05" <= k < "k12"
            ]
            assert await client.scan("zzz") == []
            assert await client.scan(limit=0) == []
        scans = [s for server in cluster.servers.values() for s in server.scans()]
        assert {s.shard.index for s in scans} == {0, 1, 2, 3}
        # Later pages start right after the last key of the page before.
        assert any(isinstance(s.start, str) and s.start.endswith("\x00") for s in scans)


async def test_scan_of_a_range_keyspace_reads_only_the_shards_it_spans() -> None:
    ranged = Keyspace("ranged", Scheme(kind="range", shards=3, split_points=("g", "p")))
    async with StubCluster(
        {1: 1, 2: 1},
        owners=[1, 2],
        spaces=[keyspace(2), ranged],
        space_owners={"ranged": [1, 2, 1]},
    ) as cluster:
        items = {k: k.upper() for k in ("apple", "grape", "ham", "hat", "kiwi", "pear", "zoo")}
        async with cluster.client(keyspace="ranged") as client:
            await client.mput(items)
            assert await client.scan(page_rows=2) == sorted(items.items())
            for server in cluster.servers.values():
                server.received.clear()
            assert await client.scan("h") == [("ham", "HAM"), ("hat", "HAT")]
            scans = [s for server in cluster.servers.values() for s in server.scans()]
            assert {s.shard for s in scans} == {ShardId("ranged", 1)}
            assert await client.scan(start="b", end="k", limit=2) == [
                ("grape", "GRAPE"),
                ("ham", "HAM"),
            ]


async def test_an_unknown_keyspace_and_a_closed_client_are_errors() -> None:
    async with StubCluster({1: 1}, owners=[1, 1]) as cluster:
        async with cluster.client(keyspace="nope") as client:
            with pytest.raises(UnknownKeyspaceError):
                await client.get("k")
        client = cluster.client()
        with pytest.raises(ClientClosedError):
            await client.get("k")
        await client.start()
        await client.close()
        with pytest.raises(ClientClosedError):
            await client.put("k", "v")


async def test_sync_client() -> None:
    async with StubCluster({1: 1, 2: 1}, owners=[1, 2, 1, 2]) as cluster:
        address = cluster.controller.transport.address

        def use() -> list[tuple[Key, Value]]:
            with SyncClient({"ctl-1": address}, SECRET, deadline_s=5.0) as client:
                client.put("a", "1")
                client.append("a", "2")
                assert client.get("a") == "12"
                assert client.cas("a", "12", "3")
                client.mput({"b": "2", "c": "3"})
                assert client.mget(["a", "b", "zz"]) == {"a": "3", "b": "2", "zz": None}
                client.delete("c")
                rows = client.scan()
                assert client.configuration == cluster.first
            with pytest.raises(ClientClosedError):
                client.get("a")
            return rows

        # The stubs run on this loop; the blocking client runs on its own thread and loop.
        assert await asyncio.to_thread(use) == [("a", "3"), ("b", "2")]
