"""The storage of one shard: its own SQLite database file, with the log index it has
applied and its clients' de-duplication.

A shard is one file, so a snapshot is a consistent copy of it, a hand-off ships it and
garbage collection deletes it. Its tables are in ``shardfile.py``; the de-duplication
table (``dedup.py``) moves with the shard (KV and SQL writes share it). Every write stamps
a *write version* (``tracking.py``), so a copy can be brought up to date by a delta; the
image and delta formats are in ``migration/image.py``.

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
the file (``writecache.py``). A store that is a cache of the log (a replica group's) keeps
that transaction open for many batches.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Final

import msgspec

from shardwise.errors import (
    ShardExistsError,
    ShardFormatError,
    ShardLimitError,
    ShardStoreClosedError,
    ShardStoreError,
    ShardwiseError,
)
from shardwise.model.config import ShardId, Table
from shardwise.model.kv import (
    MAX_SCAN_ROWS,
    Get,
    Key,
    KVOp,
    KVResult,
    Value,
    check_op,
    key_bytes,
)
from shardwise.raft.client_sessions import MAX_SESSIONS
from shardwise.shardserver import kvops
from shardwise.shardserver.dedup import ClientSessions
from shardwise.shardserver.digest import content_digest
from shardwise.shardserver.shardfile import (
    SIDE_FILE_SUFFIXES,
    ShardMeta,
    new_file_image,
    open_file,
    put_meta,
    remove_files,
    write_atomically,
)
from shardwise.shardserver.sqlstore import SqlStoreMixin
from shardwise.shardserver.tracking import MAX_TOMBSTONES, ChangeTracker, ShardDelta
from shardwise.shardserver.txn import state as txn_state
from shardwise.shardserver.txn.store import TxnStoreMixin
from shardwise.shardserver.writecache import MAX_PENDING_BYTES, HeldPuts, ReadCache
from shardwise.storage.fsutil import Disk
from shardwise.storage.space import DiskFullError

if TYPE_CHECKING:
    from shardwise.sql.write_functions import TimeFunctions

CACHE_COMMIT_EVERY: Final = 64
"""Batches a store on a cache disk applies before it commits (see ShardStore.flush)."""

_STALE: Final = KVResult(ok=False, stale=True)
_OK: Final = KVResult()
_decode_kv = msgspec.msgpack.Decoder(KVResult).decode


class ShardStore(SqlStoreMixin, TxnStoreMixin):
    """One shard's SQLite database. Make one with :meth:`create` or :meth:`open` (or
    ``migration.image.install_image``). Not thread-safe: the group's state machine owns it."""

    def __init__(
        self,
        path: str,
        conn: sqlite3.Connection,
        meta: ShardMeta,
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
        self._sessions = ClientSessions(conn, max_sessions)
        self._applied_unwritten = False
        """Inside a batch, ``applied_index`` is written once at its end (see
        :meth:`_write_applied`), not with every command."""
        self._held = HeldPuts()
        self._read_cache = ReadCache()
        self._changes = ChangeTracker(conn, max_tombstones)
        self._txn_locks = txn_state.lock_count(conn)
        """Locks of prepared transactions (``txn/store.py``): none, and plain operations
        need no look at them."""
        self._sql_ready = False
        self._times: TimeFunctions | None = None
        """The checked date and time functions on the connection (with the SQL ones)."""
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
        disk = disk or Disk()
        write_atomically(path, new_file_image(shard, state, index), disk)
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
        disk = disk or Disk()
        conn, meta = open_file(path, shard, durable=disk.durable)
        try:
            return cls(path, conn, meta, max_sessions, disk, max_tombstones=max_tombstones)
        except sqlite3.Error as exc:
            conn.close()
            raise ShardStoreError(f"cannot open {path}: {exc}") from exc
        except BaseException:
            conn.close()
            raise

    def moved_to(self, path: str | os.PathLike[str]) -> ShardStore:
        """Close this store, move its file to ``path`` (replacing whatever is there) and
        open it there. Close any store open on ``path`` first."""
        path = os.fspath(path)
        self.close()
        remove_files(path, SIDE_FILE_SUFFIXES)
        os.replace(self._path, path)
        self._disk.fsync_dir(os.path.dirname(os.path.abspath(path)))
        return ShardStore.open(
            path,
            self.shard,
            max_sessions=self._sessions.max_sessions,
            max_tombstones=self._changes.max_tombstones,
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
        """The shard's write version: what :meth:`changes_since` counts changes after."""
        return self._changes.version

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
        if self._batching and not self._txn_locks and self._hold_put(client_id, seq, op):
            self._meta.applied_index = index
            self._applied_unwritten = True
            return _OK
        with self._transaction() as conn:
            result = self._apply_once(conn, client_id, seq, op)
            self._meta.applied_index = index
            if self._batching:
                self._applied_unwritten = True
            else:
                put_meta(conn, "applied_index", index)
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
                if not self._txn_locks and self._hold_put(client_id, seq, op):
                    results.append(_OK)
                    continue
                with self._transaction() as conn:  # (writes the held puts first)
                    results.append(self._apply_once(conn, client_id, seq, op))
            self._meta.applied_index = index
            self._applied_unwritten = True
            return results
        with self._transaction() as conn:
            for client_id, seq, op in ops:
                results.append(self._apply_once(conn, client_id, seq, op))
            self._meta.applied_index = index
            put_meta(conn, "applied_index", index)
        return results

    def set_state(self, index: int, state: str) -> bool:
        """Record the lifecycle ``state`` at log ``index``; False if already applied."""
        if index <= self._meta.applied_index:
            return False
        with self._transaction() as conn:
            put_meta(conn, "state", state)
            put_meta(conn, "applied_index", index)
        self._meta.state, self._meta.applied_index = state, index
        return True

    def apply_changes(self, index: int, delta: ShardDelta, *, state: str) -> None:
        """Take the changes of a later copy of this shard (counted from this copy's write
        version), in lifecycle ``state``, at log ``index``, in one transaction; a delta
        that does not fit raises and changes nothing."""
        if delta.shard != str(self.shard) or delta.since != self.write_version:
            raise ShardFormatError(
                f"a delta of {delta.shard} after version {delta.since} does not fit "
                f"{self.shard} at version {self.write_version}"
            )
        with self._transaction() as conn:
            self._changes.apply(conn, delta)
            put_meta(conn, "state", state)
            put_meta(conn, "applied_index", index)
            self._sessions.reload(conn)
            self._txn_locks = txn_state.lock_count(conn)
        self._meta.state, self._meta.applied_index = state, index

    # --- reads ---------------------------------------------------------------------------

    def get(self, key: Key) -> Value | None:
        """The key's value (the type it was written with), ``None`` if it is absent."""
        key = key_bytes(key)
        held = self._held.value(key)
        if held is not None:
            return held
        cached = self._read_cache.get(key)
        if cached is not None:
            return cached
        # The file has every other key as it stands: no need to write the held puts.
        if self._conn is None:
            raise ShardStoreClosedError(f"the store of shard {self.shard} is closed")
        try:
            row = self._conn.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
        except sqlite3.Error as exc:
            raise self._error(exc) from exc
        if row is None:
            return None
        value = kvops.as_value(row[0])
        self._read_cache.remember(key, value)
        return value

    def scan(
        self,
        prefix: Key | None = None,
        *,
        start: Key | None = None,
        end: Key | None = None,
        limit: int = MAX_SCAN_ROWS,
    ) -> list[tuple[Key, Value]]:
        """Up to ``limit`` ``(key, value)`` pairs in key (byte) order, with ``start <= key
        < end`` and starting with ``prefix``; a key is a str if it is valid UTF-8, else
        bytes (see ``kvops.scan``). Next page: ``start=key_bytes(last_key) + b"\\x00"``."""
        if not 0 <= limit <= MAX_SCAN_ROWS:
            raise ShardLimitError(f"scan limit {limit} is not in [0, {MAX_SCAN_ROWS}]")
        try:
            return kvops.scan(self._connection(), prefix, start, end, limit)
        except sqlite3.Error as exc:
            raise self._error(exc) from exc

    def count(self) -> int:
        """Number of keys."""
        count: int = self._query("SELECT count(*) FROM kv")[0][0]
        return count

    def size_bytes(self) -> int:
        """Size of the database image (what an export copies, less its header)."""
        pages: int = self._query("PRAGMA page_count")[0][0]
        page_bytes: int = self._query("PRAGMA page_size")[0][0]
        return pages * page_bytes

    def last_seq(self, client_id: str) -> int:
        """The sequence number of the client's latest applied command (0 if none)."""
        rows = self._query("SELECT seq FROM sessions WHERE client_id = ?", client_id)
        return rows[0][0] if rows else 0

    def changes_since(self, since: int) -> ShardDelta | None:
        """What changed after write version ``since`` (the version of an earlier copy of
        this shard); None if this copy cannot tell (tombstones after ``since`` were
        pruned, a SQL change came after it, or ``since`` is not in this copy's past)."""
        self.flush()
        try:
            return self._changes.changes_since(self._connection(), str(self.shard), since)
        except sqlite3.Error as exc:
            raise self._error(exc) from exc

    def content_digest(self) -> str:
        """A digest of the shard's content, the same on every replica at the same applied
        index whatever its batch boundaries (``digest.py``)."""
        self.flush()
        try:
            return content_digest(self._connection())
        except sqlite3.Error as exc:
            raise self._error(exc) from exc

    def file_image(self, *, reserve: int) -> bytearray:
        """The whole database as it stands committed, after ``reserve`` bytes left free at
        the start (for a frame's header, so the image is never copied again)."""
        self.flush()
        if self._disk.durable:
            try:
                image = self._connection().serialize()
            except sqlite3.Error as exc:
                raise ShardStoreError(f"cannot export shard {self.shard}: {exc}") from exc
            framed = bytearray(reserve + len(image))
            framed[reserve:] = image
            return framed
        # A cache store keeps no WAL (see open()): once committed, the file itself is
        # the whole database, and reading it is ~4x faster than SQLite's serialize().
        with open(self._path, "rb") as file:
            framed = bytearray(reserve + os.fstat(file.fileno()).st_size)
            file.readinto(memoryview(framed)[reserve:])
        return framed

    # --- the file ------------------------------------------------------------------------

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
        :data:`CACHE_COMMIT_EVERY` batches or past ``MAX_PENDING_BYTES`` of held
        puts, and ``applied_index`` with the commit: see :meth:`flush`)."""
        self._batching = False
        self._unflushed += 1
        if (
            self._disk.durable
            or self._unflushed >= CACHE_COMMIT_EVERY
            or self._held.pending_bytes > MAX_PENDING_BYTES
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
            self._write_held(conn)
        self._write_applied()
        if conn is not None and conn.in_transaction:
            try:
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                raise self._error(exc) from exc

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
        remove_files(self._path, ("", *SIDE_FILE_SUFFIXES))
        self._disk.fsync_dir(os.path.dirname(os.path.abspath(self._path)))

    def __enter__(self) -> ShardStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- internals -----------------------------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        """The connection, with the batch's held puts written: whatever reads or writes
        through it sees them."""
        if self._conn is None:
            raise ShardStoreClosedError(f"the store of shard {self.shard} is closed")
        if self._held:
            self._write_held(self._conn)
        return self._conn

    def _error(self, exc: sqlite3.Error) -> ShardwiseError:
        """A SQLite failure as ours: ``SQLITE_FULL`` is a full disk (``DiskFullError``),
        which the Raft host does not take for damage: it stops the replica and rebuilds
        its state machine from the durable record once there is room (a transaction
        may have been rolled back, so the state no longer matches the applied index)."""
        if (getattr(exc, "sqlite_errorcode", None) or 0) & 0xFF == sqlite3.SQLITE_FULL:
            return DiskFullError(f"shard {self.shard}: the disk is full ({exc})")
        return ShardStoreError(f"shard {self.shard}: {exc}")

    def _hold_put(self, client_id: str, seq: int, op: KVOp) -> bool:
        return self._held.take_put(client_id, seq, op, self._sessions, self._changes)

    def _write_held(self, conn: sqlite3.Connection) -> None:
        """Write the batch's held puts into its transaction."""
        if not self._held:
            return
        try:
            written = self._held.write_to(conn)
        except sqlite3.Error as exc:
            self._read_cache.clear()
            raise self._error(exc) from exc
        for key, value in written:
            self._read_cache.remember(key, value)

    def _query(self, sql: str, *params: object) -> list[Any]:
        try:
            return self._connection().execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise self._error(exc) from exc

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        conn = self._connection()
        self._read_cache.clear()  # whatever it changes, the read cache does not follow
        if self._batching:
            # Inside a batch: one transaction for all of it, committed by end_batch().
            try:
                if not conn.in_transaction:
                    conn.execute("BEGIN IMMEDIATE")
                yield conn
            except sqlite3.Error as exc:
                raise self._error(exc) from exc
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
            raise self._error(exc) from exc

    def _write_applied(self) -> None:
        """Write the ``applied_index`` a batch left in memory, in the batch's transaction
        (so the file never holds a batch's changes without its index)."""
        if not self._applied_unwritten or self._conn is None:
            return
        self._applied_unwritten = False
        try:
            put_meta(self._conn, "applied_index", self._meta.applied_index)
        except sqlite3.Error as exc:
            raise self._error(exc) from exc

    def _apply_once(self, conn: sqlite3.Connection, client_id: str, seq: int, op: KVOp) -> KVResult:
        if self._txn_locks:
            locker = txn_state.blocked(conn, op.key, write=not isinstance(op, Get))
            if locker is not None:  # not recorded: a retry applies once it resolves
                return KVResult(ok=False, locked=locker)
        run = lambda: kvops.execute(conn, op, self._changes)  # noqa: E731
        return self._sessions.once(conn, client_id, seq, run=run, decode=_decode_kv, stale=_STALE)
