"""The controller's shard balancer: even spread, fewest moves, deterministic.

Given the current owner of each shard and the set of live groups, produce an assignment
where every shard has a live owner, group sizes differ by at most one, and as few shards
as possible change owner. The answer depends only on the *contents* of the inputs, never
on dict or set iteration order, so every controller replica computes the same one.

Why it is optimal. With ``S`` shards and ``G`` groups, ``r = S mod G`` groups hold
``q + 1 = S // G + 1`` shards and the rest hold ``q``. Shards owned by no live group must
move; beyond those, a group holding ``c`` shards with target ``t`` must give up
``max(0, c - t)``. That sum is smallest when the ``q + 1`` targets go to the ``r`` groups
holding the most shards (exchanging any two targets can only add moves), and moving exactly
those shards achieves it. So ``moves = orphans + sum(max(0, c_g - t_g))``, a lower bound
attained; :func:`min_moves` computes it and the tests check it against brute force.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from shardwise.errors import DuplicateNodeError, InvalidPlacementArgumentError


class _Sortable(Hashable, Protocol):
    def __lt__(self, other: Any, /) -> bool: ...


S = TypeVar("S", bound=_Sortable)
G = TypeVar("G", bound=_Sortable)


@dataclass(frozen=True, slots=True)
class ShardMove(Generic[S, G]):
    shard: S
    source: G | None
    target: G | None


@dataclass(frozen=True, slots=True)
class Rebalance(Generic[S, G]):
    """A new assignment and the moves that lead to it from the old one."""

    assignment: dict[S, G | None]
    moves: tuple[ShardMove[S, G], ...]


def _sorted_groups(groups: Iterable[G]) -> list[G]:
    listed = list(groups)
    ordered = sorted(set(listed))
    if len(ordered) != len(listed):
        raise DuplicateNodeError("a group is listed twice")
    return ordered


def _targets(counts: Mapping[G, int], groups: list[G], shards: int) -> dict[G, int]:
    base, extra = divmod(shards, len(groups))
    # The groups that already hold the most keep the larger quota; ties by group order.
    by_size = sorted(range(len(groups)), key=lambda i: (-counts[groups[i]], i))
    return {groups[i]: base + (1 if rank < extra else 0) for rank, i in enumerate(by_size)}


def _counts(current: Mapping[S, G | None], groups: list[G]) -> dict[G, int]:
    counts = dict.fromkeys(groups, 0)
    for owner in current.values():
        if owner is not None and owner in counts:
            counts[owner] += 1
    return counts


def _ranker(ordered: list[G], prefer: Callable[[S], Sequence[G]] | None) -> Callable[[S], list[G]]:
    """Each shard's full ranking of the live groups: ``prefer``'s order, then the rest in
    group order (so a ranking that omits a group, or names a dead one, still works)."""
    live = set(ordered)
    cache: dict[S, list[G]] = {}

    def rank(shard: S) -> list[G]:
        if shard not in cache:
            preferred = [g for g in (prefer(shard) if prefer else ()) if g in live]
            seen = set(preferred)
            cache[shard] = preferred + [g for g in ordered if g not in seen]
        return cache[shard]

    return rank


def min_moves(current: Mapping[S, G | None], groups: Iterable[G]) -> int:
    """The fewest shards any valid assignment must move (the bound :func:`balance` meets)."""
    ordered = _sorted_groups(groups)
    if not ordered:
        return sum(1 for owner in current.values() if owner is not None)
    counts = _counts(current, ordered)
    targets = _targets(counts, ordered, len(current))
    orphans = sum(1 for owner in current.values() if owner is None or owner not in counts)
    return orphans + sum(max(0, counts[g] - targets[g]) for g in ordered)


def balance(
    current: Mapping[S, G | None],
    groups: Iterable[G],
    prefer: Callable[[S], Sequence[G]] | None = None,
) -> Rebalance[S, G]:
    """Assign every shard in ``current`` to one of ``groups`` evenly with minimal moves.

    ``current`` maps each shard to its owner, ``None`` for none (an owner that is not in
    ``groups`` has left, so its shards are orphans). With no groups, every shard ends up
    owned by nobody. Shards and groups must be sortable (ints or strs).

    ``prefer(shard)`` optionally ranks the groups for a shard (a consistent-hash ring's
    successors, or rendezvous scores: see :mod:`~shardwise.placement.strategies`). It
    never changes *how many* shards move, which stays the proven minimum; it decides
    *which* ones and where to: a full group gives up the shards that rank it lowest, and
    each moving shard goes to the first group in its ranking that still has room.
    """
    ordered = _sorted_groups(groups)
    shards = sorted(current)
    if len(shards) != len(set(shards)):
        raise InvalidPlacementArgumentError("a shard is listed twice")
    if not ordered:
        dropped: list[ShardMove[S, G]] = [
            ShardMove(s, current[s], None) for s in shards if current[s] is not None
        ]
        return Rebalance(dict.fromkeys(shards), tuple(dropped))

    counts = _counts(current, ordered)
    targets = _targets(counts, ordered, len(shards))
    assignment: dict[S, G | None] = {}
    held: dict[G, list[S]] = {g: [] for g in ordered}
    pool: list[S] = []
    for shard in shards:
        owner = current[shard]
        if owner is not None and owner in held:
            held[owner].append(shard)
        else:
            pool.append(shard)
    rank = _ranker(ordered, prefer)
    needy = {g for g in ordered if len(held[g]) < targets[g]}

    def keep_order(shard: S, owner: G) -> tuple[bool, int, S]:
        # An over-full group gives up first the shards that rank a group needing shards
        # above it, then those that rank it lowest, then the highest-numbered.
        ranking = rank(shard)
        position = ranking.index(owner)
        return (any(h in needy for h in ranking[:position]), position, shard)

    for g in ordered:
        held[g].sort(key=lambda shard, g=g: keep_order(shard, g))  # type: ignore[misc]
        keep, release = held[g][: targets[g]], held[g][targets[g] :]
        held[g] = keep
        pool.extend(release)
        for shard in keep:
            assignment[shard] = g
    pool.sort()
    moves: list[ShardMove[S, G]] = []
    for shard in pool:
        # Room exists for every pooled shard: the targets sum to the number of shards.
        target = next(g for g in rank(shard) if len(held[g]) < targets[g])
        held[target].append(shard)
        assignment[shard] = target
        moves.append(ShardMove(shard, current[shard], target))
    moves.sort(key=lambda m: m.shard)
    return Rebalance(dict(sorted(assignment.items())), tuple(moves))
