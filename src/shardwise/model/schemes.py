"""Key -> shard, the same in every process: a keyspace's scheme made into a lookup.

Clients and servers build a :class:`ShardMap` from the configuration they hold, so a key
maps to the same shard everywhere (placement hashes are pinned by golden vectors).
"""

from __future__ import annotations

import itertools
from functools import lru_cache
from typing import Final

from shardwise.errors import InvalidSchemeError
from shardwise.model.config import Keyspace, Scheme, ShardId
from shardwise.placement import HashRangePartition, HashRing, Key, KeyRangePartition

MAX_RING_VNODES: Final = 1024


def check_scheme(scheme: Scheme, max_shards: int) -> None:
    """Refuse a scheme that cannot be built, with a message a person can act on."""
    if not 1 <= scheme.shards <= max_shards:
        raise InvalidSchemeError(f"a keyspace has 1 to {max_shards} shards, not {scheme.shards}")
    if scheme.kind == "ring" and not 1 <= scheme.vnodes <= MAX_RING_VNODES:
        raise InvalidSchemeError(f"ring vnodes must be in [1, {MAX_RING_VNODES}]")
    if scheme.kind == "range":
        points = [p.encode() for p in scheme.split_points]
        if len(points) + 1 != scheme.shards:
            raise InvalidSchemeError("a range keyspace has one more shard than split points")
        if any(a >= b for a, b in itertools.pairwise(points)):
            raise InvalidSchemeError("split points must be strictly increasing")
    elif scheme.split_points:
        raise InvalidSchemeError("split points only apply to the range scheme")


class ShardMap:
    """Maps keys of one keyspace to its shards."""

    def __init__(self, keyspace: Keyspace) -> None:
        self.keyspace = keyspace
        scheme = keyspace.scheme
        self._hash: HashRangePartition | None = None
        self._ring: HashRing | None = None
        self._range: KeyRangePartition | None = None
        if scheme.kind == "hash":
            self._hash = HashRangePartition.even(scheme.shards)
        elif scheme.kind == "ring":
            names = [f"{keyspace.name}/{i}" for i in range(scheme.shards)]
            self._ring = HashRing(names, scheme.vnodes)
            self._index = {name: i for i, name in enumerate(names)}
        else:
            self._range = KeyRangePartition(list(scheme.split_points))

    def index(self, key: Key) -> int:
        if self._hash is not None:
            return self._hash.lookup(key)
        if self._ring is not None:
            return self._index[self._ring.lookup(key)]
        assert self._range is not None
        return self._range.lookup(key)

    def shard(self, key: Key) -> ShardId:
        return ShardId(self.keyspace.name, self.index(key))


@lru_cache(maxsize=256)
def shard_map(keyspace: Keyspace) -> ShardMap:
    """A cached ShardMap (keyspaces are frozen, so they are safe cache keys)."""
    return ShardMap(keyspace)
