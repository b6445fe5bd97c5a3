"""The blocking client: :class:`SyncClient`, the async :class:`~shardwise.client.Client`'s
calls for code that does not use asyncio.

::

    with SyncClient({"ctl-1": ("10.0.0.1", 7000)}, secret) as client:
        client.put("user:1", "ada")
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import random
import ssl
import threading
import time
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from shardwise.client.kv import DEFAULT_DEADLINE_S, MAX_WRITES_IN_FLIGHT, Client
from shardwise.client.scan import DEFAULT_SCAN_LIMIT, SCAN_PAGE_ROWS
from shardwise.client.txn import (
    DEFAULT_MAX_ATTEMPTS,
    MAX_RETRY_PAUSE_S,
    RETRY_PAUSE_S,
    Transaction,
)
from shardwise.errors import ClientClosedError, ShardwiseError
from shardwise.model.config import Configuration
from shardwise.model.kv import Key, Pairs, Value
from shardwise.model.txn import TransactionConflictError
from shardwise.net.auth import Credentials
from shardwise.net.leader import ATTEMPT_TIMEOUT_S
from shardwise.net.links import Address
from shardwise.net.loop import loop_factory

if TYPE_CHECKING:  # shardwise.sql (and sqlglot) load on the first SQL call only
    from shardwise.client.sql import ClusterSql
    from shardwise.sql import Result
    from shardwise.sql.params import Params

T = TypeVar("T")


class SyncClient:
    """A blocking :class:`Client`: the same calls, for code that does not use asyncio.

    The async client runs on an event loop of its own in a background thread; each call
    is handed to that loop and waited for. A thread rather than ``asyncio.Runner`` because
    (1) the loop keeps running between calls, so connections keep being read and kept
    alive while the caller does other things; (2) any number of threads may call one
    SyncClient at once (their calls run concurrently on the loop); (3) it works even when
    the calling thread already runs an event loop, where ``Runner`` refuses.
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
        client_ssl: ssl.SSLContext | None = None,
    ) -> None:
        self._options: dict[str, Any] = {
            "client_id": client_id,
            "keyspace": keyspace,
            "deadline_s": deadline_s,
            "attempt_timeout_s": attempt_timeout_s,
            "max_writes_in_flight": max_writes_in_flight,
            "first_seq": first_seq,
            "client_ssl": client_ssl,
        }
        self._controllers = dict(controllers)
        self._secret = secret
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._client: Client | None = None

    # --- life cycle --------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("a client starts once")
        loop = loop_factory()()
        self._loop = loop
        self._thread = threading.Thread(
            target=self._run_loop, args=(loop,), name="shardwise-client", daemon=True
        )
        self._thread.start()
        try:
            self._run(self._start_client())
        except BaseException:
            self._stop_loop()
            raise

    def close(self) -> None:
        if self._loop is None or self._thread is None or not self._thread.is_alive():
            return
        try:
            if self._client is not None:
                self._run(self._client.close())
        finally:
            self._stop_loop()

    def __enter__(self) -> SyncClient:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def client_id(self) -> str:
        return self._async_client().client_id

    @property
    def configuration(self) -> Configuration | None:
        return self._async_client().configuration

    def latest_configuration(self, *, deadline_s: float | None = None) -> Configuration:
        """:meth:`Client.latest_configuration`, blocking."""
        return self._run(self._async_client().latest_configuration(deadline_s=deadline_s))

    # --- the calls ---------------------------------------------------------------------

    def get(self, key: Key, *, deadline_s: float | None = None) -> Value | None:
        return self._run(self._async_client().get(key, deadline_s=deadline_s))

    def put(self, key: Key, value: Value, *, deadline_s: float | None = None) -> None:
        self._run(self._async_client().put(key, value, deadline_s=deadline_s))

    def append(self, key: Key, value: Value, *, deadline_s: float | None = None) -> None:
        self._run(self._async_client().append(key, value, deadline_s=deadline_s))

    def delete(self, key: Key, *, deadline_s: float | None = None) -> None:
        self._run(self._async_client().delete(key, deadline_s=deadline_s))

    def cas(
        self, key: Key, expected: Value | None, new: Value, *, deadline_s: float | None = None
    ) -> bool:
        return self._run(self._async_client().cas(key, expected, new, deadline_s=deadline_s))

    def mget(
        self, keys: Iterable[Key], *, deadline_s: float | None = None
    ) -> dict[Key, Value | None]:
        return self._run(self._async_client().mget(list(keys), deadline_s=deadline_s))

    def mput(self, items: Pairs, *, deadline_s: float | None = None) -> None:
        self._run(self._async_client().mput(dict(items), deadline_s=deadline_s))

    def scan(
        self,
        prefix: Key | None = None,
        *,
        start: Key | None = None,
        end: Key | None = None,
        limit: int = DEFAULT_SCAN_LIMIT,
        page_rows: int = SCAN_PAGE_ROWS,
        deadline_s: float | None = None,
    ) -> list[tuple[Key, Value]]:
        client = self._async_client()
        return self._run(
            client.scan(
                prefix,
                start=start,
                end=end,
                limit=limit,
                page_rows=page_rows,
                deadline_s=deadline_s,
            )
        )

    def sql(
        self, query: str, params: Params | None = None, *, deadline_s: float | None = None
    ) -> Result:
        """:meth:`Client.sql`, blocking."""
        return self._run(self._async_client().sql(query, params, deadline_s=deadline_s))

    def copy_rows(
        self,
        table: str,
        columns: Sequence[str] | None,
        rows: Iterable[Sequence[object]],
        *,
        deadline_s: float | None = None,
    ) -> int:
        """:meth:`Client.copy_rows`, blocking."""
        return self._run(
            self._async_client().copy_rows(table, columns, rows, deadline_s=deadline_s)
        )

    def sql_session(self) -> SyncSqlSession:
        """A SQL session of its own on this client (:meth:`Client.sql_session`): its own
        transaction, the client's connections. Many threads, each with its session (a
        DB-API connection each: ``shardwise.dbapi.Connection(client.sql_session())``),
        share one client."""
        return SyncSqlSession(self, self._async_client().sql_session())

    @property
    def in_transaction(self) -> bool:
        """:attr:`Client.in_transaction`."""
        return self._async_client().in_transaction

    def transaction(self, *, deadline_s: float | None = None) -> SyncTransaction:
        """:meth:`Client.transaction`, blocking: ``with client.transaction() as tx:``
        ``tx.get``, ``tx.put``, ``tx.delete``; commits when the block ends."""

        async def begin() -> Transaction:
            return self._async_client().transaction(deadline_s=deadline_s)

        return SyncTransaction(self._run(begin()), self._run)

    def run_transaction(
        self,
        body: Callable[[SyncTransaction], T],
        *,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        deadline_s: float | None = None,
    ) -> T:
        """:meth:`Client.run_transaction`, blocking: ``body(tx)`` in a transaction,
        committed, run again from the start after a conflict (up to ``max_attempts``)."""
        for attempt in range(1, max_attempts + 1):
            tx = self.transaction(deadline_s=deadline_s)
            try:
                result = body(tx)
                tx.commit()
                return result
            except TransactionConflictError:
                if attempt == max_attempts:
                    raise
            time.sleep(random.uniform(0, min(MAX_RETRY_PAUSE_S, RETRY_PAUSE_S * 2**attempt)))
        raise AssertionError("unreachable")

    @property
    def last_rows_shipped(self) -> dict[int, int]:
        return self._async_client().last_rows_shipped

    # --- internals ---------------------------------------------------------------------

    def _async_client(self) -> Client:
        if self._client is None:
            raise ClientClosedError("the client is not started")
        return self._client

    async def _start_client(self) -> None:
        # Made on the loop's thread: its transport belongs to that loop.
        client = Client(self._controllers, self._secret, **self._options)
        await client.start()
        self._client = client

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        loop = self._loop
        if loop is None or self._thread is None or not self._thread.is_alive():
            coro.close()
            raise ClientClosedError("the client is not running")
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("a SyncClient call from its own loop would wait on itself")
        future: concurrent.futures.Future[T] = asyncio.run_coroutine_threadsafe(coro, loop)
        try:
            # No timeout here: every call is bounded by its own deadline inside the client.
            return future.result()
        except BaseException:
            future.cancel()  # e.g. KeyboardInterrupt: do not leave the call running
            raise

    @staticmethod
    def _run_loop(loop: asyncio.AbstractEventLoop) -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_forever()
            # Whatever is left (calls abandoned by their threads) is cancelled, not leaked.
            pending = asyncio.all_tasks(loop)
            for task in pending:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            asyncio.set_event_loop(None)
            loop.close()

    def _stop_loop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is not None and thread is not None and thread.is_alive():
            loop.call_soon_threadsafe(loop.stop)
            thread.join()
        self._client = None


class SyncSqlSession:
    """A SQL session on a :class:`SyncClient` (:meth:`SyncClient.sql_session`), blocking;
    one thread at a time. Closing it drops its open transaction, not the client."""

    def __init__(self, client: SyncClient, session: ClusterSql) -> None:
        self._client = client
        self._session = session

    def sql(
        self, query: str, params: Params | None = None, *, deadline_s: float | None = None
    ) -> Result:
        """:meth:`Client.sql`, in this session."""
        client = self._client
        return client._run(
            client._async_client().sql_in(self._session, query, params, deadline_s=deadline_s)
        )

    @property
    def in_transaction(self) -> bool:
        return self._session.in_transaction

    def close(self) -> None:
        if self._session.in_transaction:
            with contextlib.suppress(ShardwiseError):  # (nothing of it was applied)
                self.sql("ROLLBACK")


class SyncTransaction:
    """A :class:`~shardwise.client.txn.Transaction`, blocking (one thread at a time)."""

    def __init__(self, tx: Transaction, run: Callable[[Coroutine[Any, Any, Any]], Any]) -> None:
        self._tx = tx
        self._run = run

    def get(self, key: Key) -> Value | None:
        value: Value | None = self._run(self._tx.get(key))
        return value

    def put(self, key: Key, value: Value) -> None:
        self._run(_call(self._tx.put, key, value))

    def delete(self, key: Key) -> None:
        self._run(_call(self._tx.delete, key))

    def commit(self) -> None:
        self._run(self._tx.commit())

    def abort(self) -> None:
        self._run(_call(self._tx.abort))

    def __enter__(self) -> SyncTransaction:
        return self

    @property
    def state(self) -> str:
        """``open``, ``committing``, ``committed``, ``aborted`` or ``failed``."""
        return self._tx.state

    def __exit__(self, exc_type: object, *_: object) -> None:
        if exc_type is None and self._tx.state == "open":
            self.commit()
        elif exc_type is not None:
            self.abort()


async def _call(function: Callable[..., None], *args: Any) -> None:
    """A plain call, on the client's loop (where the transaction lives)."""
    function(*args)
