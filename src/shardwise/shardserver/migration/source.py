"""The giving side of a shard move, on each server of the group that loses a shard: the
images it exports for the gaining group to pull (``PULL``), and what those pulls tell it
about the gaining group's pre-copy, which decides when its leader may freeze the shard.

An image is exported once and kept while it is pulled (every piece must come from the
same image; replicas' files hold the same rows but need not be byte-identical), for at
most :data:`MAX_CACHED_IMAGES` at once.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, TypeVar

import crc32c

from shardwise.errors import ShardwiseError
from shardwise.model.config import NO_GROUP, Configuration, ShardId
from shardwise.shardserver.migration.image import export_buffer, export_delta
from shardwise.shardserver.migration.owners import owner_changes
from shardwise.shardserver.protocol import PULL_CHUNK_BYTES, PullReply, PullRequest
from shardwise.shardserver.statemachine import ShardGroupStateMachine
from shardwise.shardserver.store import ShardStore

logger = logging.getLogger(__name__)

MAX_CACHED_IMAGES: Final = 4
"""Exported images (bases, frozen copies, deltas) a source keeps while others pull them."""

PRECOPY_WAIT_S: Final = 10.0
"""How long a group waits, before it logs a configuration that moves shards away, for
each gaining group to hold a base of its shard (a pre-copy), unless the gaining group
says it is still copying (then up to :data:`PRECOPY_MAX_WAIT_S`). After it, the shard
freezes anyway: the gaining group finishes its copy (from the same base image, if the
source still has it) and the shard refuses writes for longer; a group that is down
cannot hold the cluster's configuration back for more than this."""

PRECOPY_MAX_WAIT_S: Final = 120.0
"""Longest a group waits for a pre-copy that is making progress (a large shard)."""

PRECOPY_PROGRESS_S: Final = 1.0
"""How often a group copying a base tells the source it is still at it; the source stops
waiting when it has not heard so for three times this."""

MAX_PRECOPY_MARKS: Final = 4096
"""Pre-copies this server remembers having heard of (the oldest are forgotten)."""


@dataclass(frozen=True, slots=True)
class _Image:
    data: bytes | bytearray
    crc: int
    version: int
    live: bool = False
    """Taken from the shard while it serves (see ``PullReply.live``)."""


class BaseTooOldError(ShardwiseError):
    """The source cannot make a delta from this base: pull a new one."""


class ShardSource:
    """What one server of group ``gid`` gives other groups (see the module's docstring)."""

    def __init__(self, gid: int, node_id: str, state_machine: ShardGroupStateMachine) -> None:
        self._gid = gid
        self._node_id = node_id
        self._sm = state_machine
        self._images: OrderedDict[tuple[ShardId, int, str], _Image] = OrderedDict()
        self._precopied: OrderedDict[tuple[ShardId, int], None] = OrderedDict()
        """(shard, configuration): a gaining group holds a base (it asked for a delta)."""
        self._copying: OrderedDict[tuple[ShardId, int], float] = OrderedDict()
        """(shard, configuration): when a gaining group last said it is copying a base."""
        self._freeze_wait: tuple[int, float] = (0, 0.0)
        """The configuration this leader waits to log for pre-copies, and since when."""

    # --- answering pulls -----------------------------------------------------------------

    def answer(self, request: PullRequest) -> PullReply:
        """A piece of the image ``request`` asks for (the caller has checked it comes from
        a cluster node and this replica has not halted)."""
        if request.mode == "delta":
            key = (request.shard, request.config_num)
            if request.since < 0:  # still copying its base: only a sign of progress
                _remember(self._copying, key, asyncio.get_running_loop().time())
                return PullReply("not_ready")
            _remember(self._precopied, key, None)
        try:
            image = self._image(request)
        except BaseTooOldError:
            return PullReply("too_old")
        if image is None:
            return PullReply("not_ready")
        size = max(1, min(request.max_bytes, PULL_CHUNK_BYTES))
        piece = bytes(memoryview(image.data)[request.offset : request.offset + size])
        return PullReply(
            "ok",
            total=len(image.data),
            crc=image.crc,
            data=piece,
            version=image.version,
            live=image.live,
        )

    def forget(self, shard: ShardId, config_num: int) -> None:
        """Drop the images of ``shard`` for ``config_num``: its new owner installed it."""
        for key in [k for k in self._images if k[:2] == (shard, config_num)]:
            del self._images[key]

    def _image(self, request: PullRequest) -> _Image | None:
        """The image a pull asks for, made once and kept while it is being pulled (every
        piece must come from the same image): see :class:`PullRequest` for the modes."""
        sm, shard, num = self._sm, request.shard, request.config_num
        frozen = lambda: sm.frozen_store(shard, num)  # noqa: E731
        if request.mode == "frozen":
            return self._cached((shard, num, "frozen"), frozen, export_buffer)
        if request.mode == "delta":
            delta = lambda s: _or_too_old(export_delta(s, request.since))  # noqa: E731
            return self._cached((shard, num, f"delta {request.since}"), frozen, delta)
        # A base: the frozen copy if there is one (nothing will change after it), unless
        # a copy taken while the shard served is being pulled already (offset > 0).
        live = (shard, num, "live")
        if request.offset > 0 and (image := self._lookup(live)) is not None:
            return image
        image = self._cached((shard, num, "frozen"), frozen, export_buffer)
        if image is None:
            serving = lambda: sm.serving_store(shard)  # noqa: E731
            image = self._cached(live, serving, export_buffer, live=True)
        return image

    def _lookup(self, key: tuple[ShardId, int, str]) -> _Image | None:
        image = self._images.get(key)
        if image is not None:
            self._images.move_to_end(key)
        return image

    def _cached(
        self,
        key: tuple[ShardId, int, str],
        store: Callable[[], ShardStore | None],
        export: Callable[[ShardStore], bytes | bytearray],
        *,
        live: bool = False,
    ) -> _Image | None:
        image = self._lookup(key)
        if image is not None:
            return image
        source = store()
        if source is None:
            return None
        version = source.write_version  # before the export, which commits nothing new
        data = export(source)
        image = self._images[key] = _Image(data, crc32c.crc32c(data), version, live)
        while len(self._images) > MAX_CACHED_IMAGES:
            self._images.popitem(last=False)
        return image

    # --- when to freeze ------------------------------------------------------------------

    def may_freeze(self, new: Configuration) -> bool:
        """Whether the leader may log ``new`` now: every group gaining a shard from this
        one holds a base of it, or :data:`PRECOPY_WAIT_S` has passed (longer, up to
        :data:`PRECOPY_MAX_WAIT_S`, while a gaining group says it is still copying)."""
        sm = self._sm
        waiting = [
            c.shard
            for c in owner_changes(sm.config, new, self._gid)
            if c.previous == self._gid
            and c.owner != NO_GROUP
            and (c.shard, new.num) not in self._precopied
        ]
        if not waiting:
            return True
        now = asyncio.get_running_loop().time()
        if self._freeze_wait[0] != new.num:
            self._freeze_wait = (new.num, now)
        waited = now - self._freeze_wait[1]
        if waited < PRECOPY_WAIT_S:
            return False
        heard = [self._copying.get((shard, new.num), -math.inf) for shard in waiting]
        if waited < PRECOPY_MAX_WAIT_S and now - max(heard) < 3 * PRECOPY_PROGRESS_S:
            return False  # a target is still copying: freezing now would lengthen its pause
        logger.info(
            "%s: configuration %d: no pre-copy of %s after %.0f s; freezing anyway",
            self._node_id,
            new.num,
            ", ".join(map(str, waiting)),
            waited,
        )
        return True


_K = TypeVar("_K")
_V = TypeVar("_V")


def _remember(marks: OrderedDict[_K, _V], key: _K, value: _V) -> None:
    """Record ``key`` as the newest of ``marks``, forgetting the oldest past
    :data:`MAX_PRECOPY_MARKS`."""
    marks[key] = value
    marks.move_to_end(key)
    while len(marks) > MAX_PRECOPY_MARKS:
        marks.popitem(last=False)


def _or_too_old(delta: bytes | None) -> bytes:
    if delta is None:
        raise BaseTooOldError("no delta from that base")
    return delta
