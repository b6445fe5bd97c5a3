"""Hostile review of "a transaction's first reads skip ReadIndex" (``ReadRequest.validated``,
``batches.leader_reads``): every version a transaction reads must be checked again before
it counts. These tests attack the read-only commit path (``client/txn.py``
``_validate_reads``), whose argument (DESIGN.md, "Transactions", *Read only*) is that each
key held its value from its first answer until its second reading.

Found by a hostile review; the test failed before its fix (an absent key's version
now names its tombstone: ``txn/state.version_of``)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from shardwise.model.txn import TransactionConflictError
from shardwise.testing.cluster import SimCluster

# pytest (--import-mode=importlib) imports this file as part of the namespace package
# tests.shardserver; mypy, with no __init__.py in tests/, sees a top-level module instead.
from .test_txn_sim import keys_on_groups  # type: ignore[import-not-found]

pytestmark = pytest.mark.virtual_time


async def test_a_read_only_transaction_of_absent_keys_is_not_fooled_by_recreated_keys(
    tmp_path: Path, seed: int
) -> None:
    """A read-only transaction commits when each key's second, linearizable reading shows
    the version its first showed. The argument (DESIGN.md, "Read only") is that a version
    names one write for ever, so the key *held* its value from the first answer to the
    second reading. That is false for an absent key: its version is always
    ``ABSENT_VERSION`` (-1, ``shardserver/txn/state.py:86``; ``txn/store.py:278``
    ``versioned`` returns it for any missing row), so "absent, then written, then deleted
    again" validates as "unchanged".

    The schedule (each step waits for the previous; the two second readings of the commit
    are in flight together, and the writes land between them, as another client's would):

    ==========================  =========  ======================
    step                        k1, k2     transaction sees
    ==========================  =========  ======================
    (setup)                     -, x
    tx.get(k1)                  -, x       k1 absent
    put k1; delete k2           1, -
    tx.get(k2)                  1, -       k2 absent
    put k2; delete k1           -, 2
    commit: re-read k1          -, 2       k1 absent (-1 == -1)
    put k1; delete k2           3, -
    commit: re-read k2          3, -       k2 absent (-1 == -1)
    ==========================  =========  ======================

    The transaction committed {k1: absent, k2: absent}, yet at no moment of its interval
    (nor after it began) were both keys absent: not strictly serializable (every plain
    write here is linearizable and they follow one another in real time). With
    ``validated`` first reads (Change 2) the first answers may even come from before the
    transaction began, so fewer interleaved writes are needed; the cause is the same:
    ``_validate_reads`` (``client/txn.py:409``) compares versions, and -1 is not one write.
    """
    async with SimCluster(tmp_path, groups=2, seed=seed) as cluster:
        await cluster.join(1, 2)
        await cluster.settled()
        config = await cluster.configuration()
        k1, _, k2, _ = keys_on_groups(config, 2, 2)  # k1 on group 1, k2 on group 2
        async with cluster.client() as kv, cluster.client() as other:
            await other.put(k2, "x")
            tx = kv.transaction()
            assert await tx.get(k1) is None
            await other.put(k1, "1")
            await other.delete(k2)
            assert await tx.get(k2) is None
            await other.put(k2, "2")
            await other.delete(k1)

            protocol: Any = tx.protocol
            original = protocol.read
            k1_read_again = asyncio.Event()

            async def read(key: Any, call: Any, *, validated: bool = True) -> Any:
                if validated:
                    return await original(key, call, validated=validated)
                if key == k1:
                    try:
                        return await original(key, call, validated=validated)
                    finally:
                        k1_read_again.set()
                await k1_read_again.wait()  # (its reply was slower: a network delay)
                await other.put(k1, "3")
                await other.delete(k2)
                return await original(key, call, validated=validated)

            protocol.read = read
            try:
                with pytest.raises(TransactionConflictError):
                    await tx.commit()
            finally:
                protocol.read = original
