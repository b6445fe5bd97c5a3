"""Settling and resolving a transaction across groups: what a client does after its
prepares, and what a participant's recovery does for a client that died.

Both ask shards wherever they are now (:class:`Participants`: a client routes through
its router, a server through its configuration) and decide the same way, from the
states the participants *recorded*, which are final once they are not ``prepared``:

* **settle**: any participant ``aborted`` or ``fenced``: the transaction did not commit.
  Otherwise every participant whose state is not known is *fenced* (``txn.fence``: a
  shard that recorded nothing records ``fenced``, so a prepare that comes later is
  refused); then it committed if and only if every participant is ``prepared`` or
  ``committed``. Two deciders (a slow client and a recoverer) reach the same answer:
  each participant's state is decided once, by its log.
* **finish**: ``txn.resolve`` at every participant (commit or abort). The records stay
  until the transaction is too old to prepare anywhere (``MAX_TXN_AGE_MS``), when the
  leaders' clean-up drops them (``TxnExpire``): a record dropped sooner could let a
  prepare that was still on its way find nothing, and prepare.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any, Final, Protocol, TypeVar

from shardwise.errors import RequestRefusedError
from shardwise.model.config import Configuration, ShardId
from shardwise.model.txn import TxnId, TxnState
from shardwise.net.leader import RETRY_PAUSE_S, CallDeadline, loop_time
from shardwise.net.rpc import RpcMethod
from shardwise.shardserver.protocol import (
    TXN_FENCE,
    TXN_RESOLVE,
    TxnReply,
    TxnShardsRequest,
)

FINISH_DEADLINE_S: Final = 30.0
"""How long one transaction's resolution keeps trying; past it, the participants' own
recovery (``recovery.py``) finishes the job."""

FINAL_STATES: Final = frozenset(TxnState)
"""What a vote, a fence or a resolve answers when the shard has a record."""

Req = TypeVar("Req")


class Participants(Protocol):
    """How to reach a transaction's participants where they are now."""

    async def call_shard(
        self, shard: ShardId, method: RpcMethod[Req, TxnReply], request: Req, call: CallDeadline
    ) -> TxnReply:
        """``request`` to the group that serves ``shard`` (its leader), retried until a
        reply settles it or ``call``'s deadline passes (``ClientTimeoutError``)."""
        ...

    async def by_group(
        self, shards: Iterable[ShardId], call: CallDeadline
    ) -> tuple[list[list[ShardId]], list[ShardId]]:
        """``shards`` grouped by the group that serves them, as far as known, and those
        that are no shard of the cluster (:func:`split_by_group`)."""
        ...

    async def newer_configuration(self, call: CallDeadline) -> None:
        """A group did not serve a shard: learn a newer configuration (or wait a little)."""
        ...


def split_by_group(
    config: Configuration, shards: Iterable[ShardId]
) -> tuple[list[list[ShardId]], list[ShardId]]:
    """``shards`` grouped by their owner in ``config``, and those it has no such shard of
    (a keyspace dropped since, an index out of range): they never held anything."""
    groups: dict[int, list[ShardId]] = {}
    gone: list[ShardId] = []
    for shard in sorted(shards):
        owners = config.owners.get(shard.keyspace)
        if owners is None or not 0 <= shard.index < len(owners):
            gone.append(shard)
        else:
            groups.setdefault(owners[shard.index], []).append(shard)
    return list(groups.values()), gone


class TxnResolver:
    """Settles and resolves transactions through ``participants`` (module docstring)."""

    def __init__(self, participants: Participants) -> None:
        self.participants = participants

    async def shards_call(
        self,
        method: RpcMethod[TxnShardsRequest, TxnReply],
        txn: TxnId,
        shards: Iterable[ShardId],
        call: CallDeadline,
        **extra: Any,
    ) -> dict[ShardId, str]:
        """``method`` for ``shards``, one call per group that serves some: each shard's
        state. A shard its group did not serve is asked again where it went."""
        left = set(shards)
        states: dict[ShardId, str] = {}
        while left:
            if call.remaining() <= 0:
                raise call.timed_out()
            groups, gone = await self.participants.by_group(left, call)
            for shard in gone:  # no prepare ever reached it: as good as fenced
                states[shard] = TxnState.FENCED
                left.discard(shard)
            replies = await asyncio.gather(
                *(
                    self.participants.call_shard(
                        group[0], method, TxnShardsRequest(txn, tuple(group), **extra), call
                    )
                    for group in groups
                )
            )
            for group, reply in zip(groups, replies, strict=True):
                if reply.error:
                    raise RequestRefusedError(f"{call.what} was refused: {reply.error}")
                if reply.status != "ok":  # (this server, asked directly, may not lead)
                    call.why = f"the group of {group[0]} answered {reply.status}"
                for shard, vote in zip(group, reply.votes, strict=False):
                    if vote.state != "wrong_group":
                        states[shard] = vote.state
                        left.discard(shard)
            if left:
                await self.participants.newer_configuration(call)
                await asyncio.sleep(min(RETRY_PAUSE_S, max(0.0, call.remaining())))
        return states

    async def settle(
        self,
        txn: TxnId,
        participants: tuple[ShardId, ...],
        votes: dict[ShardId, str],
        call: CallDeadline,
    ) -> bool:
        """Whether ``txn`` committed (see the module docstring); ``votes``: the states
        already known."""
        if any(v in (TxnState.ABORTED, TxnState.FENCED) for v in votes.values()):
            return False
        unknown = [s for s in participants if votes.get(s) not in FINAL_STATES]
        if unknown:
            votes = {**votes, **await self.shards_call(TXN_FENCE, txn, unknown, call)}
        return all(votes.get(s) in (TxnState.PREPARED, TxnState.COMMITTED) for s in participants)

    async def finish(
        self,
        txn: TxnId,
        participants: tuple[ShardId, ...],
        commit: bool,
        deadline_s: float = FINISH_DEADLINE_S,
    ) -> None:
        """Resolve every participant."""
        call = CallDeadline.starting_now(f"resolving transaction {txn}", loop_time() + deadline_s)
        await self.shards_call(TXN_RESOLVE, txn, participants, call, commit=commit)
