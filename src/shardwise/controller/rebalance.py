"""Assigning a keyspace's shards to replica groups: the controller's pure core.

Each keyspace is balanced on its own (so every table's shards spread over all groups) by
:func:`shardwise.placement.balance`, which moves the proven minimum number of shards; the
keyspace's strategy only chooses which shards move and where:

* ``balanced``: plain minimal moves, lowest-numbered shards first;
* ``ring``: groups on a consistent-hash ring; a leaving group's shards go to its
  successors, a joining group takes the shards that now hash to it;
* ``rendezvous``: the same with highest-random-weight scores.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from shardwise.model.config import NO_GROUP, Keyspace, MoveInfo, ShardId, Strategy
from shardwise.placement import balance, rendezvous_preference, ring_preference


def preference(
    strategy: Strategy, gids: Sequence[int], keyspace: str
) -> Callable[[int], list[int]] | None:
    """Each shard's ranking of the groups under ``strategy`` (None: plain balancing)."""
    if strategy == "balanced" or not gids:
        return None
    rank = ring_preference(gids) if strategy == "ring" else rendezvous_preference(gids)
    return lambda index: rank(f"{keyspace}/{index}")


def rebalance_keyspace(
    keyspace: Keyspace, owners: tuple[int, ...], gids: Sequence[int]
) -> tuple[tuple[int, ...], list[MoveInfo]]:
    """New owners for every shard of ``keyspace`` over the live ``gids``, and the moves."""
    live = set(gids)
    current = {i: (o if o in live else None) for i, o in enumerate(owners)}
    prefer = preference(keyspace.strategy, sorted(live), keyspace.name)
    result = balance(current, sorted(live), prefer)
    new = tuple(NO_GROUP if g is None else g for _, g in sorted(result.assignment.items()))
    moves = [
        MoveInfo(ShardId(keyspace.name, i), owners[i], new[i])
        for i in range(len(owners))
        if owners[i] != new[i]
    ]
    return new, moves
