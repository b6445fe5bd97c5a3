"""The storage of one shard: its own SQLite database file.

A shard is one file, so a snapshot is a consistent copy of it, a hand-off ships it and
garbage collection deletes it. Its tables: ``kv`` (``str`` keys and values; SQLite's binary
collation orders UTF-8 bytes as Python orders ``str``), ``sessions`` (client de-duplication,
as :class:`~shardwise.raft.sessions.SessionTable`) and ``meta`` (``format_version``,
``shard``, ``state``: the lifecycle state's name, opaque here, ``applied_index``, and
``sql_tables``: the catalog tables the SQL schema reflects; ``gone_horizon`` and
``sql_changed_at``: see below). Distributed SQL tables live
beside them as ``sql_<name>`` (see ``sqlshard.py``); only SQL fragments touch them, and
fragments touch nothing else. The de-duplication state moves with the shard (KV and SQL
writes share it): :meth:`ShardStore.export` carries it, and there is no separate export
of sessions.

**Idempotent replay.** Every change (:meth:`ShardStore.apply`, :meth:`ShardStore.set_state`)
writes its Raft log index as ``applied_index`` in the same transaction; a change at an index
at or below it is skipped, so after a crash each shard takes exactly what it had not committed.

**Durability.** The database runs in WAL mode with ``synchronous=NORMAL``: a commit is not
fsynced, so a power loss may lose the last commits, never corrupt the file, and the lost
commits take their ``applied_index`` with them. The Raft log (fsynced before an entry
commits) is the durable record and replays them. The group must therefore keep its log
back to each shard's durable applied index: :meth:`ShardStore.checkpoint` makes every
commit durable in the file, e.g. before compacting the log.

**Batches.** A replica applies committed entries in batches (:meth:`ShardStore.begin_batch`,
:meth:`ShardStore.end_batch`): one transaction for all of them, and plain puts held in
memory, the last per key, until the next commit or until anything but a point read needs
the file (:meth:`ShardStore._put_later`). A store that is a cache of the log (a replica
group's) keeps that transaction open for many batches.

**Change tracking, for a pre-copy.** Every write stamps what it changed with the shard's
*write version*: one more than the last, a counter that belongs to the shard's lineage (it
travels with the file from group to group, and never goes back). ``kv.ver`` is the
version that last wrote a row; a delete leaves a tombstone in ``kv_gone``; a SQL write or
DDL records its version as ``meta.sql_changed_at``. So a copy exported at version ``b``
(:meth:`ShardStore.export`, :attr:`ShardStore.write_version`) is brought up to date by
:meth:`ShardStore.export_delta` (the rows and tombstones after ``b``, and the whole
session table) and :meth:`ShardStore.apply_delta`. Tombstones are bounded
(:data:`MAX_TOMBSTONES`): the oldest are pruned and ``meta.gone_horizon`` remembers the
newest pruned version, below which no delta can be made (the caller copies it all). SQL
tables are not tracked row by row: a delta cannot span a SQL change. The version is not
stored: it is the largest of those stamps (each write leaves one), so every replica, a
restarted one too, derives the same number from the same rows.

**Eviction order.** ``sessions.touched`` is a counter owned by the shard (the largest
value plus one), not the group's log index: a shard handed to another group keeps its
least-recently-heard-from order although the new group's indexes may be lower.
"""

from __future__ import annotations

import os
import sqlite3
import struct
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import closing, contextmanager, suppress
from dataclasses import dataclass
from typing import Any, Final, TypeVar

import crc32c
import msgspec

from shardwise.errors import (
    CorruptShardSnapshotError,
    ShardExistsError,
    ShardFormatError,
    ShardLimitError,
    ShardNotFoundError,
    ShardSchemaVersionError,
    ShardStoreClosedError,
    ShardStoreError,
)
from shardwise.model.config import ShardId, Table
from shardwise.model.kv import (
    MAX_SCAN_ROWS,
    MAX_VALUE_BYTES,
    Append,
    Delete,
    Get,
    KVOp,
    KVResult,
    Put,
    check_op,
)
from shardwise.raft.sessions import MAX_SESSIONS
from shardwise.shardserver.commands import SchemaVerdict, SqlStatement, SqlWriteResult
from shardwise.storage.fsutil import Disk

SCHEMA_VERSION: Final = 2
"""Version of the tables below. Version 1 (no change tracking) is upgraded when its image
is installed; a file of any other version is refused, not guessed at."""

MAX_EXPORT_BYTES: Final = 1 << 30
"""Largest image :meth:`ShardStore.export` makes: it is held in memory while it is shipped;
a larger shard should be split instead."""

EXPORT_MAGIC: Final = b"\xf1SWS"
"""Starts every export; it also names export format 1 (a new format gets a new magic)."""

EXPORT_HEADER: Final = struct.Struct("<4sQI")
"""magic | image length (u64 LE) | CRC32C of the length field and the image (u32 LE)."""

CACHE_COMMIT_EVERY: Final = 64
"""Batches a store on a cache disk applies before it commits (see ShardStore.flush)."""

MAX_PENDING_BYTES: Final = 4 << 20
"""Keys and values (in characters) of puts a store may hold in memory before it writes
them to its file (see ShardStore._put_later)."""

MAX_CACHED_VALUES: Final = 1024
"""Values of recently read or written keys a store keeps in memory for point reads (a
skewed load reads a few keys over and over); past it the cache starts afresh."""

MAX_CACHED_ITEM_CHARS: Final = 1024
"""Largest key plus value (in characters) the read cache takes: it stays under 1 MiB."""

MAX_TOMBSTONES: Final = 100_000
"""Tombstones of deleted keys a shard keeps for deltas; past it the oldest half goes (and
a pre-copy older than them falls back to a full copy)."""

DELTA_MAGIC: Final = b"\xf1SWD"
"""Starts every delta (:meth:`ShardStore.export_delta`), framed like an export."""

SIDE_FILE_SUFFIXES: Final = ("-wal", "-shm", "-journal")
"""Files SQLite keeps next to a database; they belong to it and go with it."""

_SCHEMA: Final = """
CREATE TABLE kv (key TEXT PRIMARY KEY, value TEXT NOT NULL, ver INTEGER NOT NULL)
    WITHOUT ROWID;
CREATE INDEX kv_by_ver ON kv (ver);
CREATE TABLE kv_gone (key TEXT PRIMARY KEY, ver INTEGER NOT NULL) WITHOUT ROWID;
CREATE INDEX kv_gone_by_ver ON kv_gone (ver);
CREATE TABLE sessions (client_id TEXT PRIMARY KEY, seq INTEGER NOT NULL,
    result BLOB NOT NULL, touched INTEGER NOT NULL);
CREATE INDEX sessions_by_touched ON sessions (touched);
CREATE TABLE meta (k TEXT PRIMARY KEY, v) WITHOUT ROWID;
"""

_UPGRADE_FROM_1: Final = """
ALTER TABLE kv ADD COLUMN ver INTEGER NOT NULL DEFAULT 0;
CREATE INDEX kv_by_ver ON kv (ver);
CREATE TABLE kv_gone (key TEXT PRIMARY KEY, ver INTEGER NOT NULL) WITHOUT ROWID;
CREATE INDEX kv_gone_by_ver ON kv_gone (ver);
"""

_LAST_TOUCH: Final = "SELECT coalesce(max(touched), 0) FROM sessions"
_WRITE_VERSION: Final = """
SELECT max(
    coalesce((SELECT max(ver) FROM kv), 0),
    coalesce((SELECT max(ver) FROM kv_gone), 0),
    coalesce((SELECT v FROM meta WHERE k = 'gone_horizon'), 0),
    coalesce((SELECT v FROM meta WHERE k = 'sql_changed_at'), 0),
    coalesce((SELECT v FROM meta WHERE k = 'version_floor'), 0))
"""
"""A shard's write version: the largest stamp its writes left (see the module's docstring)."""


class ShardDelta(msgspec.Struct, frozen=True, array_like=True):
    """What changed in a shard after write version ``since``, up to ``version``
    (:meth:`ShardStore.export_delta`)."""

    shard: str
    since: int
    version: int
    upserts: list[tuple[str, str, int]]
    """(key, value, version) of every row written after ``since``."""
    gone: list[tuple[str, int]]
    """(key, version) of every key deleted after ``since``."""
    sessions: list[tuple[str, int, bytes, int]]
    """The whole de-duplication table (it is small, and evictions leave no trace)."""
    gone_horizon: int
    sql_changed_at: int


_STALE: Final = KVResult(ok=False, stale=True)
_OK: Final = KVResult()
_SQL_STALE: Final = SqlWriteResult(stale=True)
_encode = msgspec.msgpack.Encoder().encode
_decode_kv = msgspec.msgpack.Decoder(KVResult).decode
_OK_ENCODED: Final = _encode(_OK)
_decode_sql = msgspec.msgpack.Decoder(SqlWriteResult).decode
_decode_delta = msgspec.msgpack.Decoder(ShardDelta).decode
_R = TypeVar("_R")


class StagedImage:
    """An export (or a delta) arriving in pieces, written to a file as it comes, with a
    running CRC32C: a large image never sits whole in memory, and installing it is a
    check and a rename, not a copy (which would stall the group's apply loop)."""

    def __init__(self, path: str | os.PathLike[str], disk: Disk | None = None) -> None:
        self._path = os.fspath(path)
        self._disk = disk or Disk()
        self._header = b""
        """The frame's header (its first bytes), kept apart: the file is the bare image."""
        self._size = 0
        self._crc = 0
        self.reset()

    @property
    def size(self) -> int:
        return self._size

    @property
    def crc(self) -> int:
        """CRC32C of everything appended (header included)."""
        return self._crc

    def reset(self) -> None:
        """Start afresh (an empty image)."""
        with open(self._path, "wb"):
            pass
        self._header, self._size, self._crc = b"", 0, 0

    def append(self, data: bytes) -> None:
        self._crc = crc32c.crc32c(data, self._crc)
        self._size += len(data)
        room = EXPORT_HEADER.size - len(self._header)
        if room > 0:
            self._header += data[:room]
            data = data[room:]
        if data:
            with open(self._path, "ab") as file:
                file.write(data)

    def read(self) -> bytes:
        """Everything appended (small images only: a delta, or a Raft snapshot's copy)."""
        with open(self._path, "rb") as file:
            return self._header + file.read()

    def install(
        self,
        path: str | os.PathLike[str],
        *,
        shard: ShardId,
        applied_index: int,
        state: str,
        max_sessions: int = MAX_SESSIONS,
        max_tombstones: int = MAX_TOMBSTONES,
        disk: Disk | None = None,
    ) -> ShardStore:
        """Make the staged export the shard database at ``path`` (replacing whatever is
        there; close any store open on it first) and open it, as :meth:`ShardStore.install`
        does, in place. The caller has checked :attr:`size` and :attr:`crc` against the
        exporter's (which cover the frame's own checksum). Afterwards the stage is empty."""
        path = os.fspath(path)
        if len(self._header) < EXPORT_HEADER.size:
            raise CorruptShardSnapshotError("shard export: truncated header")
        magic, length, _ = EXPORT_HEADER.unpack(self._header)
        if magic != EXPORT_MAGIC or length != self._size - EXPORT_HEADER.size:
            raise CorruptShardSnapshotError("shard export: bad magic or length")
        if length > MAX_EXPORT_BYTES:
            raise ShardLimitError(f"shard export of {length} bytes, over {MAX_EXPORT_BYTES}")
        with closing(sqlite3.connect(self._path, isolation_level=None)) as conn:
            try:
                conn.execute("PRAGMA trusted_schema=OFF")
                if not self._disk.durable:  # the file is a cache: no journal on disk, no sync
                    conn.execute("PRAGMA journal_mode=MEMORY")
                    conn.execute("PRAGMA synchronous=OFF")
                _verify_and_stamp(conn, shard, applied_index, state)
            except sqlite3.Error as exc:
                raise CorruptShardSnapshotError(f"shard export: {exc}") from exc
        if self._disk.durable:
            with open(self._path, "rb+") as file:
                self._disk.fsync(file.fileno())
        _remove_files(path, SIDE_FILE_SUFFIXES)
        _remove_files(self._path, SIDE_FILE_SUFFIXES)
        os.replace(self._path, path)
        disk = disk or self._disk
        disk.fsync_dir(os.path.dirname(os.path.abspath(path)))
        self.reset()
        return ShardStore.open(
            path, shard, max_sessions=max_sessions, max_tombstones=max_tombstones, disk=disk
        )

    def discard(self) -> None:
        _remove_files(self._path, ("", *SIDE_FILE_SUFFIXES))


@dataclass(slots=True)
class _Meta:
    shard: ShardId
    state: str
    applied_index: int


class ShardStore:
    """One shard's SQLite database. Make one with :meth:`create`, :meth:`open` or
    :meth:`install`. Not thread-safe: the group's state machine owns it."""

    def __init__(
        self,
        path: str,
        conn: sqlite3.Connection,
        meta: _Meta,
        max_sessions: int,
        disk: Disk,
        *,
        max_tombstones: int = MAX_TOMBSTONES,
    ) -> None:
        self._path = path
        self._disk = disk
        self._batching = False
        self._unflushed = 0
        self._conn: sqlite3.Connection | None = conn
        self._meta = meta
        self._max_sessions = max_sessions
        self._sessions: int = conn.execute("SELECT count(*) FROM sessions").fetchone()[0]
        self._last_touch: int = conn.execute(_LAST_TOUCH).fetchone()[0]
        self._known_seqs: dict[str, int] = {}
        """Each client's latest applied ``seq``, as far as this process has seen it: a
        write with a higher one needs no look-up in ``sessions`` (the common case). Only
        clients with a row are here, so it is bounded like the table."""
        self._applied_unwritten = False
        """Inside a batch, ``applied_index`` is written once at its end (see
        :meth:`_write_applied`), not with every command."""
        self._pending_kv: dict[str, tuple[str, int]] = {}
        """Rows that batches' plain puts wrote and the file does not have yet, by key
        (see :meth:`_put_later`)."""
        self._pending_sessions: dict[str, tuple[int, bytes, int]] = {}
        """The session rows those puts wrote, by client id."""
        self._pending_bytes = 0
        """Roughly, the keys and values pending (an overwritten one still counts)."""
        self._cached: dict[str, str] = {}
        """Values of keys as the file has them (see :meth:`get`): filled by point reads
        and by writing held puts, emptied by every other change."""
        self._max_tombstones = max_tombstones
        self._tombstones: int = conn.execute("SELECT count(*) FROM kv_gone").fetchone()[0]
        self._version: int = conn.execute(_WRITE_VERSION).fetchone()[0]
        self._sql_ready = False
        self._sql_tables: dict[str, Table] | None = None
        """The catalog tables the SQL schema reflects (``meta.sql_tables``), once read."""

    # --- making one ----------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        path: str | os.PathLike[str],
        shard: ShardId,
        *,
        state: str,
        index: int = 0,
        max_sessions: int = MAX_SESSIONS,
        max_tombstones: int = MAX_TOMBSTONES,
        disk: Disk | None = None,
    ) -> ShardStore:
        """A new, empty shard database at ``path`` (written atomically: a crash leaves no
        half-made file), in lifecycle ``state``, as of log ``index``. ``disk``: a
        :class:`~shardwise.storage.fsutil.CacheDisk` for a shard that is a cache of a
        durable log (no fsync at all); the default syncs."""
        path = os.fspath(path)
        if os.path.lexists(path):
            raise ShardExistsError(f"{path} already exists")
        with closing(sqlite3.connect(":memory:", isolation_level=None)) as mem:
            mem.executescript(_SCHEMA)
            _put_meta(mem, "format_version", SCHEMA_VERSION)
            _put_meta(mem, "shard", str(shard))
            _put_meta(mem, "state", state)
            _put_meta(mem, "applied_index", index)
            image = mem.serialize()
        disk = disk or Disk()
        _write_atomically(path, image, disk)
        return cls.open(
            path, shard, max_sessions=max_sessions, max_tombstones=max_tombstones, disk=disk
        )

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        shard: ShardId | None = None,
        *,
        max_sessions: int = MAX_SESSIONS,
        max_tombstones: int = MAX_TOMBSTONES,
        disk: Disk | None = None,
    ) -> ShardStore:
        """The existing shard database at ``path``; ``shard``, if given, must match it.

        ``max_sessions`` must be the same on every replica (eviction is replicated state).
        """
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise ShardNotFoundError(f"no shard database at {path}")
        conn = sqlite3.connect(path, isolation_level=None)
        try:
            meta = _read_meta(conn, path)  # before any pragma writes to a foreign file
            if shard is not None and meta.shard != shard:
                raise ShardFormatError(f"{path} holds shard {meta.shard}, not {shard}")
            try:
                # A cache of a durable log keeps its rollback journal in memory: nothing
                # on disk to create or sync, and a crash discards the file anyway.
                journal = "WAL" if (disk is None or disk.durable) else "MEMORY"
                conn.execute(f"PRAGMA journal_mode={journal}")
                disk = disk or Disk()
                # See the module's docstring; a cache of a durable log never syncs.
                sync = "NORMAL" if disk.durable else "OFF"
                conn.execute(f"PRAGMA synchronous={sync}")
                conn.execute("PRAGMA trusted_schema=OFF")  # files arrive from other groups
                return cls(path, conn, meta, max_sessions, disk, max_tombstones=max_tombstones)
            except sqlite3.Error as exc:
                raise ShardStoreError(f"cannot open {path}: {exc}") from exc
        except BaseException:
            conn.close()
            raise

    @classmethod
    def install(
        cls,
        path: str | os.PathLike[str],
        data: bytes,
        *,
        shard: ShardId | None = None,
        applied_index: int | None = None,
        state: str | None = None,
        max_sessions: int = MAX_SESSIONS,
        max_tombstones: int = MAX_TOMBSTONES,
        disk: Disk | None = None,
    ) -> ShardStore:
        """Replace whatever is at ``path`` with the exported shard ``data`` and open it.

        ``data`` is verified first (magic, length, checksum, schema version, SQLite's
        integrity check, ``shard`` if given): if it fails, nothing is replaced. The file is
        written atomically (temp file, fsync, rename, fsync of the directory). Close any
        store open on ``path`` first. ``applied_index`` and ``state`` override the exported
        ones: a shard from another group needs ``applied_index``, as the exporter's index
        belongs to *its* log (a Raft snapshot of the same group keeps both).
        """
        path = os.fspath(path)
        image = _verified_image(_unframe(data), shard, applied_index, state)
        # A WAL left by the old file would be replayed into the new one: remove it. If we
        # crash before the rename, the old file is back at its last checkpoint (consistent,
        # with its applied index) and the install is replayed from the log.
        _remove_files(path, SIDE_FILE_SUFFIXES)
        disk = disk or Disk()
        _write_atomically(path, image, disk)
        return cls.open(
            path, shard, max_sessions=max_sessions, max_tombstones=max_tombstones, disk=disk
        )

    def moved_to(self, path: str | os.PathLike[str]) -> ShardStore:
        """Close this store, move its file to ``path`` (replacing whatever is there) and
        open it there. Close any store open on ``path`` first."""
        path = os.fspath(path)
        self.close()
        _remove_files(path, SIDE_FILE_SUFFIXES)
        os.replace(self._path, path)
        self._disk.fsync_dir(os.path.dirname(os.path.abspath(path)))
        return ShardStore.open(
            path,
            self.shard,
            max_sessions=self._max_sessions,
            max_tombstones=self._max_tombstones,
            disk=self._disk,
        )

    # --- what it is ----------------------------------------------------------------------

    @property
    def path(self) -> str:
        return self._path

    @property
    def shard(self) -> ShardId:
        return self._meta.shard

    @property
    def state(self) -> str:
        return self._meta.state

    @property
    def write_version(self) -> int:
        """The shard's write version: what :meth:`export_delta` counts changes after."""
        return self._version

    @property
    def applied_index(self) -> int:
        """Index of the last log entry this shard applied (0 for a new, empty shard)."""
        return self._meta.applied_index

    # --- changes, through the log --------------------------------------------------------

    def apply(self, index: int, client_id: str, seq: int, op: KVOp) -> KVResult | None:
        """Apply the committed ``op`` at log ``index``, de-duplicated, in one transaction.

        An ``index`` at or below :attr:`applied_index` was applied before: it is skipped and
        ``None`` returned. A retry (the client's latest ``seq``) returns the first result;
        an older ``seq`` returns a stale result; neither applies ``op``. ``client_id=""``
        opts out. An ``Append`` that would grow a value past :data:`MAX_VALUE_BYTES` is not
        applied and returns ``ok=False``.
        """
        check_op(op)
        if index <= self._meta.applied_index:
            return None
        if self._batching and self._put_later(client_id, seq, op):
            self._meta.applied_index = index
            self._applied_unwritten = True
            return _OK
        with self._transaction() as conn:
            result, sessions = self._apply_once(conn, client_id, seq, op)
            self._meta.applied_index = index
            if self._batching:
                self._applied_unwritten = True
            else:
                _put_meta(conn, "applied_index", index)
        self._sessions = sessions
        return result

    def apply_many(self, index: int, ops: Sequence[tuple[str, int, KVOp]]) -> list[KVResult] | None:
        """Apply the ``(client_id, seq, op)`` of one committed batch entry at log
        ``index``, in order, each as :meth:`apply` would (de-duplicated, limits checked);
        ``None`` (nothing applied) if ``index`` was applied before. One index for all:
        they stand or fall together on a replay."""
        for _, _, op in ops:
            check_op(op)
        if index <= self._meta.applied_index:
            return None
        results: list[KVResult] = []
        if self._batching:
            for client_id, seq, op in ops:
                if self._put_later(client_id, seq, op):
                    results.append(_OK)
                    continue
                with self._transaction() as conn:  # (writes the pending puts first)
                    result, self._sessions = self._apply_once(conn, client_id, seq, op)
                results.append(result)
            self._meta.applied_index = index
            self._applied_unwritten = True
            return results
        with self._transaction() as conn:
            for client_id, seq, op in ops:
                result, self._sessions = self._apply_once(conn, client_id, seq, op)
                results.append(result)
            self._meta.applied_index = index
            _put_meta(conn, "applied_index", index)
        return results

    def set_state(self, index: int, state: str) -> bool:
        """Record the lifecycle ``state`` at log ``index``; False if already applied."""
        if index <= self._meta.applied_index:
            return False
        with self._transaction() as conn:
            _put_meta(conn, "state", state)
            _put_meta(conn, "applied_index", index)
        self._meta.state, self._meta.applied_index = state, index
        return True

    # --- SQL (see sqlshard.py) ---------------------------------------------------------
    #
    # sqlshard is imported where it is used: it loads the SQL planner's modules (sqlglot,
    # about 0.3 s), which the KV client, importing this module for its limits, and a
    # KV-only shard should not pay for.

    def apply_sql(
        self,
        index: int,
        client_id: str,
        seq: int,
        statements: Sequence[SqlStatement],
        refusal: SchemaVerdict = "",
    ) -> SqlWriteResult | None:
        """Apply a committed SQL write batch at log ``index``, de-duplicated like
        :meth:`apply`, in the same transaction as the applied index: every statement or,
        if one fails deterministically, none (the result carries the error; the failure
        is remembered too, so a retry gets the same answer). ``refusal``: the tables are
        not those the batch was planned with, so a new batch is refused (and not
        remembered); a retry of one already applied still gets its first result."""
        if index <= self._meta.applied_index:
            return None
        if refusal and (not client_id or seq > self.last_seq(client_id)):
            return SqlWriteResult(schema=refusal)
        self._sql_connection()  # the functions, before the transaction begins
        with self._transaction() as conn:

            def run() -> SqlWriteResult:
                from shardwise.shardserver import sqlshard  # noqa: PLC0415 - see above

                self._mark_sql_changed(conn)  # SQL rows are not tracked: no delta spans it
                return sqlshard.run_batch(conn, statements)

            result, sessions = self._once(
                conn, client_id, seq, run=run, decode=_decode_sql, stale=_SQL_STALE
            )
            _put_meta(conn, "applied_index", index)
        self._meta.applied_index = index
        self._sessions = sessions
        return result

    def read_sql(self, sql: str, params: Mapping[str, Any], max_rows: int) -> list[tuple[Any, ...]]:
        """The rows of a read fragment (read-only, bounded: see ``sqlshard.run_read``)."""
        from shardwise.shardserver import sqlshard  # noqa: PLC0415 - see above

        conn = self._sql_connection()
        return sqlshard.run_read(conn, sql, params, max_rows, shard=str(self.shard))

    def sql_tables(self) -> dict[str, Table]:
        """The catalog tables this shard's SQL schema reflects."""
        from shardwise.shardserver import sqlshard  # noqa: PLC0415 - see above

        if self._sql_tables is None:
            rows = self._query("SELECT v FROM meta WHERE k = ?", sqlshard.SQL_TABLES_KEY)
            self._sql_tables = sqlshard.decode_tables(rows[0][0] if rows else None)
        return self._sql_tables

    def sync_schema(self, index: int, tables: Mapping[str, Table]) -> list[str]:
        """Bring the SQL tables to the catalog ``tables`` (of every keyspace; this shard
        takes its own keyspace's), at log ``index``; the DDL statements that failed
        deterministically (skipped on every replica alike). Idempotent: a shard that
        already reflects ``tables`` is not touched, so no check of the index is needed
        (a shard created or installed at ``index`` is synced at the same index)."""
        from shardwise.shardserver import sqlshard  # noqa: PLC0415 - see above

        recorded = self.sql_tables()
        target = sqlshard.keyspace_tables(tables, self.shard.keyspace)
        if recorded == target:
            return []
        with self._transaction() as conn:
            failures = sqlshard.sync_schema(conn, recorded, target, self.shard.keyspace)
            self._mark_sql_changed(conn)
            _put_meta(conn, sqlshard.SQL_TABLES_KEY, sqlshard.encode_tables(target))
            if index > self._meta.applied_index:
                _put_meta(conn, "applied_index", index)
        self._meta.applied_index = max(index, self._meta.applied_index)
        self._sql_tables = target
        return failures

    # --- reads ---------------------------------------------------------------------------

    def get(self, key: str) -> str | None:
        pending = self._pending_kv.get(key)
        if pending is not None:
            return pending[0]
        cached = self._cached.get(key)
        if cached is not None:
            return cached
        # The file has every other key as it stands: no need to write the held puts.
        if self._conn is None:
            raise ShardStoreClosedError(f"the store of shard {self.shard} is closed")
        try:
            row = self._conn.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
        except sqlite3.Error as exc:
            raise ShardStoreError(f"shard {self.shard}: {exc}") from exc
        if row is None:
            return None
        self._cache(key, row[0])
        return str(row[0])

    def _cache(self, key: str, value: str) -> None:
        if len(key) + len(value) > MAX_CACHED_ITEM_CHARS:
            return
        if len(self._cached) >= MAX_CACHED_VALUES:
            self._cached.clear()
        self._cached[key] = value

    def scan(
        self,
        prefix: str | None = None,
        *,
        start: str | None = None,
        end: str | None = None,
        limit: int = MAX_SCAN_ROWS,
    ) -> list[tuple[str, str]]:
        """Up to ``limit`` ``(key, value)`` pairs in key order, with ``start <= key < end``
        and starting with ``prefix``. Next page: ``start=last_key + "\\x00"``."""
        if not 0 <= limit <= MAX_SCAN_ROWS:
            raise ShardLimitError(f"scan limit {limit} is not in [0, {MAX_SCAN_ROWS}]")
        # Keys with the prefix are contiguous from the prefix on: read from there and stop
        # at the first key without it.
        sql = "SELECT key, value FROM kv WHERE key >= ?"
        params: list[object] = [max(start or "", prefix or "")]
        if end is not None:
            sql += " AND key < ?"
            params.append(end)
        rows = self._query(sql + " ORDER BY key LIMIT ?", *params, limit)
        if prefix is None:
            return rows
        for i, (key, _) in enumerate(rows):
            if not key.startswith(prefix):
                return rows[:i]
        return rows

    def count(self) -> int:
        """Number of keys."""
        count: int = self._query("SELECT count(*) FROM kv")[0][0]
        return count

    def size_bytes(self) -> int:
        """Size of the database image (what :meth:`export` would copy, less its header)."""
        pages: int = self._query("PRAGMA page_count")[0][0]
        page_bytes: int = self._query("PRAGMA page_size")[0][0]
        return pages * page_bytes

    def last_seq(self, client_id: str) -> int:
        """The sequence number of the client's latest applied command (0 if none)."""
        rows = self._query("SELECT seq FROM sessions WHERE client_id = ?", client_id)
        return rows[0][0] if rows else 0

    # --- snapshots and the file ----------------------------------------------------------

    def export(self) -> bytes:
        """A consistent copy of the whole database (data, sessions, meta), framed with
        its length and CRC32C, for :meth:`install` on another path or machine."""
        return bytes(self.export_buffer())

    def export_buffer(self) -> bytearray:
        """:meth:`export` without its final copy (a large shard's image is copied as
        rarely as possible: a Raft snapshot holds its replica's event loop)."""
        self.flush()
        size = self.size_bytes()
        if size > MAX_EXPORT_BYTES:
            raise ShardLimitError(f"shard {self.shard} is {size} bytes, over {MAX_EXPORT_BYTES}")
        header = EXPORT_HEADER.size
        if self._disk.durable:
            try:
                image = self._connection().serialize()
            except sqlite3.Error as exc:
                raise ShardStoreError(f"cannot export shard {self.shard}: {exc}") from exc
            framed = bytearray(header + len(image))
            framed[header:] = image
        else:
            # A cache store keeps no WAL (see open()): once committed, the file itself is
            # the whole database, and reading it is ~4x faster than SQLite's serialize().
            with open(self._path, "rb") as file:
                framed = bytearray(header + os.fstat(file.fileno()).st_size)
                file.readinto(memoryview(framed)[header:])
        # Bytes 18 and 19 of the header say "WAL mode" (2). An in-memory copy cannot be
        # opened in WAL mode, so the export is a plain rollback-journal database (1); the
        # receiver switches its copy to WAL when it opens it.
        framed[header + 18 : header + 20] = b"\x01\x01"
        _frame_in_place(EXPORT_MAGIC, framed)
        return framed

    def export_delta(self, since: int) -> bytes | None:
        """What changed after write version ``since`` (the version of an earlier
        :meth:`export` of this shard), framed like an export, for :meth:`apply_delta` on
        that copy; None if this copy cannot tell (tombstones after ``since`` were pruned,
        a SQL change came after it, or ``since`` is not in this copy's past): copy it all."""
        self.flush()
        horizon, sql_changed = self._meta_int("gone_horizon"), self._meta_int("sql_changed_at")
        if not 0 <= since <= self._version or horizon > since or sql_changed > since:
            return None
        delta = ShardDelta(
            str(self.shard),
            since,
            self._version,
            self._query("SELECT key, value, ver FROM kv WHERE ver > ?", since),
            self._query("SELECT key, ver FROM kv_gone WHERE ver > ?", since),
            self._query("SELECT client_id, seq, result, touched FROM sessions"),
            horizon,
            sql_changed,
        )
        return bytes(_frame(DELTA_MAGIC, _encode(delta)))  # small: a copy costs nothing

    def apply_delta(self, index: int, data: bytes, *, state: str) -> None:
        """Bring this copy up to date with a delta of the same shard (from
        :meth:`export_delta` of a later copy, counted from this copy's write version), in
        lifecycle ``state``, at log ``index``, in one transaction. A delta that is
        corrupt or does not fit this copy raises and changes nothing."""
        try:
            delta = _decode_delta(_unframe(data, DELTA_MAGIC))
        except msgspec.DecodeError as exc:  # ValidationError is a DecodeError
            raise CorruptShardSnapshotError(f"shard delta: {exc}") from None
        if delta.shard != str(self.shard) or delta.since != self._version:
            raise ShardFormatError(
                f"a delta of {delta.shard} after version {delta.since} does not fit "
                f"{self.shard} at version {self._version}"
            )
        with self._transaction() as conn:
            # Deletes first: a key deleted and then written again has both, and must stay.
            for key, ver in delta.gone:
                conn.execute("DELETE FROM kv WHERE key = ?", (key,))
                conn.execute("INSERT OR REPLACE INTO kv_gone (key, ver) VALUES (?, ?)", (key, ver))
            conn.executemany(
                "INSERT OR REPLACE INTO kv (key, value, ver) VALUES (?, ?, ?)", delta.upserts
            )
            conn.execute("DELETE FROM sessions")
            conn.executemany(
                "INSERT INTO sessions (client_id, seq, result, touched) VALUES (?, ?, ?, ?)",
                delta.sessions,
            )
            _put_meta(conn, "gone_horizon", delta.gone_horizon)
            _put_meta(conn, "sql_changed_at", delta.sql_changed_at)
            _put_meta(conn, "version_floor", delta.version)
            _put_meta(conn, "state", state)
            _put_meta(conn, "applied_index", index)
            self._tombstones = conn.execute("SELECT count(*) FROM kv_gone").fetchone()[0]
            if self._tombstones > self._max_tombstones:
                self._prune_tombstones(conn)
        self._version = delta.version
        self._sessions = len(delta.sessions)
        self._known_seqs.clear()
        self._last_touch = self._query(_LAST_TOUCH)[0][0]
        self._meta.state, self._meta.applied_index = state, index

    def checkpoint(self) -> None:
        """Make every commit durable in the database file itself (fsynced)."""
        self.flush()
        busy = self._query("PRAGMA wal_checkpoint(TRUNCATE)")[0][0]
        if busy:
            raise ShardStoreError(f"checkpoint of shard {self.shard} could not finish")

    def begin_batch(self) -> None:
        """Apply the following changes in one transaction, until :meth:`end_batch`.

        A replica applies a Raft batch of many commands at once; one SQLite transaction
        for all of them saves a BEGIN and a COMMIT per command. Nothing may read the file
        from another connection until the batch ends."""
        self._batching = True

    def end_batch(self) -> None:
        """End the batch: commit what it changed (on a cache disk, only every
        :data:`CACHE_COMMIT_EVERY` batches or past :data:`MAX_PENDING_BYTES` of held
        puts, and ``applied_index`` with the commit: see :meth:`flush`)."""
        self._batching = False
        self._unflushed += 1
        if (
            self._disk.durable
            or self._unflushed >= CACHE_COMMIT_EVERY
            or self._pending_bytes > MAX_PENDING_BYTES
        ):
            self.flush()

    def flush(self) -> None:
        """Write the held puts and commit any open transaction.

        A store on a :class:`~shardwise.storage.fsutil.CacheDisk` (a cache of a durable
        log) keeps its transaction open across batches: a COMMIT writes every dirty page
        to the file, and nothing but this connection ever reads the file while it is
        open. It commits before an export, a checkpoint or a close, and every
        :data:`CACHE_COMMIT_EVERY` batches, which bounds the journal held in memory."""
        self._unflushed = 0
        conn = self._conn
        if conn is not None:
            self._write_pending(conn)
        self._write_applied()
        if conn is not None and conn.in_transaction:
            try:
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                raise ShardStoreError(f"shard {self.shard}: {exc}") from exc

    def close(self) -> None:
        """Close the database (idempotent); committed changes stay in the file, and so
        do those of a batch in progress."""
        self._batching = False
        self.flush()
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def delete(self) -> None:
        """Close and remove the database and its side files (garbage collection)."""
        self.close()
        _remove_files(self._path, ("", *SIDE_FILE_SUFFIXES))
        self._disk.fsync_dir(os.path.dirname(os.path.abspath(self._path)))

    def __enter__(self) -> ShardStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- internals -----------------------------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        """The connection, with the batch's pending puts written: whatever reads or
        writes through it sees them."""
        if self._conn is None:
            raise ShardStoreClosedError(f"the store of shard {self.shard} is closed")
        if self._pending_kv:
            self._write_pending(self._conn)
        return self._conn

    def _put_later(self, client_id: str, seq: int, op: KVOp) -> bool:
        """Inside a batch, take a plain ``Put`` (the bulk of a write load) without SQL:
        its row and its session row wait in memory, a later put of the same key or by
        the same client replaces them, and :meth:`_write_pending` writes what is left in
        two statements: when anything else uses the connection (:meth:`_connection`),
        and at the latest with the next commit (:meth:`flush`; on a cache disk, every
        :data:`CACHE_COMMIT_EVERY` batches or past :data:`MAX_PENDING_BYTES`). Until
        then :meth:`get` reads them from memory. Applying a put costs a few dictionary
        updates instead of two statements on a cold database, and a hot key is written
        once per flush.

        False (nothing done) for anything that must look at the file: an op other than
        ``Put``, a client this store has no session for yet, a retry or a stale ``seq``.
        The result is what :meth:`_apply_once` gives: a put is ok, and a session
        remembers it; so the file ends up as it would have anyway."""
        if type(op) is not Put:
            return False
        if client_id:
            known = self._known_seqs.get(client_id)
            if known is None or seq <= known:
                return False
            self._known_seqs[client_id] = seq
            self._pending_sessions[client_id] = (seq, _OK_ENCODED, self._next_touch())
        self._version += 1
        self._pending_kv[op.key] = (op.value, self._version)
        self._pending_bytes += len(op.key) + len(op.value)
        return True

    def _write_pending(self, conn: sqlite3.Connection) -> None:
        """Write the batch's pending puts (see :meth:`_put_later`) into its transaction."""
        if not self._pending_kv:
            return
        rows, self._pending_kv = self._pending_kv, {}
        sessions, self._pending_sessions = self._pending_sessions, {}
        self._pending_bytes = 0
        try:
            if not conn.in_transaction:
                conn.execute("BEGIN IMMEDIATE")
            conn.executemany(
                "INSERT OR REPLACE INTO kv (key, value, ver) VALUES (?, ?, ?)",
                [(key, value, ver) for key, (value, ver) in rows.items()],
            )
            conn.executemany(
                "INSERT OR REPLACE INTO sessions (client_id, seq, result, touched) "
                "VALUES (?, ?, ?, ?)",
                [(client, *row) for client, row in sessions.items()],
            )
        except sqlite3.Error as exc:
            self._cached.clear()
            raise ShardStoreError(f"shard {self.shard}: {exc}") from exc
        for key, (value, _) in rows.items():
            self._cache(key, value)

    def _query(self, sql: str, *params: object) -> list[Any]:
        try:
            return self._connection().execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise ShardStoreError(f"shard {self.shard}: {exc}") from exc

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        conn = self._connection()
        self._cached.clear()  # whatever it changes, the read cache does not follow
        if self._batching:
            # Inside a batch: one transaction for all of it, committed by end_batch().
            try:
                if not conn.in_transaction:
                    conn.execute("BEGIN IMMEDIATE")
                yield conn
            except sqlite3.Error as exc:
                raise ShardStoreError(f"shard {self.shard}: {exc}") from exc
            return
        try:
            if not conn.in_transaction:  # a cache store may have left one open: join it
                conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise ShardStoreError(f"shard {self.shard}: {exc}") from exc

    def _write_applied(self) -> None:
        """Write the ``applied_index`` a batch left in memory, in the batch's transaction
        (so the file never holds a batch's changes without its index)."""
        if not self._applied_unwritten or self._conn is None:
            return
        self._applied_unwritten = False
        try:
            _put_meta(self._conn, "applied_index", self._meta.applied_index)
        except sqlite3.Error as exc:
            raise ShardStoreError(f"shard {self.shard}: {exc}") from exc

    def _apply_once(
        self, conn: sqlite3.Connection, client_id: str, seq: int, op: KVOp
    ) -> tuple[KVResult, int]:
        """The result of ``op`` and the number of sessions afterwards."""
        run = lambda: self._execute(conn, op)  # noqa: E731
        return self._once(conn, client_id, seq, run=run, decode=_decode_kv, stale=_STALE)

    def _once(
        self,
        conn: sqlite3.Connection,
        client_id: str,
        seq: int,
        *,
        run: Callable[[], _R],
        decode: Callable[[bytes], _R],
        stale: _R,
    ) -> tuple[_R, int]:
        """``run()``'s result, once per ``(client_id, seq)``, and the number of sessions
        afterwards. (Generic since SQL batches share the session table with KV operations:
        a pooled client id numbers both kinds of write in one sequence.)"""
        sessions = self._sessions
        row = None
        known = self._known_seqs.get(client_id)
        if client_id and (known is None or seq <= known):
            sql = "SELECT seq, result FROM sessions WHERE client_id = ?"
            row = conn.execute(sql, (client_id,)).fetchone()
        if row is not None and seq < row[0]:
            return stale, sessions
        if row is not None and seq == row[0]:  # a retry: the first result, touched
            sql = "UPDATE sessions SET touched = ? WHERE client_id = ?"
            conn.execute(sql, (self._next_touch(), client_id))
            try:
                return decode(row[1]), sessions
            except msgspec.ValidationError:
                # The number was used for a write of the other kind (a client bug): this
                # one is not applied, the same way on every replica, and nothing halts.
                return stale, sessions
        result = run()
        if not client_id:
            return result, sessions
        conn.execute(
            "INSERT OR REPLACE INTO sessions (client_id, seq, result, touched) VALUES (?,?,?,?)",
            (client_id, seq, _encode(result), self._next_touch()),
        )
        self._known_seqs[client_id] = seq
        if row is None and known is None:
            sessions += 1
        if sessions > self._max_sessions:  # forget the least recently heard-from
            evicted = conn.execute(
                "DELETE FROM sessions WHERE client_id IN "
                "(SELECT client_id FROM sessions ORDER BY touched LIMIT ?) RETURNING client_id",
                (sessions - self._max_sessions,),
            ).fetchall()
            for (gone,) in evicted:
                self._known_seqs.pop(gone, None)
            sessions = self._max_sessions
        return result, sessions

    def _next_touch(self) -> int:
        self._last_touch += 1
        return self._last_touch

    def _execute(self, conn: sqlite3.Connection, op: KVOp) -> KVResult:
        if isinstance(op, Get):
            return KVResult(value=_get(conn, op.key))
        if isinstance(op, Put):
            self._put(conn, op.key, op.value)
        elif isinstance(op, Append):
            value = (_get(conn, op.key) or "") + op.value
            if _utf8_len(value) > MAX_VALUE_BYTES:
                return KVResult(ok=False)
            self._put(conn, op.key, value)
        elif isinstance(op, Delete):
            self._delete(conn, op.key)
        else:
            if _get(conn, op.key) != op.expected:
                return KVResult(ok=False)
            self._put(conn, op.key, op.new)
        return KVResult()

    def _put(self, conn: sqlite3.Connection, key: str, value: str) -> None:
        self._version += 1
        conn.execute(
            "INSERT OR REPLACE INTO kv (key, value, ver) VALUES (?, ?, ?)",
            (key, value, self._version),
        )

    def _delete(self, conn: sqlite3.Connection, key: str) -> None:
        if conn.execute("DELETE FROM kv WHERE key = ?", (key,)).rowcount == 0:
            return  # nothing changed: no version, no tombstone
        self._version += 1
        sql = "UPDATE kv_gone SET ver = ? WHERE key = ?"
        if conn.execute(sql, (self._version, key)).rowcount == 0:
            conn.execute("INSERT INTO kv_gone (key, ver) VALUES (?, ?)", (key, self._version))
            self._tombstones += 1
            if self._tombstones > self._max_tombstones:
                self._prune_tombstones(conn)

    def _prune_tombstones(self, conn: sqlite3.Connection) -> None:
        """Keep the newest half of the tombstones; remember the newest version dropped.
        (Exact counts and unique versions: every replica prunes at the same write.)"""
        keep = self._max_tombstones // 2
        sql = "SELECT ver FROM kv_gone ORDER BY ver DESC LIMIT 1 OFFSET ?"
        horizon = conn.execute(sql, (keep,)).fetchone()[0]
        conn.execute("DELETE FROM kv_gone WHERE ver <= ?", (horizon,))
        _put_meta(conn, "gone_horizon", horizon)
        self._tombstones = keep

    def _mark_sql_changed(self, conn: sqlite3.Connection) -> None:
        self._version += 1
        _put_meta(conn, "sql_changed_at", self._version)

    def _meta_int(self, key: str) -> int:
        rows = self._query("SELECT v FROM meta WHERE k = ?", key)
        return int(rows[0][0]) if rows else 0

    def _sql_connection(self) -> sqlite3.Connection:
        """The connection, with shardwise's SQL functions (added on first SQL use, so a
        KV-only shard never pays for them)."""
        conn = self._connection()
        if not self._sql_ready:
            from shardwise.sql.functions import register  # noqa: PLC0415 - see above

            register(conn)
            self._sql_ready = True
        return conn


def _get(conn: sqlite3.Connection, key: str) -> str | None:
    row = conn.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
    return None if row is None else str(row[0])


def _put_meta(conn: sqlite3.Connection, key: str, value: object) -> None:
    conn.execute("INSERT OR REPLACE INTO meta (k, v) VALUES (?, ?)", (key, value))


def _read_meta(conn: sqlite3.Connection, where: str, *, upgrade: bool = False) -> _Meta:
    """The file's meta; ``upgrade``: bring a file of an older version to this one first
    (only ever on an in-memory copy: a file on disk is always made by this version)."""
    try:
        meta = dict(conn.execute("SELECT k, v FROM meta").fetchall())
    except sqlite3.Error as exc:
        raise ShardFormatError(f"{where} is not a shard database: {exc}") from exc
    version = meta.get("format_version")
    if version is None:
        raise ShardFormatError(f"{where} is not a shard database: no format version")
    if upgrade and version == 1:
        conn.executescript(_UPGRADE_FROM_1)
        _put_meta(conn, "format_version", SCHEMA_VERSION)
        version = SCHEMA_VERSION
    if version != SCHEMA_VERSION:
        raise ShardSchemaVersionError(version, SCHEMA_VERSION)
    shard, state, applied = meta.get("shard"), meta.get("state"), meta.get("applied_index")
    keyspace, _, number = shard.rpartition("/") if isinstance(shard, str) else ("", "", "")
    if not (keyspace and number.isascii() and number.isdigit()):
        raise ShardFormatError(f"{where}: shard {shard!r} is not keyspace/index")
    if not isinstance(state, str) or not isinstance(applied, int):
        raise ShardFormatError(f"{where}: state {state!r} or applied index {applied!r} missing")
    return _Meta(ShardId(keyspace, int(number)), state, applied)


def _format_version(conn: sqlite3.Connection) -> object:
    try:
        row = conn.execute("SELECT v FROM meta WHERE k = 'format_version'").fetchone()
    except sqlite3.Error:
        return None  # _read_meta says what is wrong
    return row[0] if row else None


def _frame(magic: bytes, payload: bytes | bytearray) -> bytearray:
    framed = bytearray(EXPORT_HEADER.size + len(payload))
    framed[EXPORT_HEADER.size :] = payload
    _frame_in_place(magic, framed)
    return framed


def _frame_in_place(magic: bytes, framed: bytearray) -> None:
    """Write the frame's header into the first bytes of ``framed``, the payload after it."""
    payload = memoryview(framed)[EXPORT_HEADER.size :]
    length = len(payload)
    checksum = crc32c.crc32c(payload, crc32c.crc32c(struct.pack("<Q", length)))
    EXPORT_HEADER.pack_into(framed, 0, magic, length, checksum)


def _unframe(data: bytes, magic: bytes = EXPORT_MAGIC) -> memoryview:
    if len(data) > EXPORT_HEADER.size + MAX_EXPORT_BYTES:
        raise ShardLimitError(f"shard export of {len(data)} bytes, over {MAX_EXPORT_BYTES}")
    if len(data) < EXPORT_HEADER.size:
        raise CorruptShardSnapshotError("shard export: truncated header")
    found, length, checksum = EXPORT_HEADER.unpack_from(data)
    if found != magic:
        raise CorruptShardSnapshotError("shard export: bad magic")
    if length != len(data) - EXPORT_HEADER.size:
        raise CorruptShardSnapshotError(
            f"shard export: header says {length} bytes, {len(data) - EXPORT_HEADER.size} follow"
        )
    view = memoryview(data)
    image = view[EXPORT_HEADER.size :]
    if crc32c.crc32c(image, crc32c.crc32c(view[4:12])) != checksum:
        raise CorruptShardSnapshotError("shard export: checksum mismatch")
    return image


def _verified_image(
    image: memoryview, shard: ShardId | None, applied_index: int | None, state: str | None
) -> bytes:
    """The image to write, checked in memory and with the overrides applied."""
    with closing(sqlite3.connect(":memory:", isolation_level=None)) as mem:
        try:
            mem.deserialize(image)
            changed = _verify_and_stamp(mem, shard, applied_index, state)
            return mem.serialize() if changed else bytes(image)
        except sqlite3.Error as exc:
            raise CorruptShardSnapshotError(f"shard export: {exc}") from exc


def _verify_and_stamp(
    conn: sqlite3.Connection, shard: ShardId | None, applied_index: int | None, state: str | None
) -> bool:
    """Check an exported database (format, upgraded if older; integrity; ``shard``) and
    apply the overrides; whether anything in it changed."""
    upgraded = _format_version(conn) != SCHEMA_VERSION
    meta = _read_meta(conn, "shard export", upgrade=True)
    problems = [row[0] for row in conn.execute("PRAGMA quick_check").fetchall()]
    if problems != ["ok"]:
        raise CorruptShardSnapshotError(f"shard export: {problems[:3]}")
    if shard is not None and meta.shard != shard:
        raise ShardFormatError(f"shard export holds shard {meta.shard}, not {shard}")
    if applied_index is not None:
        _put_meta(conn, "applied_index", applied_index)
    if state is not None:
        _put_meta(conn, "state", state)
    return upgraded or applied_index is not None or state is not None


def _write_atomically(path: str, image: bytes, disk: Disk) -> None:
    directory, name = os.path.split(os.path.abspath(path))
    disk.atomic_write(directory, name, [image])


def _remove_files(path: str, suffixes: tuple[str, ...]) -> None:
    for suffix in suffixes:
        with suppress(FileNotFoundError):
            os.remove(path + suffix)


def _utf8_len(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode())
