"""A replica group's state machine: the shards it holds and the configuration it is in.

Driven only by its Raft log (see ``commands.py``), so every replica of a group holds the
same shards in the same lifecycle states at the same index:

* **Client operations** apply to a shard only while it is SERVING here in the group's
  configuration; otherwise the answer is ``wrong_group`` with the configuration number.
* **Reconfigure(n+1)** is taken only when the group is at ``n`` and pulls nothing (it has
  finished ``n``). For each shard: kept, lost (SERVING -> FROZEN, remembering the
  configuration it was lost in), gained from nobody (a new empty shard) or gained from a
  group (-> PULLING from that group's servers).
* **InstallChunk / InstallBase / InstallDelta** bring a pulled shard in through the log,
  in pieces: first a *base* (a copy the source may have taken while it still served the
  shard, possibly before this group has even moved to the configuration that gains it),
  kept aside, not serving; then the *delta* from the base to the source's frozen copy,
  which is applied to the base, and the shard serves at once, whatever else is still
  moving. (**InstallShard**, a whole frozen image in one go, is still applied for logs
  written before the pre-copy.)
* **HandOffDone** (source) deletes a frozen copy the new owner has installed;
  **AckDelivered** (target) records that the source heard so.
* **Clients' writes** (``writes.py``): KV operations, SQL write batches and transactions'
  commands, each applied to a shard only while it serves here.
* **SQL.** Applying a Reconfigure or an install brings each SERVING shard's tables to
  the group's catalog (``ShardStore.sync_schema``); a frozen copy is never changed.
  **SqlWrite** applies like a client operation, and a SQL read or write runs only with
  the tables the client planned with, else it is refused as ``behind`` or ``changed``
  (see DESIGN.md, "SQL on a shard").

**Durability.** The Raft log and snapshot are the durable record: this machine lives in
files that are a cache of them. It starts empty (its directory cleared) and is rebuilt
from the latest Raft snapshot and the log after it, which keeps replay trivially correct
through installs and deletes. A snapshot carries every shard's image.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from shardwise.errors import (
    CommandDecodeError,
    CommandVersionError,
    CorruptShardSnapshotError,
    ShardFormatError,
)
from shardwise.model.config import NO_GROUP, Configuration, ShardId, initial_configuration
from shardwise.model.kv import MAX_SCAN_ROWS, Key, Value
from shardwise.model.sql import SqlStatement
from shardwise.raft.client_sessions import MAX_SESSIONS
from shardwise.shardserver.checks import ShardChecks
from shardwise.shardserver.commands import (
    AckDelivered,
    CheckShards,
    ClientBatch,
    ClientOp,
    GroupResult,
    HandOffDone,
    InstallBase,
    InstallChunk,
    InstallDelta,
    InstallShard,
    Reconfigure,
    SqlWrite,
    decode,
    encode_result,
)
from shardwise.shardserver.groupsnapshot import (
    SNAPSHOT_VERSION,
    GroupSnapshot,
    IncomingSnapshot,
    OwedHandOff,
    ShardSnapshot,
    as_bytes,
    decode_snapshot,
    encode_snapshot,
)
from shardwise.shardserver.lifecycle import ShardEvent, ShardState, transition
from shardwise.shardserver.migration.arrivals import Arrivals, Incoming
from shardwise.shardserver.migration.image import apply_delta, export_buffer, install_image
from shardwise.shardserver.migration.owners import owner_changes
from shardwise.shardserver.protocol import SchemaVerdict, schema_digest
from shardwise.shardserver.store import ShardStore
from shardwise.shardserver.writes import TxnCommand, WriteApplier
from shardwise.sql.shipped import ShippedTable
from shardwise.storage.fsutil import CacheDisk

logger = logging.getLogger(__name__)

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


@dataclass(frozen=True, slots=True)
class Pull:
    """A shard the leader must fetch: from ``servers``, frozen in ``config_num``."""

    shard: ShardId
    config_num: int
    servers: tuple[str, ...]
    received: int
    base_version: int | None = None
    """The write version of the base the group holds for it (None: no base yet)."""


@dataclass(frozen=True, slots=True)
class Read:
    """A read's answer: ``value`` when the shard serves here, else the configuration."""

    serving: bool
    config_num: int
    value: Value | None = None
    items: list[tuple[Key, Value]] = field(default_factory=list)
    locked: str = ""
    """A prepared transaction writes what the read would see: ask again once it resolves."""
    version: int = 0
    """For a transaction's read: the key's version (negative: absent)."""


@dataclass(frozen=True, slots=True)
class SqlRead:
    """A SQL read's answer: the rows when the shard serves here with the client's tables;
    else the configuration and why not."""

    serving: bool
    config_num: int
    schema: SchemaVerdict = ""
    rows: list[tuple[Any, ...]] = field(default_factory=list)
    locked: str = ""
    """A prepared transaction writes the shard's tables (its id): the read waits."""


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
        self.arrivals = Arrivals(gid, self._path, self._disk, max_sessions)
        """Shards arriving through the log."""
        self.owed: dict[tuple[ShardId, int], OwedHandOff] = {}
        """Hand-offs to confirm to their source groups, by shard and configuration: a
        shard can come back (and be owed again) before an older hand-off is confirmed."""
        self._digests: dict[str, int] = {}
        """Schema digests of the current configuration, by keyspace (made on demand)."""
        self.checks = ShardChecks()  # the consistency checks' digests (``checks.py``)
        self.writes = WriteApplier(
            self._writable, self.serving_stores, lambda: self.config.num, self.schema_verdict
        )
        self._clear_directory()

    # --- the StateMachine protocol -------------------------------------------------------

    def applied_index(self) -> int:
        return self._applied

    def apply(self, index: int, command: bytes) -> bytes:
        try:
            decoded = decode(command)  # raises before anything changes
        except CommandVersionError:
            raise  # newer than this code: halt (see commands.py)
        except CommandDecodeError as exc:
            # The same bytes on every replica: the same answer, and nothing changes.
            self._applied = index
            return encode_result(GroupResult("failed", self.config.num, error=str(exc)))
        self._applied = index
        if isinstance(decoded, ClientOp):
            return encode_result(self.writes.client_op(index, decoded))
        if isinstance(decoded, ClientBatch):
            return encode_result(self.writes.client_batch(index, decoded))
        if isinstance(decoded, SqlWrite):
            return encode_result(self.writes.sql_write(index, decoded))
        if isinstance(decoded, TxnCommand):
            return encode_result(self.writes.txn(index, decoded))
        if isinstance(decoded, CheckShards):
            self.checks.take(index, self, decoded.shards)
            return encode_result(GroupResult("ok", self.config.num, index=index))
        if isinstance(decoded, Reconfigure):
            done = self._reconfigure(index, decoded.config)
        elif isinstance(decoded, InstallChunk):
            done = self._install_chunk(decoded)
        elif isinstance(decoded, InstallBase):
            done = self._install_base(index, decoded)
        elif isinstance(decoded, InstallDelta):
            done = self._install_delta(index, decoded)
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
            ShardSnapshot(
                shard,
                record.state.value,
                record.frozen_at,
                record.pull_config,
                record.pull_from,
                b"",  # staging moved to ``incoming``; the field stays for older snapshots
                as_bytes(export_buffer(record.store)) if record.store is not None else None,
            )
            for shard, record in sorted(self.shards.items())
        ]
        owed = [self.owed[k] for k in sorted(self.owed)]
        incoming = [
            IncomingSnapshot(
                shard,
                inc.config_num,
                inc.staged.read(),
                as_bytes(export_buffer(inc.base)) if inc.base is not None else None,
            )
            for shard, inc in sorted(self.incoming.items())
        ]
        snap = GroupSnapshot(SNAPSHOT_VERSION, self.gid, self.config, shards, owed, incoming)
        return encode_snapshot(snap)

    def restore(self, data: bytes, index: int) -> None:
        snap = decode_snapshot(data)
        if snap.version != SNAPSHOT_VERSION or snap.gid != self.gid:
            raise ValueError(f"snapshot of version {snap.version}, group {snap.gid}")
        self.close()
        self._clear_directory()
        self.config = snap.config
        self.shards = {}
        self.arrivals.incoming.clear()
        for s in snap.shards:
            record = ShardRecord(
                ShardState(s.state),
                frozen_at=s.frozen_at,
                pull_config=s.pull_config,
                pull_from=s.pull_from,
            )
            if s.staging:  # a snapshot from before ``incoming``
                self.arrivals.receive(s.shard, s.pull_config).staged.append(s.staging)
            if s.image is not None:
                record.store = install_image(
                    self._path(s.shard),
                    s.image,
                    shard=s.shard,
                    applied_index=index,
                    max_sessions=self._max_sessions,
                    disk=self._disk,
                )
            self.shards[s.shard] = record
        for i in snap.incoming:
            incoming = self.arrivals.receive(i.shard, i.config_num)
            incoming.staged.append(i.staging)
            if i.base is not None:
                incoming.base = install_image(
                    self._path(i.shard, ".base"),
                    i.base,
                    shard=i.shard,
                    applied_index=index,
                    max_sessions=self._max_sessions,
                    disk=self._disk,
                )
        self.owed = {(o.shard, o.config_num): o for o in snap.owed}
        self._digests = {}
        self._applied = index

    def reset(self) -> None:
        """Back to a new, empty state, its files dropped, to be fed the log again: how the
        host rebuilds it after a write of its failed for want of room (it may have been
        rolled back part-way: raft/hosting/diskfull.py)."""
        self.close()
        fresh = ShardGroupStateMachine(self.gid, self.directory, max_sessions=self._max_sessions)
        self.__dict__.update(fresh.__dict__)

    def close(self) -> None:
        for record in self.shards.values():
            if record.store is not None:
                record.store.close()
        self.arrivals.close()
        self.checks.close()

    # --- what the server asks ------------------------------------------------------------

    @property
    def incoming(self) -> dict[ShardId, Incoming]:
        """Shards arriving through the log, by shard."""
        return self.arrivals.incoming

    def serves(self, shard: ShardId) -> bool:
        record = self.shards.get(shard)
        return record is not None and record.state is _S.SERVING and self._owns(shard)

    def read(self, shard: ShardId, key: Key) -> Read:
        record = self.shards.get(shard)
        if record is None or record.store is None or not self.serves(shard):
            return Read(False, self.config.num)
        locker = record.store.locked(key, write=False)
        if locker is not None:
            return Read(True, self.config.num, locked=locker)
        return Read(True, self.config.num, value=record.store.get(key))

    def versioned_read(self, shard: ShardId, key: Key) -> Read:
        """A transaction's read: the value and its version (see ``model/txn.py``)."""
        record = self.shards.get(shard)
        if record is None or record.store is None or not self.serves(shard):
            return Read(False, self.config.num)
        locker = record.store.locked(key, write=False)
        if locker is not None:
            return Read(True, self.config.num, locked=locker)
        value, version = record.store.versioned(key)
        return Read(True, self.config.num, value=value, version=version)

    def scan(
        self,
        shard: ShardId,
        prefix: Key | None,
        start: Key | None,
        end: Key | None,
        limit: int,
    ) -> Read:
        record = self.shards.get(shard)
        if record is None or record.store is None or not self.serves(shard):
            return Read(False, self.config.num)
        limit = min(limit, MAX_SCAN_ROWS)
        locker = record.store.locked_in_range(prefix, start, end)
        if locker is not None:
            return Read(True, self.config.num, locked=locker)
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
        shipped: Sequence[ShippedTable] = (),
        bounds: tuple[int, float] | None = None,
    ) -> SqlRead:
        """A read fragment on ``shard`` (raises ``SqlError`` if it fails or passes a
        bound), if the shard serves here with the tables the client planned with.
        ``bounds``: its reply's bytes and its seconds, if less than a lone read's."""
        record = self.shards.get(shard)
        if record is None or record.store is None or not self.serves(shard):
            return SqlRead(False, self.config.num)
        verdict = self.schema_verdict(shard.keyspace, catalog_num, schema)
        if verdict:
            return SqlRead(True, self.config.num, verdict)
        if locker := record.store.sql_locked(write=False):
            return SqlRead(True, self.config.num, locked=locker)
        rows = record.store.read_sql(sql, params, max_rows, shipped, bounds)
        return SqlRead(True, self.config.num, rows=rows)

    def refused_sql(self, shard: ShardId, statements: Sequence[SqlStatement]) -> str:
        """Why a SQL write to ``shard`` is refused before it is proposed ("" if it is
        not, or if the shard does not serve here: the apply answers that)."""
        store = self.serving_store(shard)
        return store.refused_sql(statements) if store is not None else ""

    def time_trial(
        self, shard: ShardId, statements: Sequence[SqlStatement], max_seconds: float
    ) -> str:
        """Why the leader refuses a SQL write for taking too long ("" if it does not, or
        if the shard does not serve here)."""
        store = self.serving_store(shard)
        return store.time_trial(statements, max_seconds) if store is not None else ""

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
        pulls = []
        for shard, r in sorted(self.shards.items()):
            if r.state is _S.PULLING:
                received = self.arrivals.received(shard)
                base = self.base_version(shard, r.pull_config)
                pulls.append(Pull(shard, r.pull_config, r.pull_from, received, base))
        return pulls

    def base_version(self, shard: ShardId, config_num: int) -> int | None:
        """The write version of the base held for ``shard`` gained in ``config_num``."""
        return self.arrivals.base_version(shard, config_num)

    def owed_acks(self) -> list[OwedHandOff]:
        return [self.owed[k] for k in sorted(self.owed)]

    def serving_stores(self) -> list[ShardStore]:
        """The stores of the shards serving here."""
        return [r.store for s, r in self.shards.items() if r.store is not None and self.serves(s)]

    def serving_store(self, shard: ShardId) -> ShardStore | None:
        """The store of ``shard`` if it serves here (what a pre-copy takes a base of)."""
        record = self.shards.get(shard)
        return record.store if record is not None and self.serves(shard) else None

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

    def _writable(self, shard: ShardId) -> ShardStore | None:
        """``shard``'s store if it serves here, in the batch being applied."""
        record = self.shards.get(shard)
        if record is None or record.store is None or not self.serves(shard):
            return None
        if record.store not in self._batch:
            record.store.begin_batch()
            self._batch.append(record.store)
        return record.store

    def _reconfigure(self, index: int, new: Configuration) -> bool:
        old = self.config
        if new.num != old.num + 1 or not self.finished() or self.writes.tables_held(old, new):
            return False  # stale, repeated, not finished with ``old``, or held (writes.py)
        for change in owner_changes(old, new, self.gid):
            if change.previous == self.gid:
                self._lose(change.shard, new.num)
            elif change.previous == NO_GROUP:
                self._create(index, change.shard)
            else:
                self._gain(change.shard, new.num, old.groups.get(change.previous, ()))
        self.config = new
        self._digests = {}
        for shard, incoming in sorted(self.incoming.items()):
            # A base taken ahead for ``new`` stays if ``new`` gains the shard; anything
            # else for ``new`` or before will never be installed.
            if incoming.config_num <= new.num and self._pulling(shard, incoming.config_num) is None:
                self.arrivals.drop(shard)
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

    def _install_chunk(self, cmd: InstallChunk) -> bool:
        if not self._may_receive(cmd.shard, cmd.config_num):
            return False
        return self.arrivals.chunk(cmd)

    def _install_base(self, index: int, cmd: InstallBase) -> bool:
        incoming = self.arrivals.complete(cmd.shard, cmd.config_num, cmd.total, cmd.crc)
        if incoming is None or not self._may_receive(cmd.shard, cmd.config_num):
            return False
        return self.arrivals.keep_base(index, incoming, cmd)

    def _install_delta(self, index: int, cmd: InstallDelta) -> bool:
        record = self._pulling(cmd.shard, cmd.config_num)
        incoming = self.arrivals.complete(cmd.shard, cmd.config_num, cmd.total, cmd.crc)
        if record is None or incoming is None or incoming.base is None:
            return False
        state = transition(record.state, _E.INSTALLED)
        try:
            apply_delta(incoming.base, index, incoming.staged.read(), state=state.value)
        except (ShardFormatError, CorruptShardSnapshotError) as exc:
            # The same on every replica (the same bytes): start again from a new base.
            logger.warning("group %d: delta for %s refused: %s", self.gid, cmd.shard, exc)
            self.arrivals.drop(cmd.shard)
            return False
        if record.store is not None:
            record.store.close()  # a frozen copy from before: superseded by the new one
        record.store = incoming.base.moved_to(self._path(cmd.shard))
        incoming.base = None
        self.arrivals.drop(cmd.shard)
        self._installed(index, cmd.shard, cmd.config_num, record, state)
        return True

    def _install(self, index: int, cmd: InstallShard) -> bool:
        record = self._pulling(cmd.shard, cmd.config_num)
        incoming = self.arrivals.complete(cmd.shard, cmd.config_num, cmd.total, cmd.crc)
        if record is None or incoming is None:
            return False
        if record.store is not None:
            record.store.close()  # a frozen copy from before: superseded by the image
        state = transition(record.state, _E.INSTALLED)
        record.store = incoming.staged.install(
            self._path(cmd.shard),
            shard=cmd.shard,
            applied_index=index,
            state=state.value,
            max_sessions=self._max_sessions,
            disk=self._disk,
        )
        self.arrivals.drop(cmd.shard)
        self._installed(index, cmd.shard, cmd.config_num, record, state)
        return True

    def _installed(
        self, index: int, shard: ShardId, config_num: int, record: ShardRecord, state: ShardState
    ) -> None:
        assert record.store is not None
        record.state = state
        record.frozen_at = 0
        # The image's tables are those of the configuration it was frozen in: bring them
        # to this group's (a no-op unless the catalog changed in the same configuration).
        self._sync_schema(index, shard, record.store)
        self.owed[(shard, config_num)] = OwedHandOff(shard, config_num, record.pull_from)
        record.pull_from = ()

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

    def _may_receive(self, shard: ShardId, config_num: int) -> bool:
        """Whether pieces of ``shard`` for ``config_num`` are welcome: it is being pulled
        for it, or it is the group's next configuration (a pre-copy; if that
        configuration does not gain the shard, its Reconfigure drops the piece)."""
        return self._pulling(shard, config_num) is not None or config_num == self.config.num + 1

    def _pulling(self, shard: ShardId, config_num: int) -> ShardRecord | None:
        record = self.shards.get(shard)
        if record is None or record.state is not _S.PULLING or record.pull_config != config_num:
            return None
        return record

    # --- files ---------------------------------------------------------------------------

    def _path(self, shard: ShardId, kind: str = "") -> str:
        name = f"{quote(shard.keyspace, safe='')}.{shard.index}{kind}.db"
        return os.fspath(self.directory / name)

    def _clear_directory(self) -> None:
        """Files of an earlier incarnation are a cache of the log: drop them (see the
        module's docstring)."""
        if self.directory.exists():
            shutil.rmtree(self.directory)
        self.directory.mkdir(parents=True)
