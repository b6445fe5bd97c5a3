"""A one-group commit (``TxnCommit``) that applied, whose reply was lost, retried at the
group that no longer serves its first shard. That group used to answer a ``wrong_group``
vote, which the client took for "not applied" and planned again with a new sequence
number, bypassing the de-duplication: ``run_transaction`` applied its body twice. Now
the answer is a reply-level ``wrong_group``, and the router asks the new owner with the
same sequence number."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from shardwise.shardserver.protocol import TXN_COMMIT
from shardwise.testing import scenarios
from shardwise.testing.cluster import SimCluster

# pytest (--import-mode=importlib) imports this file as part of the namespace package
# tests.shardserver; mypy, with no __init__.py in tests/, sees a top-level module instead.
from .test_txn_sim import keys_on_groups  # type: ignore[import-not-found]

pytestmark = pytest.mark.virtual_time


async def test_a_commit_retried_at_the_old_owner_after_a_move_applies_twice(
    tmp_path: Path, seed: int
) -> None:
    async with SimCluster(tmp_path, groups=2, seed=seed) as cluster:
        await cluster.join(1, 2)
        await cluster.settled()
        config = await cluster.configuration()
        a, b, _, _ = keys_on_groups(config, 2, 2)  # a, b on group 1
        sa = scenarios.shard_of(config, a)
        async with cluster.client() as kv:
            await kv.put(a, "0")
            router: Any = kv._router
            original = router.call
            lost: list[Any] = []

            async def call(shard: Any, method: Any, request: Any, call_: Any, **kw: Any) -> Any:
                if method is TXN_COMMIT and not lost:
                    first = await original(shard, method, request, call_, **kw)
                    lost.append(first)  # applied: the reply is lost on the way back
                    await cluster.move(sa, 2)  # meanwhile the shard moves
                    await cluster.settled()
                    # follow_leader's retry of the same request, at the group the
                    # router's (older) configuration still names:
                    return await original(shard, method, request, call_, **kw)
                return await original(shard, method, request, call_, **kw)

            router.call = call

            async def increment(tx: Any) -> None:
                tx.put(a, str(int(await tx.get(a) or 0) + 1))
                tx.put(b, "touched")

            await kv.run_transaction(increment)
            assert [v.state for v in lost[0].votes] == ["committed"]
            assert await kv.get(a) == "1", "one run_transaction applied its body twice"
