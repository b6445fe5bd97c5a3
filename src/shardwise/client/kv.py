"""The asyncio client of a shardwise cluster: key-value operations on one keyspace.

::

    async with Client({"ctl-1": ("10.0.0.1", 7000)}, secret) as client:
        await client.put("user:1", "ada")
        assert await client.get("user:1") == "ada"

Routing and retries are the router's (``router.py``), exactly-once writes the writer
pool's (``writers.py``), scans ``scan.py``'s, SQL ``sql.py``'s; this module holds the
calls and the client's life cycle.

**Keys and values** are ``bytes`` or ``str`` (a str stands for its UTF-8 bytes, so
``"k"`` and ``b"k"`` are one key; ``bytearray`` and ``memoryview`` are taken as bytes).
A value reads back as the type it was written with. Anything else, and a key or value
over its limit (``MAX_KEY_BYTES``, ``MAX_VALUE_BYTES``), is refused before anything is
sent (:class:`~shardwise.errors.InvalidKVTypeError`,
:class:`~shardwise.errors.RequestRefusedError`); so is a request no server can read.

**Consistency.** Every single-key operation is linearizable. ``mget`` and ``mput`` are
one independent operation per key, run in parallel: each key is linearizable on its
own, but a multi-key write is *not* atomic across shards (on an error some keys may be
written and others not), and ``mget`` is not a snapshot. Likewise ``scan`` reads each
shard page by page: every page is a linearizable read, the whole scan is not a snapshot.
"""

from __future__ import annotations

import random
import secrets
import ssl
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Final, TypeVar

from shardwise.client.fanout import bind, fan_out
from shardwise.client.router import ShardRouter
from shardwise.client.scan import (
    DEFAULT_SCAN_LIMIT,
    SCAN_PAGE_ROWS,
    Scan,
    check_scan,
    run_scan,
)
from shardwise.client.txn import (
    DEFAULT_MAX_ATTEMPTS,
    MAX_RETRY_PAUSE_S,
    RETRY_PAUSE_S,
    Finisher,
    Transaction,
    TxnProtocol,
    run_transaction,
)
from shardwise.client.writers import WriterPool
from shardwise.errors import (
    ClientClosedError,
    ClientError,
    InvalidKVTypeError,
    RequestRefusedError,
    ShardLimitError,
    StaleWriteError,
)
from shardwise.model.config import Configuration
from shardwise.model.kv import (
    Append,
    Cas,
    Delete,
    Key,
    KVOp,
    KVResult,
    Pairs,
    Put,
    Value,
    check_key,
    check_op,
    check_type,
)
from shardwise.model.txn import MAX_TXN_DEADLINE_S
from shardwise.net.auth import Credentials
from shardwise.net.endpoint import Endpoint
from shardwise.net.leader import ATTEMPT_TIMEOUT_S, CallDeadline, loop_time
from shardwise.net.links import Address
from shardwise.net.transport import Transport
from shardwise.net.wire import MAX_NODE_ID_CHARS, MAX_RPC_TIMEOUT_MS, PeerRole
from shardwise.shardserver.protocol import READ, WRITE, ReadRequest, WriteRequest

if TYPE_CHECKING:  # shardwise.sql (and sqlglot) load on the first SQL call only
    from shardwise.client.sql import ClusterSql
    from shardwise.sql import Result
    from shardwise.sql.params import Params

DEFAULT_DEADLINE_S: Final = 10.0
"""Total time one call may take, all retries and configuration fetches included."""

T = TypeVar("T")

CLOSE_RESOLVE_WAIT_S: Final = 5.0
"""How long ``close`` waits for committed transactions still being resolved in the
background (past it their participants recover them on their own)."""

MAX_WRITES_IN_FLIGHT: Final = 128
"""Writes one client runs at once, each under a pooled client id of its own. Bounds the
de-duplication sessions a client costs every shard it writes to (servers keep a bounded
number, see ``raft/client_sessions.py``) and stays under a server's handlers per connection."""

MAX_CLIENT_ID_CHARS: Final = MAX_NODE_ID_CHARS - 8
"""The client id is the transport's node id; pooled writer ids add ``/N`` to it."""

SHOWN_KEY_CHARS: Final = 60
"""Longest key repr an error message quotes (a key may be 4 KiB)."""


def as_data(what: str, data: object) -> Key:
    """``data`` as a key or value: str or bytes (a ``bytearray`` or ``memoryview`` is
    copied to bytes); :class:`~shardwise.errors.InvalidKVTypeError` for anything else."""
    if isinstance(data, bytearray | memoryview):
        return bytes(data)
    if isinstance(data, str):
        if not data.isascii():
            try:
                data.encode()
            except UnicodeEncodeError:
                raise InvalidKVTypeError(
                    f"a {what} that is a str must be encodable as UTF-8 (no lone surrogates)"
                ) from None
        return data
    check_type(what, data)  # raises: neither str nor bytes-like
    return data  # type: ignore[return-value]  # (bytes)


def shown(key: Key) -> str:
    """``key`` for an error message, shortened."""
    text = repr(key)
    return text if len(text) <= SHOWN_KEY_CHARS else f"{text[: SHOWN_KEY_CHARS - 3]}..."


class Client:
    """An asyncio client of a shardwise cluster, for one keyspace.

    ``controllers`` names the shard controller's servers (id -> address); the groups are
    found through it. Every call takes an optional ``deadline_s`` (default: the client's)
    that bounds it whole, retries included; one attempt at one server is bounded by
    ``attempt_timeout_s``. At most ``max_writes_in_flight`` writes run at once (more wait
    for a slot, within their deadline). Writes are numbered above ``first_seq`` (default:
    the wall clock in microseconds). ``transport``: an endpoint to call through (e.g. a
    simulator's), which its owner starts and closes; by default the client has its own,
    over TLS with ``client_ssl`` (``net/tls.py``: the servers' node certificates are
    checked against the cluster's CA).
    """

    def __init__(
        self,
        controllers: Mapping[str, Address],
        secret: Credentials,
        *,
        client_id: str | None = None,
        keyspace: str = "default",
        deadline_s: float = DEFAULT_DEADLINE_S,
        attempt_timeout_s: float = ATTEMPT_TIMEOUT_S,
        max_writes_in_flight: int = MAX_WRITES_IN_FLIGHT,
        first_seq: int | None = None,
        transport: Endpoint | None = None,
        client_ssl: ssl.SSLContext | None = None,
    ) -> None:
        self.client_id = client_id or f"client-{secrets.token_hex(8)}"
        if not 0 < len(self.client_id) <= MAX_CLIENT_ID_CHARS:
            raise ValueError(f"a client id has 1 to {MAX_CLIENT_ID_CHARS} characters")
        if deadline_s <= 0:
            raise ValueError("deadline_s must be positive")
        if not 0 < attempt_timeout_s * 1000 <= MAX_RPC_TIMEOUT_MS:
            raise ValueError(f"attempt_timeout_s must be in (0, {MAX_RPC_TIMEOUT_MS // 1000}]")
        if max_writes_in_flight < 1:
            raise ValueError("max_writes_in_flight must be at least 1")
        self.keyspace = keyspace
        self.deadline_s = deadline_s
        self.attempt_timeout_s = attempt_timeout_s
        # One endpoint for the controller and every group. An injected one (a simulator's)
        # is started and closed by its owner.
        self._owns_transport = transport is None
        self._transport: Endpoint = transport or Transport(
            self.client_id, secret, role=PeerRole.CLIENT, client_ssl=client_ssl
        )
        self._router = ShardRouter(
            self._transport,
            controllers,
            secret,
            client_id=self.client_id,
            attempt_timeout_s=attempt_timeout_s,
            check_running=self._check_running,
        )
        if first_seq is None:
            # The wall clock in microseconds rather than 0: a process that reuses a fixed
            # client id after a restart then numbers its writes above those of its previous
            # life instead of seeing them refused as stale (nobody writes a million a second).
            first_seq = time.time_ns() // 1000
        self._writers = WriterPool(self.client_id, max_writes_in_flight, first_seq)
        self._state = "new"
        self._txns: TxnProtocol | None = None
        """The transactions' shared parts, made with the first transaction."""
        self._sql_session: ClusterSql | None = None
        """The session :meth:`sql` runs in (its open transaction, if any)."""
        self.last_rows_shipped: dict[int, int] = {}
        """Rows each shard sent for the last SQL read to finish, by shard index."""
        self.last_rows_sent = 0
        """Rows that read sent to the shards (a broadcast join's shipped rows)."""

    # --- life cycle --------------------------------------------------------------------

    async def start(self) -> None:
        if self._state != "new":
            raise RuntimeError("a client starts once")
        self._state = "starting"
        if self._owns_transport:
            try:
                await self._transport.start()
            except BaseException:
                self._state = "closed"
                raise
        self._state = "running"

    async def close(self) -> None:
        if self._state == "closed":
            return
        owned_and_started = self._owns_transport and self._state == "running"
        if self._txns is not None:  # transactions still resolving: a while, not for ever
            await self._txns.finisher.close(CLOSE_RESOLVE_WAIT_S)
        self._state = "closed"
        await self._router.close()
        if owned_and_started:
            await self._transport.close()

    async def __aenter__(self) -> Client:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @property
    def configuration(self) -> Configuration | None:
        """The latest configuration this client has seen (``None`` before the first call)."""
        return self._router.configuration

    @property
    def batches_sent(self) -> int:
        """Calls that carried several reads or writes at once (see ``client/batching.py``)."""
        return self._router.batcher.batches_sent

    @property
    def writer_ids_made(self) -> int:
        """How many pooled client ids writes have needed so far (at most the pool size)."""
        return self._writers.ids_made

    # --- single keys -------------------------------------------------------------------

    async def get(self, key: Key, *, deadline_s: float | None = None) -> Value | None:
        """The key's value, as the type it was written with; ``None`` if it is absent (a
        linearizable read)."""
        return await self._get(as_data("key", key), self._deadline(deadline_s))

    async def put(self, key: Key, value: Value, *, deadline_s: float | None = None) -> None:
        op = Put(as_data("key", key), as_data("value", value))
        await self._write("put", op, self._deadline(deadline_s))

    async def append(self, key: Key, value: Value, *, deadline_s: float | None = None) -> None:
        """Add ``value`` to the end of the key's value (set it if the key is absent). A
        str after a str stays a str; any bytes make the result bytes."""
        op = Append(as_data("key", key), as_data("value", value))
        await self._write("append", op, self._deadline(deadline_s))

    async def delete(self, key: Key, *, deadline_s: float | None = None) -> None:
        await self._write("delete", Delete(as_data("key", key)), self._deadline(deadline_s))

    async def cas(
        self, key: Key, expected: Value | None, new: Value, *, deadline_s: float | None = None
    ) -> bool:
        """Set ``key`` to ``new`` if it holds ``expected`` (``None``: if it is absent),
        compared as bytes; whether it did."""
        old = None if expected is None else as_data("expected value", expected)
        cas = Cas(as_data("key", key), old, as_data("value", new))
        result = await self._write("cas", cas, self._deadline(deadline_s))
        return result.ok

    # --- many keys ---------------------------------------------------------------------

    async def mget(
        self, keys: Iterable[Key], *, deadline_s: float | None = None
    ) -> dict[Key, Value | None]:
        """The value of each key (``None``: absent), read in parallel under one deadline.
        Each read is linearizable; together they are not a snapshot."""
        deadline = self._deadline(deadline_s)
        # Converted first: a bytearray or memoryview key cannot be a dict key as it is.
        unique = list(dict.fromkeys(as_data("key", key) for key in keys))
        for key in unique:
            self._check_key("get", key)  # all refused before any is sent
        values = await fan_out([bind(self._get, key, deadline) for key in unique])
        return dict(zip(unique, values, strict=True))

    async def mput(self, items: Pairs, *, deadline_s: float | None = None) -> None:
        """Put every pair, in parallel under one deadline. Each put is exactly-once and
        linearizable, but the whole is not atomic: if one fails (the first error is
        raised once all have finished), the others may still have been applied. A pair
        of the wrong type or over a limit is refused before any is sent."""
        deadline = self._deadline(deadline_s)
        ops = [Put(as_data("key", k), as_data("value", v)) for k, v in items.items()]
        for op in ops:
            self._check_op("put", op)
        await fan_out([bind(self._write, "put", op, deadline) for op in ops])

    async def scan(
        self,
        prefix: Key | None = None,
        *,
        start: Key | None = None,
        end: Key | None = None,
        limit: int = DEFAULT_SCAN_LIMIT,
        page_rows: int = SCAN_PAGE_ROWS,
        deadline_s: float | None = None,
    ) -> list[tuple[Key, Value]]:
        """Up to ``limit`` ``(key, value)`` pairs of the keyspace in key order (the order
        of their bytes), with ``start <= key < end`` and starting with ``prefix``. A key
        comes back as a str if its bytes are valid UTF-8, else as bytes; a value as the
        type it was written with.

        A hash or ring keyspace scatters keys over all its shards, so every shard is read
        and the pages merged; a range keyspace reads only the shards the range spans, in
        order. Shards are read a page (``page_rows``) at a time.
        """
        check_scan(limit, page_rows)
        prefix = self._scan_bound("prefix", prefix)
        start = self._scan_bound("start", start)
        end = self._scan_bound("end", end)
        deadline = self._deadline(deadline_s)
        call = CallDeadline.starting_now(f"scan of keyspace {self.keyspace!r}", deadline)
        keyspace = await self._router.keyspace(self.keyspace, call)
        if limit == 0:
            return []
        scan = Scan(keyspace, prefix, start, end, limit, page_rows, deadline)
        return await run_scan(self._router, scan)

    # --- transactions --------------------------------------------------------------

    def transaction(self, *, deadline_s: float | None = None) -> Transaction:
        """A new transaction (``client/txn.py``): ``async with client.transaction() as
        tx:`` reads with ``await tx.get``, writes with ``tx.put`` / ``tx.delete``, and
        commits on leaving the block (serializable: see ``docs/kv.md``). One deadline
        (default: the client's) bounds it from here to its commit."""
        self._check_running()
        return self._begin(False, deadline_s)

    async def run_transaction(
        self,
        body: Callable[[Transaction], Awaitable[T]],
        *,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        deadline_s: float | None = None,
    ) -> T:
        """``await body(tx)`` in a transaction, committed; run again from the start after
        a :class:`~shardwise.model.txn.TransactionConflictError`, up to ``max_attempts``
        times, with a random, growing pause between. ``body`` may run more than once: it
        should do nothing but the transaction's reads and writes."""
        self._check_running()
        return await run_transaction(
            lambda ordered: self._begin(ordered, deadline_s),
            body,
            max_attempts=max_attempts,
            pause=self._retry_pause,
        )

    def _begin(self, ordered: bool, deadline_s: float | None) -> Transaction:
        if deadline_s is not None and deadline_s > MAX_TXN_DEADLINE_S:
            raise ValueError(f"a transaction's deadline is at most {MAX_TXN_DEADLINE_S} s")
        budget = min(self.deadline_s, MAX_TXN_DEADLINE_S) if deadline_s is None else deadline_s
        return self._begin_until(self._deadline(budget), ordered)

    def _begin_until(self, deadline: float, ordered: bool) -> Transaction:
        """A transaction whose deadline is ``deadline`` (a SQL session moves it)."""
        if self._txns is None:
            self._txns = TxnProtocol(self._router, self._writers, self.keyspace, Finisher())
        return Transaction(self._txns, deadline, ordered=ordered)

    def _retry_pause(self, attempt: int) -> float:
        return random.uniform(0, min(MAX_RETRY_PAUSE_S, RETRY_PAUSE_S * 2**attempt))

    # --- SQL -------------------------------------------------------------------------

    async def sql(
        self, query: str, params: Params | None = None, *, deadline_s: float | None = None
    ) -> Result:
        """Run one SQL statement over the cluster (``docs/sql.md``): its columns and rows
        (reads), or the rows it changed (``rowcount``, writes).

        Each shard's part runs on that shard's group (reads through ReadIndex, writes as
        one log entry per shard, exactly once), routed and retried like a key; a write to
        several shards is one transaction. ``BEGIN`` ... ``COMMIT`` / ``ROLLBACK`` run
        the statements between in one serializable transaction (the client's default
        session holds it: see :meth:`sql_session`). DDL returns once every group holding
        a shard of the keyspace has applied it. One deadline bounds the whole statement.
        Errors are :class:`~shardwise.errors.SqlError`
        subclasses, or :class:`~shardwise.errors.ClientTimeoutError`."""
        return await self.sql_in(self._default_session(), query, params, deadline_s=deadline_s)

    async def sql_in(
        self,
        session: ClusterSql,
        query: str,
        params: Params | None = None,
        *,
        deadline_s: float | None = None,
    ) -> Result:
        """:meth:`sql` in ``session`` (one of :meth:`sql_session`'s) instead of the
        client's default session: its own transaction between ``BEGIN`` and ``COMMIT``."""
        self._check_running()
        result = await session.execute(query, params, self._deadline(deadline_s))
        if session.last_rows_shipped:
            self.last_rows_shipped = session.last_rows_shipped
            self.last_rows_sent = session.last_rows_sent
        return result

    @property
    def in_transaction(self) -> bool:
        """Whether :meth:`sql`'s session has a transaction open (``BEGIN`` ran)."""
        return self._sql_session is not None and self._sql_session.in_transaction

    async def copy_rows(
        self,
        table: str,
        columns: Sequence[str] | None,
        rows: Iterable[Sequence[object]],
        *,
        deadline_s: float | None = None,
    ) -> int:
        """Load ``rows`` into ``table`` fast (a bulk load: no SQL text per row): each row
        the values of ``columns`` (None: every column of the table, in order), placed by
        its distribution value. Rows go in chunks of up to ``COPY_CHUNK_ROWS``, each one
        transaction, pipelined; ``deadline_s`` bounds each chunk. Returns the rows
        written. A chunk that fails writes nothing and raises its error, naming the
        offending row and the rows written so far (``docs/sql.md``, "Bulk loading")."""
        self._check_running()
        from shardwise.client.copy import copy_rows  # noqa: PLC0415 - loads sqlglot: SQL users only

        session, budget = self._default_session(), self._budget(deadline_s)
        return await copy_rows(session, table, columns, rows, deadline_s=budget)

    def sql_session(self) -> ClusterSql:
        """A SQL session of its own on this client: ``await session.execute(query,
        params, deadline)``, with its own transaction between ``BEGIN`` and ``COMMIT``
        (:meth:`sql` runs in the client's default session; a DB-API connection has its
        own). Sessions share the client's connections and limits."""
        from shardwise.client.sql import ClusterSql  # noqa: PLC0415 - loads sqlglot: SQL users only

        return ClusterSql(self._router, self._writers, self._begin_until)

    async def latest_configuration(self, *, deadline_s: float | None = None) -> Configuration:
        """The latest configuration as the controller has it now (the cached
        :attr:`configuration` may predate another client's change): what tools that
        describe the SQL catalog read (``\\d``, the SQLAlchemy dialect)."""
        self._check_running()
        deadline = self._deadline(deadline_s)
        call = CallDeadline.starting_now("a look at the latest configuration", deadline)
        await self._router.refresh(-1, call, wait=False)
        return await self._router.configuration_at_least(-1, call)

    # --- operations --------------------------------------------------------------------

    def _deadline(self, deadline_s: float | None) -> float:
        return loop_time() + self._budget(deadline_s)

    def _budget(self, deadline_s: float | None) -> float:
        budget = self.deadline_s if deadline_s is None else deadline_s
        if budget <= 0:
            raise ValueError("deadline_s must be positive")
        return budget

    def _default_session(self) -> ClusterSql:
        """The session :meth:`sql` and :meth:`copy_rows` run in (made on first use)."""
        if self._sql_session is None:
            self._sql_session = self.sql_session()
        return self._sql_session

    def _scan_bound(self, what: str, bound: Key | None) -> Key | None:
        if bound is None:
            return None
        bound = as_data(f"scan {what}", bound)
        self._check_key("scan", bound)
        return bound

    def _check_key(self, verb: str, key: Key) -> None:
        try:
            check_key(key)
        except ShardLimitError as exc:
            raise RequestRefusedError(f"{verb} of key {shown(key)} was refused: {exc}") from None

    def _check_op(self, verb: str, op: KVOp) -> None:
        """Refuse an operation no server would take, before anything is sent."""
        try:
            check_op(op)
        except ShardLimitError as exc:
            raise RequestRefusedError(f"{verb} of key {shown(op.key)} was refused: {exc}") from None

    async def _get(self, key: Key, deadline: float) -> Value | None:
        self._check_key("get", key)
        call = CallDeadline.starting_now(f"get of key {shown(key)}", deadline)
        shard = await self._router.shard_of(self.keyspace, key, call)
        reply = await self._router.call(shard, READ, ReadRequest(shard, key), call)
        return reply.value

    async def _write(self, verb: str, op: KVOp, deadline: float) -> KVResult:
        self._check_op(verb, op)
        key = op.key
        call = CallDeadline.starting_now(f"{verb} of key {shown(key)}", deadline)
        shard = await self._router.shard_of(self.keyspace, key, call)
        writer = await self._writers.acquire(call)
        try:
            # One sequence number for all the retries of this write: applied once.
            request = WriteRequest(shard, writer.client_id, writer.next_seq(), op)
            reply = await self._router.call(shard, WRITE, request, call)
        finally:
            self._writers.release(writer)
        result = reply.result
        if result is None:
            raise ClientError(f"{call.what}: the server answered ok without a result")
        if result.stale:
            raise StaleWriteError(
                f"{call.what} was not applied: client id {request.client_id!r} already had "
                f"a write numbered above {request.seq} applied (is another live client "
                f"using client id {self.client_id!r}?)"
            )
        return result

    def _check_running(self) -> None:
        if self._state != "running":
            raise ClientClosedError(f"client {self.client_id!r} is not running ({self._state})")
