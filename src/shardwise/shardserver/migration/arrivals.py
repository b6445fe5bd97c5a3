"""The shards arriving in a group through its log, on every replica: pieces of an image
(:class:`~shardwise.shardserver.commands.InstallChunk`) staged in a file, a *base* kept
aside (not serving) once complete, and the delta that brings the base up to the source's
frozen copy. The state machine decides when a piece is welcome and what a completed
arrival becomes; this module keeps the files.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from shardwise.errors import CorruptShardSnapshotError, ShardFormatError
from shardwise.model.config import ShardId
from shardwise.shardserver.commands import InstallBase, InstallChunk
from shardwise.shardserver.lifecycle import ShardState
from shardwise.shardserver.migration.staged import StagedImage
from shardwise.shardserver.store import ShardStore
from shardwise.storage.fsutil import Disk

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class Incoming:
    """A shard arriving through the log for configuration ``config_num``."""

    config_num: int
    staged: StagedImage
    """The image (of the base, then of the delta) received so far."""
    base: ShardStore | None = None
    """The base, once installed aside (not serving; its write version is the delta's
    starting point)."""


class Arrivals:
    """Shards arriving in group ``gid``, by shard; their files are named by ``path``."""

    def __init__(
        self, gid: int, path: Callable[[ShardId, str], str], disk: Disk, max_sessions: int
    ) -> None:
        self._gid = gid
        self._path = path
        self._disk = disk
        self._max_sessions = max_sessions
        self.incoming: dict[ShardId, Incoming] = {}

    def base_version(self, shard: ShardId, config_num: int) -> int | None:
        """The write version of the base held for ``shard`` gained in ``config_num``."""
        incoming = self.incoming.get(shard)
        if incoming is None or incoming.config_num != config_num or incoming.base is None:
            return None
        return incoming.base.write_version

    def received(self, shard: ShardId) -> int:
        incoming = self.incoming.get(shard)
        return incoming.staged.size if incoming is not None else 0

    def chunk(self, cmd: InstallChunk) -> bool:
        """Stage a piece (the caller has checked it is welcome)."""
        incoming = self.incoming.get(cmd.shard)
        if incoming is None or incoming.config_num != cmd.config_num:
            if cmd.offset != 0:
                return False
            incoming = self.receive(cmd.shard, cmd.config_num)
        if cmd.offset == 0:
            incoming.staged.reset()  # a new image (the base is kept)
        if cmd.offset != incoming.staged.size:
            return False  # a repeat, or a piece after a lost one: the leader resends
        incoming.staged.append(cmd.data)
        return True

    def complete(self, shard: ShardId, config_num: int, total: int, crc: int) -> Incoming | None:
        """The incoming image of ``shard`` for ``config_num`` if it is complete and
        intact; a damaged one is dropped (the leader sends it again from the start)."""
        incoming = self.incoming.get(shard)
        if incoming is None or incoming.config_num != config_num:
            return None
        if incoming.staged.size != total or incoming.staged.crc != crc:
            incoming.staged.reset()
            return None
        return incoming

    def keep_base(self, index: int, incoming: Incoming, cmd: InstallBase) -> bool:
        """Install the staged image of ``incoming`` aside as its base (replacing an older
        one), if it is a shard file of the write version the leader meant."""
        if incoming.base is not None:
            incoming.base.delete()
            incoming.base = None
        try:
            base = incoming.staged.install(
                self._path(cmd.shard, ".base"),
                shard=cmd.shard,
                applied_index=index,
                state=ShardState.PULLING.value,
                max_sessions=self._max_sessions,
                disk=self._disk,
            )
        except (ShardFormatError, CorruptShardSnapshotError) as exc:
            # Intact in transit (the CRC matched) but not a shard: the same on every replica.
            logger.warning("group %d: base of %s refused: %s", self._gid, cmd.shard, exc)
            incoming.staged.reset()
            return False
        if base.write_version != cmd.version:  # not the copy the leader meant
            base.delete()
            return False
        incoming.base = base
        return True

    def receive(self, shard: ShardId, config_num: int) -> Incoming:
        """A fresh :class:`Incoming` for ``shard`` (replacing one for another configuration)."""
        self.drop(shard)
        staged = StagedImage(self._path(shard, ".incoming"), self._disk)
        incoming = self.incoming[shard] = Incoming(config_num, staged)
        return incoming

    def drop(self, shard: ShardId) -> None:
        incoming = self.incoming.pop(shard, None)
        if incoming is not None:
            if incoming.base is not None:
                incoming.base.delete()
            incoming.staged.discard()

    def close(self) -> None:
        for incoming in self.incoming.values():
            if incoming.base is not None:
                incoming.base.close()
