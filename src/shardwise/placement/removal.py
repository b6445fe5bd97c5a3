"""Plans for taking a node out of a replicated ring: graceful hand-off, or crash recovery.

With replication factor ``R`` the replicas of a key live on the first ``R`` distinct
nodes of its :meth:`~shardwise.placement.ring.HashRing.preference_list`. When a node goes,
each range it held a replica of gains one new member of its replica set (the next distinct
node clockwise); that new member must receive the range's data before it can serve it.

* **graceful**: the leaving node is alive, so it is the source of every copy; it hands its
  ranges off and only then leaves. Nothing is ever under-replicated.
* **crash**: the node is gone. Each range is re-created on its new member by copying from
  a *surviving* replica, the first one in the range's preference order. With ``R >= 2``
  every range has a survivor, so nothing is lost; with ``R = 1`` the plan names the ranges
  that are lost instead of pretending.

The planner is pure: executing the copies is the caller's business (the cluster does it
through its shard-migration machinery).
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

from shardwise.errors import (
    InvalidPlacementArgumentError,
    NotEnoughNodesError,
    UnknownNodeError,
)
from shardwise.placement.ring import HashRing
from shardwise.placement.types import HashRange, Transfer, coalesce

RemovalMode = Literal["graceful", "crash"]


@dataclass(frozen=True, slots=True)
class RemovalPlan:
    """What must happen for ``node`` to leave ``ring`` with ``replicas`` copies of each key.

    ``copies``: each range's data goes from ``source`` to ``target`` (a node that becomes a
    replica of that range). ``lost``: ranges with no surviving copy (crash with ``R = 1``).
    ``after``: the ring without the node. ``replicas_after`` is below ``replicas`` only when
    a crash leaves fewer nodes than ``R``.
    """

    node: str
    mode: RemovalMode
    replicas: int
    replicas_after: int
    copies: tuple[Transfer[str], ...]
    lost: tuple[HashRange, ...]
    after: HashRing

    @property
    def loses_data(self) -> bool:
        return bool(self.lost)


def _check_replicas(ring: HashRing, node: str, replicas: int) -> None:
    if node not in ring:
        raise UnknownNodeError(node)
    if isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 1:
        raise InvalidPlacementArgumentError(f"replicas must be a positive int, got {replicas!r}")
    if replicas > len(ring):
        raise NotEnoughNodesError(
            f"replication factor {replicas} needs {replicas} nodes, the ring has {len(ring)}"
        )


def _replica_sets(ring: HashRing, replicas: int) -> Iterator[tuple[HashRange, list[str]]]:
    """Each arc of ``ring`` with its replica set: the first ``replicas`` distinct owners."""
    owners = ring.point_owners
    count = len(owners)
    for arc, index in ring.arcs():
        found: list[str] = []
        step = 0
        while len(found) < replicas and step < count:
            owner = owners[(index + step) % count]
            if owner not in found:
                found.append(owner)
            step += 1
        yield arc, found


def _replica_set_at(points: list[int], owners: list[str], value: int, replicas: int) -> list[str]:
    start = bisect_right(points, value) % len(points)
    found: list[str] = []
    for step in range(len(points)):
        owner = owners[(start + step) % len(points)]
        if owner not in found:
            found.append(owner)
            if len(found) == replicas:
                break
    return found


def plan_removal(ring: HashRing, node: str, *, mode: RemovalMode, replicas: int) -> RemovalPlan:
    """Plan ``node``'s departure; see :func:`plan_graceful_removal` and :func:`plan_crash`."""
    if mode not in ("graceful", "crash"):
        raise InvalidPlacementArgumentError(f"unknown removal mode {mode!r}")
    _check_replicas(ring, node, replicas)
    after = ring.copy()
    after.remove(node)
    replicas_after = min(replicas, len(after))
    if mode == "graceful" and replicas_after < replicas:
        raise NotEnoughNodesError(
            f"removing {node!r} leaves {len(after)} nodes, fewer than {replicas} replicas; "
            "add a node first"
        )
    copies: list[Transfer[str]] = []
    lost: list[HashRange] = []
    after_points, after_owners = after.point_positions, after.point_owners
    # The old ring's points are a superset of the new ring's, so its arcs are fine enough
    # that each one has a single replica set before and after.
    for arc, old_set in _replica_sets(ring, replicas):
        if node not in old_set:
            continue
        new_set = (
            _replica_set_at(after_points, after_owners, arc.start, replicas_after)
            if after_points
            else []
        )
        survivors = [n for n in old_set if n != node]
        for target in new_set:
            if target in old_set:
                continue
            source = node if mode == "graceful" else (survivors[0] if survivors else None)
            if source is None:
                lost.append(arc)
            else:
                copies.append(Transfer(arc, source, target))
        if not new_set and not survivors:
            lost.append(arc)
    copies.sort(key=lambda t: (t.target, t.range.start))
    return RemovalPlan(
        node=node,
        mode=mode,
        replicas=replicas,
        replicas_after=replicas_after,
        copies=tuple(coalesce(copies)),
        lost=tuple(_merge_ranges(lost)),
        after=after,
    )


def plan_graceful_removal(ring: HashRing, node: str, replicas: int = 1) -> RemovalPlan:
    """``node`` is alive and hands each of its ranges to the range's new replica itself."""
    return plan_removal(ring, node, mode="graceful", replicas=replicas)


def plan_crash(ring: HashRing, node: str, replicas: int = 2) -> RemovalPlan:
    """``node`` is gone: re-create its replicas from surviving ones; report what is lost."""
    return plan_removal(ring, node, mode="crash", replicas=replicas)


def _merge_ranges(ranges: list[HashRange]) -> list[HashRange]:
    merged: list[HashRange] = []
    for r in sorted(ranges):
        if merged and merged[-1].end >= r.start:
            merged[-1] = HashRange(merged[-1].start, max(merged[-1].end, r.end))
        else:
            merged.append(r)
    return merged
