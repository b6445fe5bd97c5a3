"""Which shards change owner between two configurations, as one group sees it."""

from __future__ import annotations

from dataclasses import dataclass

from shardwise.model.config import NO_GROUP, Configuration, ShardId


@dataclass(frozen=True, slots=True)
class OwnerChange:
    """A shard that changes hands between two configurations, seen from one group. (Not
    the controller's ``Move`` command, which asks for such a change.)"""

    shard: ShardId
    previous: int
    """Its owner before (``NO_GROUP``: nobody; it is new)."""
    owner: int
    """Its owner after."""


def owner_changes(old: Configuration, new: Configuration, gid: int) -> list[OwnerChange]:
    """The shards group ``gid`` gains or loses going from ``old`` to ``new``."""
    found = []
    for keyspace, owners in new.owners.items():
        before = old.owners.get(keyspace, ())
        for i, owner in enumerate(owners):
            previous = before[i] if i < len(before) else NO_GROUP
            if (previous == gid) != (owner == gid):
                found.append(OwnerChange(ShardId(keyspace, i), previous, owner))
    return found
