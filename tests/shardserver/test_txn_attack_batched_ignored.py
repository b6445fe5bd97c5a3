"""Hostile review of the ``ignored`` path of a transaction's command that shares a batch
entry (``WriteApplier.client_batch``): end to end, the client must ask again and the
transaction must commit exactly once. The server normally keeps such commands out of the
entry (``batches._writes``); here it is made to put every command in (as a leader of
another version, or a bug, might), so the apply's rule is what stands."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from shardwise.shardserver import batches
from shardwise.shardserver.txn.handlers import TxnHandlers
from shardwise.testing.cluster import SimCluster

# pytest (--import-mode=importlib) imports this file as part of the namespace package
# tests.shardserver; mypy, with no __init__.py in tests/, sees a top-level module instead.
from .test_txn_sim import keys_on_groups  # type: ignore[import-not-found]

pytestmark = pytest.mark.virtual_time


async def test_ignored_commands_are_asked_again_and_commit_once(
    tmp_path: Path, seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(batches, "shards_of", lambda command: set())  # everything joins
    ignored: list[object] = []
    original = TxnHandlers.reply_of

    def reply_of(self: Any, result: Any) -> Any:
        if result.outcome == "ignored":
            ignored.append(result)
        return original(self, result)

    monkeypatch.setattr(TxnHandlers, "reply_of", reply_of)
    async with SimCluster(tmp_path, groups=2, seed=seed) as cluster:
        await cluster.join(1, 2)
        await cluster.settled()
        config = await cluster.configuration()
        a, b, c, _ = keys_on_groups(config, 2, 2)  # a, b on group 1; c on group 2
        async with cluster.client() as kv:
            await kv.put(a, "0")
            await kv.put(c, "0")

            async def bump(key: str) -> None:
                async def body(tx: Any) -> None:
                    tx.put(key, str(int(await tx.get(key) or 0) + 1))

                await kv.run_transaction(body)

            async def noise(n: int) -> None:
                await kv.put(b, str(n))

            # Same-shard writes and commits, one group (TxnCommit) and two (prepare and
            # resolve), all at once: they share batches and entries.
            work = [bump(a) for _ in range(5)] + [noise(n) for n in range(20)]

            async def both() -> None:
                async def body(tx: Any) -> None:
                    tx.put(a, str(int(await tx.get(a) or 0) + 1))
                    tx.put(c, str(int(await tx.get(c) or 0) + 1))

                await kv.run_transaction(body)

            work += [both() for _ in range(5)]
            await asyncio.gather(*work)
            assert await kv.get(a) == "10"
            assert await kv.get(c) == "5"
    assert ignored, "the scenario never made the apply ignore a command"
