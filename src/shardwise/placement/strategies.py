"""Group preferences for the shard balancer: consistent hashing and rendezvous.

:func:`~shardwise.placement.balance.balance` always moves the proven minimum number of
shards; a preference decides which shards those are and where they go. With the ring, a
shard prefers the groups clockwise from its hash, so the shards of a leaving group go to
its successors, and a joining group takes the shards that now hash to it. Rendezvous does
the same with highest-random-weight scores, without a ring to build.

Group ids may be ints or strings: they are placed by their decimal or text form, and
shards likewise (``"users/17"`` or ``17``), so the preference of a shard is the same in
every process.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable
from typing import TypeVar

from shardwise.errors import DuplicateNodeError
from shardwise.placement.rendezvous import Rendezvous
from shardwise.placement.ring import DEFAULT_VNODES, HashRing

G = TypeVar("G", bound=Hashable)


def _names(groups: Iterable[G]) -> dict[str, G]:
    names: dict[str, G] = {}
    for group in groups:
        name = str(group)
        if name in names:
            raise DuplicateNodeError(f"two groups are both named {name!r}")
        names[name] = group
    return names


def ring_preference(
    groups: Iterable[G], vnodes: int = DEFAULT_VNODES
) -> Callable[[object], list[G]]:
    """Rank groups for a shard by walking a consistent-hash ring of the groups clockwise."""
    names = _names(groups)
    if not names:
        return lambda shard: []
    ring = HashRing(list(names), vnodes)
    return lambda shard: [names[n] for n in ring.preference_list(str(shard), len(names))]


def rendezvous_preference(groups: Iterable[G]) -> Callable[[object], list[G]]:
    """Rank groups for a shard by rendezvous (highest random weight) score."""
    names = _names(groups)
    if not names:
        return lambda shard: []
    hrw = Rendezvous(list(names))
    return lambda shard: [names[n] for n in hrw.top(str(shard), len(names))]
