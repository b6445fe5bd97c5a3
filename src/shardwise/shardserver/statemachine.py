"""A replica group's state machine: the shards it holds and the configuration it is in.

Driven only by its Raft log (see ``commands.py``), so every replica of a group holds the
same shards in the same lifecycle states at the same index:

* **Client operations** apply to a shard only while it is SERVING here in the group's
  configuration; otherwise the answer is ``wrong_group`` with the configuration number.
* **Reconfigure(n+1)** is taken only when the group is at ``n`` and pulls nothing (it has
  finished ``n``). For each shard: kept, lost (SERVING -> FROZEN, remembering the
  configuration it was lost in), gained from nobody (a new empty shard) or gained from a
  group (-> PULLING from that group's servers).
* **InstallChunk / InstallShard** bring a pulled image in through the log, in pieces, and
  serve the shard as soon as it is checked, whatever else is still moving.
* **HandOffDone** (source) deletes a frozen copy the new owner has installed;
  **AckDelivered** (target) records that the source heard so.
* **SQL.** A Reconfigure whose catalog differs brings every SERVING shard's tables to it
  (``ShardStore.sync_schema``: DDL derived from the catalog, at the same index on every
  replica); a shard created from nobody gets the new catalog's tables, and one installed
  from another group's image is brought from the tables its file records to the group's.
  A frozen copy is never changed: the new owner pulls it as it was. **SqlWrite** applies
  like a client operation, and a SQL read or write runs only if the group's catalog for
  the shard's keyspace is the one the client planned with (same digest); otherwise it is
  refused as ``behind`` (the group has yet to reach the client's configuration: ask
  again) or ``changed`` (the client's catalog is older: refresh and plan again).

**Durability.** The Raft log and snapshot are the durable record: this machine lives in
files that are a cache of them. It starts empty (its directory cleared) and is rebuilt
from the latest Raft snapshot and the log after it, which keeps replay trivially correct
through installs and deletes. A snapshot carries every shard's image.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote

import crc32c
import msgspec

from shardwise.controller.model import NO_GROUP, Configuration, ShardId, initial_configuration
from shardwise.raft.kv import KVResult
from shardwise.raft.sessions import MAX_SESSIONS
from shardwise.shardserver.commands import (
    AckDelivered,
    ClientOp,
    GroupResult,
    HandOffDone,
    InstallChunk,
    InstallShard,
    Reconfigure,
    SchemaVerdict,
    SqlWrite,
    SqlWriteResult,
    decode,
    encode_result,
)
from shardwise.shardserver.lifecycle import ShardEvent, ShardState, transition
from shardwise.shardserver.sqlshard import schema_digest
from shardwise.shardserver.store import MAX_SCAN_ROWS, ShardStore
from shardwise.storage.fsutil import CacheDisk

logger = logging.getLogger(__name__)

SNAPSHOT_VERSION: Final = 1

_S, _E = ShardState, ShardEvent


@dataclass(slots=True)
class ShardRecord:
    """What the group knows about one shard it holds or is pulling."""

    state: ShardState
    store: ShardStore | None = None
    frozen_at: int = 0
    """The configuration this group lost the shard in, while it keeps the frozen copy for
    the new owner to pull (0: no frozen copy here)."""
    pull_config: int = 0
    """While PULLING: the configuration the shard is gained in."""
    pull_from: tuple[str, ...] = ()
    """While PULLING: the servers of the group that owned it before."""
    staging: bytearray = field(default_factory=bytearray)
    """While PULLING: the image received so far through the log."""


class _ShardSnapshot(msgspec.Struct, frozen=True, array_like=True):
    shard: ShardId
    state: str
    frozen_at: int
    pull_config: int
    pull_from: tuple[str, ...]
    staging: bytes
    image: bytes | None


class _Owed(msgspec.Struct, frozen=True, array_like=True):
    shard: ShardId
    config_num: int
    servers: tuple[str, ...]


class _Snapshot(msgspec.Struct, frozen=True, array_like=True):
    version: int
    gid: int
    config: Configuration
    shards: list[_ShardSnapshot]
    owed: list[_Owed]


@dataclass(frozen=True, slots=True)
class Pull:
    """A shard the leader must fetch: from ``servers``, frozen in ``config_num``."""

    shard: ShardId
    config_num: int
    servers: tuple[str, ...]
    received: int


@dataclass(frozen=True, slots=True)
class Read:
    """A read's answer: ``value`` when the shard serves here, else the configuration."""

    serving: bool
    config_num: int
    value: str | None = None
    items: list[tuple[str, str]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class SqlRead:
    """A SQL read's answer: the rows when the shard serves here with the client's tables;
    else the configuration and why not."""

    serving: bool
    config_num: int
    schema: SchemaVerdict = ""
    rows: list[tuple[Any, ...]] = field(default_factory=list)


_snapshot_decoder = msgspec.msgpack.Decoder(_Snapshot)
_encode = msgspec.msgpack.Encoder().encode


class ShardGroupStateMachine:
    """The replicated state of replica group ``gid``, kept under ``directory``."""

    def __init__(self, gid: int, directory: Path, *, max_sessions: int = MAX_SESSIONS) -> None:
        if gid <= NO_GROUP:
            raise ValueError(f"group ids are positive, not {gid}")
        self.gid = gid
        self.directory = directory
        self._max_sessions = max_sessions
        self._disk = CacheDisk()  # the files are a cache of the log: see the docstring
        self._batch: list[ShardStore] = []
        """Stores written in the batch the host is applying (see :meth:`end_batch`)."""
        self._applied = 0
        self.config = initial_configuration()
        self.shards: dict[ShardId, ShardRecord] = {}
        self.owed: dict[tuple[ShardId, int], _Owed] = {}
        """Hand-offs to confirm to their source groups, by shard and configuration: a
        shard can come back (and be owed again) before an older hand-off is confirmed."""
        self._digests: dict[str, int] = {}
        """Schema digests of the current configuration, by keyspace (made on demand)."""
        self._clear_directory()

    # --- the StateMachine protocol -------------------------------------------------------

    def applied_index(self) -> int:
        return self._applied

    def apply(self, index: int, command: bytes) -> bytes:
        decoded = decode(command)  # raises before anything changes
        self._applied = index
        if isinstance(decoded, ClientOp):
            return encode_result(self._client_op(index, decoded))
        if isinstance(decoded, SqlWrite):
            return encode_result(self._sql_write(index, decoded))
        if isinstance(decoded, Reconfigure):
            done = self._reconfigure(index, decoded.config)
        elif isinstance(decoded, InstallChunk):
            done = self._install_chunk(decoded)
        elif isinstance(decoded, InstallShard):
            done = self._install(index, decoded)
        elif isinstance(decoded, HandOffDone):
            done = self._hand_off_done(decoded)
        else:
            done = self._ack_delivered(decoded)
        return encode_result(GroupResult("ok" if done else "ignored", self.config.num))

    def end_batch(self) -> None:
        """The host applied a batch of entries: commit each shard's writes at once."""
        batch, self._batch = self._batch, []
        for store in batch:
            store.end_batch()

    def snapshot(self) -> bytes:
        shards = [
            _ShardSnapshot(
                shard,
                record.state.value,
                record.frozen_at,
                record.pull_config,
                record.pull_from,
                bytes(record.staging),
                record.store.export() if record.store is not None else None,
            )
            for shard, record in sorted(self.shards.items())
        ]
        owed = [self.owed[k] for k in sorted(self.owed)]
        return _encode(_Snapshot(SNAPSHOT_VERSION, self.gid, self.config, shards, owed))

    def restore(self, data: bytes, index: int) -> None:
        snap = _snapshot_decoder.decode(data)
        if snap.version != SNAPSHOT_VERSION or snap.gid != self.gid:
            raise ValueError(f"snapshot of version {snap.version}, group {snap.gid}")
        self.close()
        self._clear_directory()
        self.config = snap.config
        self.shards = {}
        for s in snap.shards:
            record = ShardRecord(
                ShardState(s.state),
                frozen_at=s.frozen_at,
                pull_config=s.pull_config,
                pull_from=s.pull_from,
                staging=bytearray(s.staging),
            )
            if s.image is not None:
                record.store = ShardStore.install(
                    self._path(s.shard),
                    s.image,
                    shard=s.shard,
                    applied_index=index,
                    max_sessions=self._max_sessions,
                    disk=self._disk,
                )
            self.shards[s.shard] = record
        self.owed = {(o.shard, o.config_num): o for o in snap.owed}
        self._digests = {}
        self._applied = index

    def close(self) -> None:
        for record in self.shards.values():
            if record.store is not None:
                record.store.close()

    # --- what the server asks ------------------------------------------------------------

    def serves(self, shard: ShardId) -> bool:
        record = self.shards.get(shard)
        return record is not None and record.state is _S.SERVING and self._owns(shard)

    def read(self, shard: ShardId, key: str) -> Read:
        record = self.shards.get(shard)
        if record is None or record.store is None or not self.serves(shard):
            return Read(False, self.config.num)
        return Read(True, self.config.num, value=record.store.get(key))

    def scan(
        self,
        shard: ShardId,
        prefix: str | None,
        start: str | None,
        end: str | None,
        limit: int,
    ) -> Read:
        record = self.shards.get(shard)
        if record is None or record.store is None or not self.serves(shard):
            return Read(False, self.config.num)
        limit = min(limit, MAX_SCAN_ROWS)
        return Read(
            True,
            self.config.num,
            items=record.store.scan(prefix, start=start, end=end, limit=limit),
        )

    def sql_read(
        self,
        shard: ShardId,
        *,
        catalog_num: int,
        schema: int,
        sql: str,
        params: Mapping[str, Any],
        max_rows: int,
    ) -> SqlRead:
        """A read fragment on ``shard`` (raises ``SqlError`` if it fails or passes a
        bound), if the shard serves here with the tables the client planned with."""
        record = self.shards.get(shard)
        if record is None or record.store is None or not self.serves(shard):
            return SqlRead(False, self.config.num)
        verdict = self.schema_verdict(shard.keyspace, catalog_num, schema)
        if verdict:
            return SqlRead(True, self.config.num, verdict)
        return SqlRead(True, self.config.num, rows=record.store.read_sql(sql, params, max_rows))

    def schema_digest(self, keyspace: str) -> int:
        """The digest of ``keyspace``'s tables in the group's configuration."""
        digest = self._digests.get(keyspace)
        if digest is None:
            digest = self._digests[keyspace] = schema_digest(self.config.tables, keyspace)
        return digest

    def schema_verdict(self, keyspace: str, catalog_num: int, schema: int) -> SchemaVerdict:
        """How the group's tables of ``keyspace`` compare with those of a client that
        planned with configuration ``catalog_num`` (schema digest ``schema``)."""
        if self.schema_digest(keyspace) == schema:
            return ""
        return "behind" if self.config.num < catalog_num else "changed"

    def pulls(self) -> list[Pull]:
        """Shards this group is pulling (what its leader must fetch)."""
        return [
            Pull(shard, r.pull_config, r.pull_from, len(r.staging))
            for shard, r in sorted(self.shards.items())
            if r.state is _S.PULLING
        ]

    def owed_acks(self) -> list[_Owed]:
        return [self.owed[k] for k in sorted(self.owed)]

    def frozen_store(self, shard: ShardId, config_num: int) -> ShardStore | None:
        """The copy of ``shard`` frozen when this group lost it in ``config_num``."""
        record = self.shards.get(shard)
        if record is None or record.frozen_at != config_num or record.frozen_at == 0:
            return None
        return record.store

    def finished(self) -> bool:
        """Whether every shard gained in the current configuration is installed."""
        return all(r.state is not _S.PULLING for r in self.shards.values())

    def held(self) -> Iterator[tuple[ShardId, ShardRecord]]:
        yield from sorted(self.shards.items())

    # --- applying ------------------------------------------------------------------------

    def _owns(self, shard: ShardId) -> bool:
        owners = self.config.owners.get(shard.keyspace)
        return (
            owners is not None
            and 0 <= shard.index < len(owners)
            and owners[shard.index] == self.gid
        )

    def _client_op(self, index: int, cmd: ClientOp) -> GroupResult:
        record = self.shards.get(cmd.shard)
        if record is None or record.store is None or not self.serves(cmd.shard):
            return GroupResult("wrong_group", self.config.num)
        if record.store not in self._batch:
            record.store.begin_batch()
            self._batch.append(record.store)
        result: KVResult | None = record.store.apply(index, cmd.client_id, cmd.seq, cmd.op)
        return GroupResult("ok", self.config.num, result)

    def _sql_write(self, index: int, cmd: SqlWrite) -> GroupResult:
        record = self.shards.get(cmd.shard)
        if record is None or record.store is None or not self.serves(cmd.shard):
            return GroupResult("wrong_group", self.config.num)
        verdict = self.schema_verdict(cmd.shard.keyspace, cmd.catalog_num, cmd.schema)
        if record.store not in self._batch:
            record.store.begin_batch()
            self._batch.append(record.store)
        sql: SqlWriteResult | None = record.store.apply_sql(
            index, cmd.client_id, cmd.seq, cmd.statements, verdict
        )
        return GroupResult("ok", self.config.num, sql=sql)

    def _reconfigure(self, index: int, new: Configuration) -> bool:
        old = self.config
        if new.num != old.num + 1 or not self.finished():
            return False  # stale, repeated, or the group has not finished ``old`` yet
        for keyspace, owners in new.owners.items():
            before = old.owners.get(keyspace, ())
            for i, owner in enumerate(owners):
                shard = ShardId(keyspace, i)
                previous = before[i] if i < len(before) else NO_GROUP
                if previous == self.gid and owner != self.gid:
                    self._lose(shard, new.num)
                elif previous != self.gid and owner == self.gid:
                    if previous == NO_GROUP:
                        self._create(index, shard)
                    else:
                        self._gain(shard, new.num, old.groups.get(previous, ()))
        self.config = new
        self._digests = {}
        # The SQL tables of every shard served in ``new`` (kept or just created), from
        # the catalog each records to ``new``'s. Frozen copies stay as they were frozen.
        # (Usually a no-op: only catalog changes change anything, and they move nothing.)
        for shard, record in sorted(self.shards.items()):
            if record.state is _S.SERVING and record.store is not None:
                self._sync_schema(index, shard, record.store)
        return True

    def _sync_schema(self, index: int, shard: ShardId, store: ShardStore) -> None:
        for failure in store.sync_schema(index, self.config.tables):
            # Deterministic (the same on every replica), e.g. a unique index over rows
            # that repeat a value: that shard goes on without it rather than halt.
            logger.warning("group %d, shard %s: DDL skipped: %s", self.gid, shard, failure)

    def _lose(self, shard: ShardId, config_num: int) -> None:
        record = self.shards[shard]
        record.state = transition(record.state, _E.LOSE)
        record.frozen_at = config_num
        if record.store is not None:
            record.store.set_state(self._applied, record.state.value)

    def _create(self, index: int, shard: ShardId) -> None:
        old = self.shards.pop(shard, None)
        state = transition(old.state if old is not None else _S.ABSENT, _E.GAIN_FROM_NOBODY)
        if old is not None and old.store is not None:
            old.store.delete()
        path = self._path(shard)
        store = ShardStore.create(
            path,
            shard,
            state=state.value,
            index=index,
            max_sessions=self._max_sessions,
            disk=self._disk,
        )
        self.shards[shard] = ShardRecord(state, store)

    def _gain(self, shard: ShardId, config_num: int, servers: tuple[str, ...]) -> None:
        record = self.shards.setdefault(shard, ShardRecord(_S.ABSENT))
        record.state = transition(record.state, _E.GAIN)
        record.pull_config = config_num
        record.pull_from = servers
        record.staging = bytearray()

    def _install_chunk(self, cmd: InstallChunk) -> bool:
        record = self._pulling(cmd.shard, cmd.config_num)
        if record is None:
            return False
        if cmd.offset == 0:
            record.staging = bytearray()
        if cmd.offset != len(record.staging):
            return False  # a repeat, or a piece after a lost one: the leader resends
        record.staging += cmd.data
        return True

    def _install(self, index: int, cmd: InstallShard) -> bool:
        record = self._pulling(cmd.shard, cmd.config_num)
        if record is None:
            return False
        image = bytes(record.staging)
        if len(image) != cmd.total or crc32c.crc32c(image) != cmd.crc:
            record.staging = bytearray()  # the leader fetches it again from the start
            return False
        if record.store is not None:
            record.store.close()  # a frozen copy from before: superseded by the image
        state = transition(record.state, _E.INSTALLED)
        record.store = ShardStore.install(
            self._path(cmd.shard),
            image,
            shard=cmd.shard,
            applied_index=index,
            state=state.value,
            max_sessions=self._max_sessions,
            disk=self._disk,
        )
        record.state = state
        record.frozen_at = 0
        record.staging = bytearray()
        # The image's tables are those of the configuration it was frozen in: bring them
        # to this group's (a no-op unless the catalog changed in the same configuration).
        self._sync_schema(index, cmd.shard, record.store)
        self.owed[(cmd.shard, cmd.config_num)] = _Owed(cmd.shard, cmd.config_num, record.pull_from)
        record.pull_from = ()
        return True

    def _hand_off_done(self, cmd: HandOffDone) -> bool:
        record = self.shards.get(cmd.shard)
        if record is None or record.frozen_at != cmd.config_num:
            return False  # already deleted, or a hand-off of an older loss
        record.frozen_at = 0
        if record.state is _S.FROZEN:
            record.state = transition(transition(record.state, _E.HANDED_OFF), _E.DELETED)
            del self.shards[cmd.shard]
        if record.store is not None:
            record.store.delete()
            record.store = None
        return True

    def _ack_delivered(self, cmd: AckDelivered) -> bool:
        owed = self.owed.get((cmd.shard, cmd.config_num))
        if owed is None:
            return False
        del self.owed[(cmd.shard, cmd.config_num)]
        return True

    def _pulling(self, shard: ShardId, config_num: int) -> ShardRecord | None:
        record = self.shards.get(shard)
        if record is None or record.state is not _S.PULLING or record.pull_config != config_num:
            return None
        return record

    # --- files ---------------------------------------------------------------------------

    def _path(self, shard: ShardId) -> str:
        return os.fspath(self.directory / f"{quote(shard.keyspace, safe='')}.{shard.index}.db")

    def _clear_directory(self) -> None:
        """Files of an earlier incarnation are a cache of the log: drop them (see the
        module's docstring)."""
        if self.directory.exists():
            shutil.rmtree(self.directory)
        self.directory.mkdir(parents=True)
