"""A canonical, typed digest of a shard's content: what replica consistency checks compare.

Two replicas that applied the same log to the same index hold the same shard, but their
SQLite files need not be byte-identical: the file header's change counters and the free
pages depend on where each replica's transactions began and ended (its batch
boundaries), which Raft leaves to each replica. So the digest is over a canonical
serialization instead: every table of the file (the schema SQL of each table and index,
by name) and every row, in key order (``rowid`` for a rowid table, which SQL reads see
as the rows' order; the primary key for a ``WITHOUT ROWID`` table, and for a table whose
rowids are not replicated state: :data:`ROWID_NOT_REPLICATED`), each value with its
storage class (MessagePack keeps SQLite's five apart: an INTEGER 1, a REAL 1.0, a TEXT
'1' and a BLOB x'31' all differ, and a REAL is its exact 64 bits). Nothing is left out:
the ``kv`` rows with their write versions, tombstones, the de-duplication table (so a
recorded error result counts) and ``meta`` (so compare replicas at the same applied
index).
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import tempfile
from collections.abc import Iterator
from typing import Any, Final

import msgspec

from shardwise.sql.identifiers import quote_identifier

DIGEST_BYTES: Final = 16
"""Size of a digest (BLAKE2b): collisions are out of reach, and it prints short."""

ROWID_NOT_REPLICATED: Final = frozenset({"sessions"})
"""The shard's own rowid tables digested in primary-key order, without their rowids.
Each write of a ``sessions`` row is an ``INSERT OR REPLACE``, which gives the row a new
rowid, and how often a replica writes a client's row is its own business: its held puts
(``writecache.py``) write it once for all of the client's puts since they were last
written, and they are written at replica-local moments (its batches, a status or a
metrics scrape that counts the rows). Nothing reads those rowids. (A SQL table is
``sql_*``, and its rowids are the users'.)"""

_encode = msgspec.msgpack.Encoder().encode


def canonical_rows(conn: sqlite3.Connection) -> Iterator[tuple[Any, ...]]:
    """The file's schema and rows in the canonical order (see the module's docstring);
    the caller's transaction decides what state they are read from."""
    schema = conn.execute(
        "SELECT type, name, tbl_name, sql FROM sqlite_master "
        "WHERE name NOT LIKE 'sqlite_%' ORDER BY type, name"
    ).fetchall()
    for row in schema:
        yield ("schema", *row)
    for kind, name, _, sql in ((*map(_str, row),) for row in schema):
        if kind != "table":
            continue
        if "WITHOUT ROWID" in sql.upper() or name in ROWID_NOT_REPLICATED:
            width = len(conn.execute(f"SELECT * FROM {quote_identifier(name)} LIMIT 0").description)
            order = ", ".join(str(i) for i in range(1, width + 1))
            query = f"SELECT * FROM {quote_identifier(name)} ORDER BY {order}"
        else:
            query = f"SELECT rowid, * FROM {quote_identifier(name)} ORDER BY rowid"
        for values in conn.execute(query):
            yield (name, *values)


def content_digest(conn: sqlite3.Connection) -> str:
    """The hex digest of :func:`canonical_rows`. TEXT is taken as its bytes (a SQL write
    can store text that is not UTF-8: ``CAST(x'ff' AS TEXT)``), tagged apart from BLOBs."""
    digest = hashlib.blake2b(digest_size=DIGEST_BYTES)
    factory = conn.text_factory
    conn.text_factory = _Text
    try:
        for row in canonical_rows(conn):
            digest.update(_encode(row))
    finally:
        conn.text_factory = factory
    return digest.hexdigest()


def _str(value: object) -> str:
    """A name or schema text read under either text factory."""
    if isinstance(value, _Text):
        return value.data.decode()
    return value if isinstance(value, str) else ""


class _Text(msgspec.Struct, array_like=True, tag="T"):
    """A TEXT value's bytes, encoded apart from a BLOB of the same bytes."""

    data: bytes


def file_digest(path: str) -> str:
    """:func:`content_digest` of the shard file at ``path`` (opened read-only)."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return content_digest(conn)
    finally:
        conn.close()


def vacuumed_digest(path: str) -> str:
    """SHA-256 of the shard file at ``path`` rewritten by ``VACUUM INTO``: the same bytes
    for the same content, schema and SQLite version, whatever the file's history (its
    header counters, free pages and page order), so replicas can be compared byte for
    byte rather than row by row."""
    with tempfile.TemporaryDirectory() as scratch:
        target = os.path.join(scratch, "vacuumed.db")
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            conn.execute("VACUUM INTO ?", (target,))
        finally:
            conn.close()
        with open(target, "rb") as file:
            return hashlib.file_digest(file, "sha256").hexdigest()
