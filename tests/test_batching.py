"""The client's call batcher against a scripted endpoint: what travels together, what
goes alone, and how each operation gets its own answer or error."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from shardwise.client.batching import MAX_BATCH_READS, MAX_BATCHED_OP_BYTES, CallBatcher
from shardwise.errors import InvalidMessageError, PeerUnreachableError, RpcTimeoutError
from shardwise.model.config import ShardId
from shardwise.model.kv import Get, KVResult, Put
from shardwise.model.sql import SqlStatement
from shardwise.model.txn import TxnPart
from shardwise.net.rpc import RpcMethod
from shardwise.shardserver.protocol import (
    BATCH,
    MAX_BATCHED_SQL_BYTES,
    READ,
    SCAN,
    SQL_READ,
    SQL_WRITE,
    TXN_COMMIT,
    TXN_PREPARE,
    TXN_RESOLVE,
    WRITE,
    BatchReply,
    BatchRequest,
    KVReply,
    ReadRequest,
    ScanRequest,
    SqlReadRequest,
    SqlReply,
    SqlWriteRequest,
    TxnCommitRequest,
    TxnPrepareRequest,
    TxnReply,
    TxnShardsRequest,
    WriteRequest,
)

SHARD = ShardId("default", 0)


class ScriptedEndpoint:
    """Records calls; answers each read with its key as the value and each write ok,
    after ``hold`` is set (so a test can look at what is in flight)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, Any]] = []
        self.hold = asyncio.Event()
        self.hold.set()
        self.fail: Exception | None = None
        self.short_reply = False
        self.old_server = False
        """Answers batches as a server that predates batched transaction and SQL calls."""
        self.sql_retry: set[str] = set()
        """SQL reads (by text) a batch answers ``retry`` (their rows did not fit)."""

    async def call(
        self, peer: str, method: RpcMethod[Any, Any], request: Any, *, timeout_s: float = 1.0
    ) -> Any:
        self.calls.append((peer, method.name, request))
        await self.hold.wait()
        if self.fail is not None:
            raise self.fail
        if method is BATCH:
            reads = [KVReply("ok", value=r.key) for r in request.reads]
            writes = [KVReply("ok", result=KVResult()) for _ in request.writes]
            calls = [*request.commits, *request.prepares, *request.resolves]
            txns = [TxnReply("ok", config_num=n) for n, _ in enumerate(calls)]
            sql = [
                *(
                    SqlReply("retry" if r.sql in self.sql_retry else "ok", rows=[(r.sql, "batch")])
                    for r in request.sql_reads
                ),
                *(SqlReply("ok", rowcount=w.seq) for w in request.sql_writes),
            ]
            if self.old_server:
                txns, sql = [], []
            return BatchReply(reads[1:] if self.short_reply else reads, writes, txns, sql)
        if method in (TXN_COMMIT, TXN_PREPARE, TXN_RESOLVE):
            return TxnReply("ok", config_num=-1)
        if method is SQL_READ:
            return SqlReply("ok", rows=[(request.sql, "alone")])
        if method is SQL_WRITE:
            return SqlReply("ok", rowcount=-request.seq)
        if method is READ:
            return KVReply("ok", value=request.key)
        return KVReply("ok", result=KVResult())


def read(key: str) -> ReadRequest:
    return ReadRequest(SHARD, key)


def write(key: str, value: str = "v", seq: int = 1) -> WriteRequest:
    return WriteRequest(SHARD, "c", seq, Put(key, value))


@pytest.fixture
def endpoint() -> ScriptedEndpoint:
    return ScriptedEndpoint()


@pytest.fixture
def batcher(endpoint: ScriptedEndpoint) -> CallBatcher:
    return CallBatcher(endpoint)  # type: ignore[arg-type]


async def test_operations_for_one_server_in_one_pass_travel_together(
    endpoint: ScriptedEndpoint, batcher: CallBatcher
) -> None:
    replies = await asyncio.gather(
        batcher.call("s1", READ, read("a"), 1.0),
        batcher.call("s1", WRITE, write("b"), 1.0),
        batcher.call("s1", READ, read("c"), 1.0),
        batcher.call("s2", READ, read("d"), 1.0),
    )
    assert [r.value for r in replies] == ["a", None, "c", "d"]
    assert replies[1].result == KVResult()
    sent = sorted((peer, name) for peer, name, _ in endpoint.calls)
    assert sent == [("s1", BATCH.name), ("s2", READ.name)]  # s2's lone read: the plain call
    batch = next(r for _, name, r in endpoint.calls if name == BATCH.name)
    assert isinstance(batch, BatchRequest)
    assert [r.key for r in batch.reads] == ["a", "c"] and [w.op.key for w in batch.writes] == ["b"]
    assert batcher.batches_sent == 1


async def test_transactions_calls_ride_with_the_writes_each_with_its_own_answer(
    endpoint: ScriptedEndpoint, batcher: CallBatcher
) -> None:
    txn = "0" * 32
    part = TxnPart(SHARD, writes=(Put("k", "v"),))
    replies = await asyncio.gather(
        batcher.call("s1", WRITE, write("b"), 1.0),
        batcher.call("s1", TXN_RESOLVE, TxnShardsRequest(txn, (SHARD,), True), 1.0),
        batcher.call("s1", TXN_COMMIT, TxnCommitRequest("c", 7, (part,)), 1.0),
        batcher.call("s1", TXN_PREPARE, TxnPrepareRequest(txn, (SHARD,), (part,)), 1.0),
        batcher.call("s2", TXN_COMMIT, TxnCommitRequest("c", 8, (part,)), 1.0),
    )
    sent = sorted((peer, name) for peer, name, _ in endpoint.calls)
    assert sent == [("s1", BATCH.name), ("s2", TXN_COMMIT.name)]  # alone: the plain call
    batch = next(r for _, name, r in endpoint.calls if name == BATCH.name)
    assert [c.seq for c in batch.commits] == [7] and len(batch.prepares) == 1
    assert [r.commit for r in batch.resolves] == [True] and len(batch.writes) == 1
    # Answers in the batch's order (commits, prepares, resolves) back to their callers.
    assert [r.config_num for r in replies[1:]] == [2, 0, 1, -1]


async def test_a_server_that_drops_transaction_calls_gets_them_alone(
    endpoint: ScriptedEndpoint, batcher: CallBatcher
) -> None:
    """A server of an older version ignores the fields it does not know: its batch reply
    has no transaction answers. Those calls are sent alone, and from then on go alone."""
    endpoint.old_server = True
    part = TxnPart(SHARD, writes=(Put("k", "v"),))
    commit = TxnCommitRequest("c", 7, (part,))
    written, committed = await asyncio.gather(
        batcher.call("s1", WRITE, write("b"), 1.0), batcher.call("s1", TXN_COMMIT, commit, 1.0)
    )
    assert written.result == KVResult() and committed.config_num == -1  # (the plain call's)
    assert [name for _, name, _ in endpoint.calls] == [BATCH.name, TXN_COMMIT.name]
    await asyncio.gather(
        batcher.call("s1", WRITE, write("c"), 1.0), batcher.call("s1", TXN_COMMIT, commit, 1.0)
    )
    assert sorted(name for _, name, _ in endpoint.calls[2:]) == sorted(
        [TXN_COMMIT.name, WRITE.name]
    )


async def test_a_full_batch_goes_at_once_and_the_rest_follow(
    endpoint: ScriptedEndpoint, batcher: CallBatcher
) -> None:
    keys = [f"k{n}" for n in range(MAX_BATCH_READS + 2)]
    replies = await asyncio.gather(*(batcher.call("s1", READ, read(k), 1.0) for k in keys))
    assert [r.value for r in replies] == keys
    sizes = [len(r.reads) if name == BATCH.name else 1 for _, name, r in endpoint.calls]
    assert sizes == [MAX_BATCH_READS, 2]


async def test_large_writes_reads_through_the_log_and_other_calls_go_alone(
    endpoint: ScriptedEndpoint, batcher: CallBatcher
) -> None:
    big = write("big", "x" * (MAX_BATCHED_OP_BYTES + 1))
    through_log = WriteRequest(SHARD, "c", 2, Get("g"))
    await asyncio.gather(
        batcher.call("s1", WRITE, big, 1.0),
        batcher.call("s1", WRITE, through_log, 1.0),
        batcher.call("s1", SCAN, ScanRequest(SHARD), 1.0),
    )
    assert sorted(name for _, name, _ in endpoint.calls) == [SCAN.name, WRITE.name, WRITE.name]
    assert batcher.batches_sent == 0


async def test_a_failed_batch_fails_each_of_its_operations(
    endpoint: ScriptedEndpoint, batcher: CallBatcher
) -> None:
    endpoint.fail = PeerUnreachableError("s1")
    results = await asyncio.gather(
        batcher.call("s1", READ, read("a"), 1.0),
        batcher.call("s1", WRITE, write("b"), 1.0),
        return_exceptions=True,
    )
    assert all(isinstance(r, PeerUnreachableError) for r in results)


async def test_a_reply_that_does_not_match_the_batch_is_a_protocol_error(
    endpoint: ScriptedEndpoint, batcher: CallBatcher
) -> None:
    endpoint.short_reply = True
    results = await asyncio.gather(
        batcher.call("s1", READ, read("a"), 1.0),
        batcher.call("s1", READ, read("b"), 1.0),
        return_exceptions=True,
    )
    assert all(isinstance(r, InvalidMessageError) for r in results)


@pytest.mark.virtual_time
async def test_each_operation_keeps_its_own_timeout(
    endpoint: ScriptedEndpoint, batcher: CallBatcher
) -> None:
    endpoint.hold.clear()
    hasty = asyncio.create_task(batcher.call("s1", READ, read("a"), 0.1))
    patient = asyncio.create_task(batcher.call("s1", READ, read("b"), 5.0))
    with pytest.raises(RpcTimeoutError, match=r"no answer in 0\.1 s"):
        await hasty
    assert not patient.done()
    endpoint.hold.set()
    assert (await patient).value == "b"
    assert [name for _, name, _ in endpoint.calls] == [BATCH.name]


async def test_close_cancels_what_is_in_flight(
    endpoint: ScriptedEndpoint, batcher: CallBatcher
) -> None:
    endpoint.hold.clear()
    pending = [asyncio.create_task(batcher.call("s1", READ, read(k), 5.0)) for k in "ab"]
    for _ in range(10):  # a few passes of the loop: queued, then sent
        if endpoint.calls:
            break
        await asyncio.sleep(0)
    assert len(endpoint.calls) == 1
    await batcher.close()
    results = await asyncio.gather(*pending, return_exceptions=True)
    assert all(isinstance(r, asyncio.CancelledError) for r in results)


async def passes_until(condition: Any, passes: int = 20) -> None:
    """Let the loop run until ``condition()`` holds (a few passes, no waiting)."""
    for _ in range(passes):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("the condition never held")


async def test_while_a_call_is_in_flight_the_next_operations_wait_and_go_together(
    endpoint: ScriptedEndpoint, batcher: CallBatcher
) -> None:
    endpoint.hold.clear()
    first = asyncio.create_task(batcher.call("s1", WRITE, write("a"), 5.0))
    await passes_until(lambda: len(endpoint.calls) == 1)
    later = [asyncio.create_task(batcher.call("s1", READ, read(k), 5.0)) for k in "bcd"]
    other = asyncio.create_task(batcher.call("s2", READ, read("e"), 5.0))
    await passes_until(lambda: len(endpoint.calls) == 2)  # another server is not held back
    for _ in range(10):
        await asyncio.sleep(0)
    assert [peer for peer, _, _ in endpoint.calls] == ["s1", "s2"]  # b, c, d wait
    endpoint.hold.set()
    assert (await first).result == KVResult() and (await other).value == "e"
    assert [r.value for r in await asyncio.gather(*later)] == ["b", "c", "d"]
    assert endpoint.calls[2] == ("s1", BATCH.name, BatchRequest(tuple(map(read, "bcd")), ()))
    assert len(endpoint.calls) == 3


@pytest.mark.virtual_time
async def test_an_operation_given_up_while_waiting_is_not_sent(
    endpoint: ScriptedEndpoint, batcher: CallBatcher
) -> None:
    endpoint.hold.clear()
    first = asyncio.create_task(batcher.call("s1", READ, read("a"), 5.0))
    await passes_until(lambda: len(endpoint.calls) == 1)
    hasty = asyncio.create_task(batcher.call("s1", WRITE, write("b"), 0.1))
    patient = asyncio.create_task(batcher.call("s1", READ, read("c"), 5.0))
    with pytest.raises(RpcTimeoutError):
        await hasty
    endpoint.hold.set()
    assert (await first).value == "a" and (await patient).value == "c"
    assert endpoint.calls[1] == ("s1", READ.name, read("c"))  # alone now: a plain call


async def test_a_resolve_in_flight_does_not_hold_back_the_next_callers_read(
    endpoint: ScriptedEndpoint, batcher: CallBatcher
) -> None:
    # Nobody waits for a resolve (its transaction was already answered): the next
    # transaction's read must not queue behind its round through the log.
    endpoint.hold.clear()
    resolve = asyncio.create_task(
        batcher.call("s1", TXN_RESOLVE, TxnShardsRequest("0" * 32, (SHARD,), True), 5.0)
    )
    await passes_until(lambda: len(endpoint.calls) == 1)
    following = asyncio.create_task(batcher.call("s1", READ, read("a"), 5.0))
    await passes_until(lambda: len(endpoint.calls) == 2)
    assert endpoint.calls[1] == ("s1", READ.name, read("a"))
    # ... while the read (a paced call) still holds back what comes after it.
    behind = asyncio.create_task(batcher.call("s1", READ, read("b"), 5.0))
    for _ in range(10):
        await asyncio.sleep(0)
    assert len(endpoint.calls) == 2
    endpoint.hold.set()
    assert (await following).value == "a" and (await behind).value == "b"
    assert (await resolve).config_num == -1


def sql_read(sql: str) -> SqlReadRequest:
    return SqlReadRequest(SHARD, sql)


def sql_write(seq: int, sql: str = "UPDATE t SET a = 1") -> SqlWriteRequest:
    return SqlWriteRequest(SHARD, "c", seq, (SqlStatement(sql),))


async def test_sql_calls_ride_with_the_rest_each_with_its_own_answer(
    endpoint: ScriptedEndpoint, batcher: CallBatcher
) -> None:
    replies = await asyncio.gather(
        batcher.call("s1", SQL_WRITE, sql_write(5), 1.0),
        batcher.call("s1", READ, read("a"), 1.0),
        batcher.call("s1", SQL_READ, sql_read("SELECT 1"), 1.0),
        batcher.call("s1", SQL_READ, sql_read("SELECT 2"), 1.0),
        batcher.call("s1", SQL_WRITE, sql_write(6), 1.0),
    )
    assert [name for _, name, _ in endpoint.calls] == [BATCH.name]
    batch = endpoint.calls[0][2]
    assert [r.sql for r in batch.sql_reads] == ["SELECT 1", "SELECT 2"]
    assert [w.seq for w in batch.sql_writes] == [5, 6]
    # Answers in the batch's order (the SQL reads, then the writes) back to their callers.
    assert [replies[0].rowcount, replies[4].rowcount] == [5, 6] and replies[1].value == "a"
    assert [replies[2].rows, replies[3].rows] == [[("SELECT 1", "batch")], [("SELECT 2", "batch")]]


async def test_a_batched_sql_read_whose_rows_did_not_fit_is_asked_again_alone(
    endpoint: ScriptedEndpoint, batcher: CallBatcher
) -> None:
    endpoint.sql_retry = {"SELECT big"}
    small, big = await asyncio.gather(
        batcher.call("s1", SQL_READ, sql_read("SELECT small"), 1.0),
        batcher.call("s1", SQL_READ, sql_read("SELECT big"), 1.0),
    )
    assert small.rows == [("SELECT small", "batch")] and big.rows == [("SELECT big", "alone")]
    assert [name for _, name, _ in endpoint.calls] == [BATCH.name, SQL_READ.name]


async def test_a_server_that_drops_sql_calls_gets_them_alone(
    endpoint: ScriptedEndpoint, batcher: CallBatcher
) -> None:
    endpoint.old_server = True
    replies = await asyncio.gather(
        batcher.call("s1", WRITE, write("b"), 1.0),
        batcher.call("s1", SQL_WRITE, sql_write(5), 1.0),
        batcher.call("s1", SQL_READ, sql_read("SELECT 1"), 1.0),
    )
    assert replies[1].rowcount == -5 and replies[2].rows == [("SELECT 1", "alone")]
    names = [name for _, name, _ in endpoint.calls]
    assert names[0] == BATCH.name and sorted(names[1:]) == [SQL_READ.name, SQL_WRITE.name]
    endpoint.calls.clear()
    await asyncio.gather(
        batcher.call("s1", WRITE, write("c"), 1.0), batcher.call("s1", SQL_WRITE, sql_write(6), 1.0)
    )
    assert sorted(name for _, name, _ in endpoint.calls) == [SQL_WRITE.name, WRITE.name]


async def test_a_large_sql_write_goes_alone(
    endpoint: ScriptedEndpoint, batcher: CallBatcher
) -> None:
    large = sql_write(9, "INSERT INTO t VALUES ('" + "x" * MAX_BATCHED_SQL_BYTES + "')")
    replies = await asyncio.gather(
        batcher.call("s1", SQL_WRITE, large, 1.0), batcher.call("s1", READ, read("a"), 1.0)
    )
    assert replies[0].rowcount == -9
    assert sorted(name for _, name, _ in endpoint.calls) == [READ.name, SQL_WRITE.name]
