"""The format of one shard's SQLite file: its tables, its ``meta`` rows, and the checks a
file (or an image of one) passes before a store opens it.

Tables: ``kv`` (keys as BLOBs, so they compare as bytes; values TEXT or BLOB, as written;
and ``ver``, the write version that last wrote the row), ``kv_gone`` (tombstones: see
``tracking.py``), ``sessions`` (client de-duplication: see ``dedup.py``), ``txns`` and
``txn_locks`` (the transactions this shard takes part in: see ``txn/state.py``) and ``meta``
(``format_version``, ``shard``, ``state``: the lifecycle state's name, opaque here,
``applied_index``, ``sql_tables``, ``gone_horizon``, ``sql_changed_at`` and
``version_floor``). Distributed SQL tables live beside them as ``sql_<name>`` (see
``sqlshard.py``).
"""

from __future__ import annotations

import os
import sqlite3
from contextlib import closing, suppress
from dataclasses import dataclass
from typing import Final

from shardwise.errors import (
    CorruptShardSnapshotError,
    ShardFormatError,
    ShardNotFoundError,
    ShardSchemaVersionError,
    ShardStoreError,
)
from shardwise.model.config import ShardId
from shardwise.storage.fsutil import Disk

SCHEMA_VERSION: Final = 4
"""Version of the tables below. Version 1 (no change tracking), version 2 (keys stored
as TEXT) and version 3 (no transaction tables) are upgraded when their image is
installed; a file of any other version is refused, not guessed at (a server of version 3
refuses a file of version 4)."""

SIDE_FILE_SUFFIXES: Final = ("-wal", "-shm", "-journal")
"""Files SQLite keeps next to a database; they belong to it and go with it."""

TXN_TABLES: Final = """
CREATE TABLE IF NOT EXISTS txns (txn TEXT PRIMARY KEY, state TEXT NOT NULL,
    participants BLOB NOT NULL, writes BLOB NOT NULL, at INTEGER NOT NULL,
    created INTEGER NOT NULL, owner TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS txn_locks (lock BLOB NOT NULL, txn TEXT NOT NULL,
    exclusive INTEGER NOT NULL, PRIMARY KEY (lock, txn)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS txn_locks_by_txn ON txn_locks (txn);
"""
"""The transactions a shard takes part in (version 4; ``txn/state.py``)."""

SCHEMA: Final = (
    """
CREATE TABLE kv (key BLOB PRIMARY KEY, value TEXT NOT NULL, ver INTEGER NOT NULL)
    WITHOUT ROWID;
CREATE INDEX kv_by_ver ON kv (ver);
CREATE TABLE kv_gone (key BLOB PRIMARY KEY, ver INTEGER NOT NULL) WITHOUT ROWID;
CREATE INDEX kv_gone_by_ver ON kv_gone (ver);
CREATE TABLE sessions (client_id TEXT PRIMARY KEY, seq INTEGER NOT NULL,
    result BLOB NOT NULL, touched INTEGER NOT NULL);
CREATE INDEX sessions_by_touched ON sessions (touched);
CREATE TABLE meta (k TEXT PRIMARY KEY, v) WITHOUT ROWID;
"""
    + TXN_TABLES
)

_UPGRADE_FROM_1: Final = """
ALTER TABLE kv ADD COLUMN ver INTEGER NOT NULL DEFAULT 0;
CREATE INDEX kv_by_ver ON kv (ver);
CREATE TABLE kv_gone (key TEXT PRIMARY KEY, ver INTEGER NOT NULL) WITHOUT ROWID;
CREATE INDEX kv_gone_by_ver ON kv_gone (ver);
"""

_UPGRADE_FROM_2: Final = """
UPDATE kv SET key = CAST(key AS BLOB) WHERE typeof(key) = 'text';
UPDATE kv_gone SET key = CAST(key AS BLOB) WHERE typeof(key) = 'text';
"""
"""Version 2 stored keys as TEXT; version 3 stores every key as a BLOB of its UTF-8 bytes
(what a TEXT key's bytes are), so keys compare as bytes. The columns keep their declared
TEXT affinity, which stores a BLOB unchanged; the values stay as they are (TEXT)."""


@dataclass(slots=True)
class ShardMeta:
    """The ``meta`` rows a store keeps in memory."""

    shard: ShardId
    state: str
    applied_index: int


def put_meta(conn: sqlite3.Connection, key: str, value: object) -> None:
    conn.execute("INSERT OR REPLACE INTO meta (k, v) VALUES (?, ?)", (key, value))


def read_meta(conn: sqlite3.Connection, where: str, *, upgrade: bool = False) -> ShardMeta:
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
        version = 2
    if upgrade and version == 2:
        conn.executescript(_UPGRADE_FROM_2)
        version = 3
    if upgrade and version == 3:
        conn.executescript(TXN_TABLES)
        put_meta(conn, "format_version", SCHEMA_VERSION)
        version = SCHEMA_VERSION
    if version != SCHEMA_VERSION:
        raise ShardSchemaVersionError(version, SCHEMA_VERSION)
    shard, state, applied = meta.get("shard"), meta.get("state"), meta.get("applied_index")
    keyspace, _, number = shard.rpartition("/") if isinstance(shard, str) else ("", "", "")
    if not (keyspace and number.isascii() and number.isdigit()):
        raise ShardFormatError(f"{where}: shard {shard!r} is not keyspace/index")
    if not isinstance(state, str) or not isinstance(applied, int):
        raise ShardFormatError(f"{where}: state {state!r} or applied index {applied!r} missing")
    return ShardMeta(ShardId(keyspace, int(number)), state, applied)


MAX_SQLITE_VALUE_BYTES: Final = 4 << 20
"""Longest string, blob or row a shard's SQLite accepts: a SQL write batch's worth
(``MAX_SQL_BATCH_BYTES``; a KV value is at most 1 MiB), so no value arrives larger, and
no function makes one: the cost of one SQLite step grows with the values it handles.
Part of the file format's behaviour: every replica of a group must run with the same."""


def open_file(
    path: str, shard: ShardId | None, *, durable: bool
) -> tuple[sqlite3.Connection, ShardMeta]:
    """A connection to the shard database at ``path`` and its meta, checked (``shard``, if
    given, must match it) and set up: WAL and ``synchronous=NORMAL`` on a ``durable``
    disk (a commit is not fsynced: the Raft log replays what a power loss takes); on a
    cache of a durable log, the rollback journal in memory and no sync at all."""
    if not os.path.isfile(path):
        raise ShardNotFoundError(f"no shard database at {path}")
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        meta = read_meta(conn, path)  # before any pragma writes to a foreign file
        if shard is not None and meta.shard != shard:
            raise ShardFormatError(f"{path} holds shard {meta.shard}, not {shard}")
        try:
            # A cache of a durable log keeps its rollback journal in memory: nothing on
            # disk to create or sync, and a crash discards the file anyway.
            conn.execute(f"PRAGMA journal_mode={'WAL' if durable else 'MEMORY'}")
            conn.execute(f"PRAGMA synchronous={'NORMAL' if durable else 'OFF'}")
            conn.execute("PRAGMA trusted_schema=OFF")  # files arrive from other groups
            # SQLite's own cap (1 GB) would let one SQL write (zeroblob(n), printf
            # padding) take a replica's memory and disk: a value past this fails the
            # write as "too big", the same way on every replica.
            conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, MAX_SQLITE_VALUE_BYTES)
        except sqlite3.Error as exc:
            raise ShardStoreError(f"cannot open {path}: {exc}") from exc
    except BaseException:
        conn.close()
        raise
    return conn, meta


def new_file_image(shard: ShardId, state: str, index: int) -> bytes:
    """The bytes of a new, empty shard database."""
    with closing(sqlite3.connect(":memory:", isolation_level=None)) as mem:
        mem.executescript(SCHEMA)
        put_meta(mem, "format_version", SCHEMA_VERSION)
        put_meta(mem, "shard", str(shard))
        put_meta(mem, "state", state)
        put_meta(mem, "applied_index", index)
        return mem.serialize()


def verify_and_stamp(
    conn: sqlite3.Connection, shard: ShardId | None, applied_index: int | None, state: str | None
) -> bool:
    """Check an exported database (format, upgraded if older; integrity; ``shard``) and
    apply the overrides; whether anything in it changed."""
    upgraded = _format_version(conn) != SCHEMA_VERSION
    meta = read_meta(conn, "shard export", upgrade=True)
    problems = [row[0] for row in conn.execute("PRAGMA quick_check").fetchall()]
    if problems != ["ok"]:
        raise CorruptShardSnapshotError(f"shard export: {problems[:3]}")
    if shard is not None and meta.shard != shard:
        raise ShardFormatError(f"shard export holds shard {meta.shard}, not {shard}")
    if applied_index is not None:
        put_meta(conn, "applied_index", applied_index)
    if state is not None:
        put_meta(conn, "state", state)
    return upgraded or applied_index is not None or state is not None


def _format_version(conn: sqlite3.Connection) -> object:
    try:
        row = conn.execute("SELECT v FROM meta WHERE k = 'format_version'").fetchone()
    except sqlite3.Error:
        return None  # read_meta says what is wrong
    return row[0] if row else None


def write_atomically(path: str, image: bytes, disk: Disk) -> None:
    directory, name = os.path.split(os.path.abspath(path))
    disk.atomic_write(directory, name, [image])


def remove_files(path: str, suffixes: tuple[str, ...]) -> None:
    for suffix in suffixes:
        with suppress(FileNotFoundError):
            os.remove(path + suffix)
