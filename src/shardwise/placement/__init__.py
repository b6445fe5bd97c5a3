"""Where every key lives: pure, deterministic placement algorithms.

Nothing here does I/O, reads a clock or depends on ``PYTHONHASHSEED``: the same inputs
give the same placement in every process, on every machine. See ``docs/placement.md`` for
which algorithm to use when, with measured figures.
"""

from shardwise.placement.balance import Rebalance, ShardMove, balance, min_moves
from shardwise.placement.bounded import BoundedLoadRing, KeyMove
from shardwise.placement.hashing import (
    HASH_SPACE,
    Key,
    ketama_hash,
    key_bytes,
    stable_hash,
    stable_hash_batch,
)
from shardwise.placement.jump import JumpHash, jump_hash, jump_hash_batch
from shardwise.placement.maglev import Maglev
from shardwise.placement.ranges import HashRangePartition, KeyRangePartition, RangeSplit
from shardwise.placement.removal import (
    RemovalPlan,
    plan_crash,
    plan_graceful_removal,
    plan_removal,
)
from shardwise.placement.rendezvous import Rendezvous
from shardwise.placement.ring import HashRing, ring_transfers
from shardwise.placement.strategies import rendezvous_preference, ring_preference
from shardwise.placement.types import HashRange, Transfer

__all__ = [
    "HASH_SPACE",
    "BoundedLoadRing",
    "HashRange",
    "HashRangePartition",
    "HashRing",
    "JumpHash",
    "Key",
    "KeyMove",
    "KeyRangePartition",
    "Maglev",
    "RangeSplit",
    "Rebalance",
    "RemovalPlan",
    "Rendezvous",
    "ShardMove",
    "Transfer",
    "balance",
    "jump_hash",
    "jump_hash_batch",
    "ketama_hash",
    "key_bytes",
    "min_moves",
    "plan_crash",
    "plan_graceful_removal",
    "plan_removal",
    "rendezvous_preference",
    "ring_preference",
    "ring_transfers",
    "stable_hash",
    "stable_hash_batch",
]
