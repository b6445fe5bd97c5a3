"""Where a shard move stands, read from the groups' leaders' ``shard.status``: its stage
(for the progress bars of ``shardwise group join`` and the like) and, while the shard is
being copied, the phase, the bytes and the percentage.

Pure: no I/O (``admin.py`` polls the leaders, ``render.py`` draws).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from shardwise.model.config import NO_GROUP, MoveInfo, ShardId
from shardwise.shardserver.protocol import ArrivalInfo, StatusReply

STAGES: Final = ("waiting", "pulling", "installed", "done")
"""A move's stages: the target group has not reached the configuration yet; it is
pulling the shard; it serves it and the source still keeps its frozen copy; done (the
source dropped its copy)."""
DONE: Final = len(STAGES) - 1


@dataclass(frozen=True, slots=True)
class MoveState:
    move: MoveInfo
    stage: int
    note: str
    fraction: float = 0.0
    """How far into ``stage`` (the share of the shard's image copied), for the bar."""

    @property
    def done(self) -> bool:
        return self.stage == DONE


PHASES: Final = {
    "base": "copying a base",
    "frozen-wait": "base copied, waiting for the source to freeze it",
    "delta": "copying the changes since the base",
}


def copy_progress(info: ArrivalInfo) -> tuple[str, float]:
    """An arrival in words (phase, bytes, percentage) and the share done."""
    phase = PHASES.get(info.phase, info.phase)
    if info.total > 0:
        share = min(1.0, info.copied / info.total)
        return (
            f"{phase}: {human_bytes(info.copied)} of {human_bytes(info.total)} ({share:.0%})",
            share,
        )
    if info.phase == "frozen-wait":
        return f"{phase} ({human_bytes(info.copied)})", 1.0
    return f"{phase}: {human_bytes(info.copied)} so far", 0.0


def human_bytes(size: int) -> str:
    """``512 B``, ``24 KiB``, ``1.5 MiB``: two or three digits, short enough for a cell."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            if unit == "B" or value >= 10:
                return f"{value:.0f} {unit}"
            return f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _arrival_at(status: StatusReply, shard: ShardId, num: int) -> ArrivalInfo | None:
    for info in status.arrivals:
        if info.shard == shard and info.config_num == num:
            return info
    return None


def _state_at(status: StatusReply, shard: ShardId) -> str | None:
    for info in status.shards:
        if info.shard == shard:
            return info.state
    return None


def move_state(move: MoveInfo, num: int, leaders: Mapping[int, StatusReply | None]) -> MoveState:
    """Where ``move`` (made by configuration ``num``) stands, from the groups' leaders'
    reports: the target serves the shard, then the source drops its copy."""
    shard, source, target = move.shard, move.source, move.target
    if target != NO_GROUP:
        taker = leaders.get(target)
        if taker is None:
            return MoveState(move, 0, f"group {target}: no leader answers")
        arrival = _arrival_at(taker, shard, num)
        if taker.config_num < num:
            if arrival is not None:  # the pre-copy, while the source still serves it
                words, share = copy_progress(arrival)
                return MoveState(move, 0, f"pre-copy, {words}", share)
            return MoveState(
                move, 0, f"group {target} is at configuration {taker.config_num}, going to {num}"
            )
        if _state_at(taker, shard) == "pulling":
            if arrival is not None:
                words, share = copy_progress(arrival)
                return MoveState(move, 1, words, share)
            return MoveState(move, 1, f"group {target} is pulling it from group {source}")
    if source == NO_GROUP:
        return MoveState(move, DONE, "done")
    giver = leaders.get(source)
    if giver is None:
        return MoveState(move, 2, f"installed; group {source}: no leader answers")
    if giver.config_num < num:
        return MoveState(
            move, 2, f"installed; group {source} is at configuration {giver.config_num}"
        )
    if _state_at(giver, shard) in ("frozen", "garbage"):
        return MoveState(move, 2, f"installed; group {source} is dropping its copy")
    return MoveState(move, DONE, "done")
