"""Bulk loading: :meth:`shardwise.client.Client.copy_rows`.

Rows go in chunks. A chunk is one INSERT of its rows as parameters, planned without SQL
text (``sql/param_insert.place_rows``: each row placed by hashing its distribution
value), so each shard it reaches gets its rows as one statement run for each row, in
one log entry; the chunk is a transaction of its own over those shards (atomic, as any
INSERT over several shards). Chunks are pipelined: while one commits, the next is
placed and sent. Each chunk's deadline is its own, so a load of any size is bounded
by its chunks, not by one deadline.

A chunk that fails writes nothing; the chunks before it (and any that were in flight
with it and committed) stay. The error raised is the chunk's, with the offending row
named when a shard refused one (``row 41,233 of the copy (id=..., ...)``) and with how
many rows were written before it: load again from there.
"""

from __future__ import annotations

import asyncio
import itertools
import re
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Final

from shardwise.errors import ShardwiseError, SqlExecutionError, SqlLimitError

if TYPE_CHECKING:
    from shardwise.client.sql import ClusterSql

COPY_CHUNK_ROWS: Final = 50_000
"""Rows per chunk (one transaction): large enough that a shard's share of a chunk is
hundreds of rows over 64 shards, so a transaction's fixed cost (two log entries on each
shard) is spread thin (measured: 46,000 rows/s at 20,000, 57,000 at 50,000)."""

COPY_CHUNK_BYTES: Final = 3 << 20
"""A chunk also ends once its values take this many bytes, as counted (more than their
encoding takes): within a transaction's bound (``MAX_TXN_BYTES``, 4 MiB). A chunk of a
reference table, written to every shard, is refused past that bound before anything
is sent, and goes again in halves."""

COPY_IN_FLIGHT: Final = 2
"""Chunks sent at once: one committing while the next is placed. A client's writes to
the same shards take turns (``client/turns.py``), so more gain nothing."""

MAX_COPY_IN_FLIGHT: Final = 16

_ROW_OF_INSERT: Final = re.compile(r"row ([0-9]+) of the INSERT")


async def copy_rows(
    session: ClusterSql,
    table: str,
    columns: Sequence[str] | None,
    rows: Iterable[Sequence[object]],
    *,
    deadline_s: float,
    chunk_rows: int | None = None,
    in_flight: int = COPY_IN_FLIGHT,
) -> int:
    """Insert ``rows`` (each the values of ``columns``; None: all the table's columns, in
    order) into ``table``, ``chunk_rows`` (default :data:`COPY_CHUNK_ROWS`) a chunk; the
    number of rows written. See the module's note."""
    chunk_rows = COPY_CHUNK_ROWS if chunk_rows is None else chunk_rows
    if chunk_rows < 1:
        raise ValueError("chunk_rows must be at least 1")
    if not 1 <= in_flight <= MAX_COPY_IN_FLIGHT:
        raise ValueError(f"in_flight must be between 1 and {MAX_COPY_IN_FLIGHT}")
    loop = asyncio.get_running_loop()
    written: list[tuple[int, int]] = []  # (first row, rows) of each part committed
    failed: list[tuple[int, BaseException]] = []  # (first row of the part, its error)
    sending: set[asyncio.Task[None]] = set()

    async def send(first: int, chunk: list[Sequence[object]]) -> None:
        """One chunk, or its halves in turn (each half its own transaction), each
        recorded as written or failed with its own first row."""
        values = [value for row in chunk for value in row]
        try:
            await session.insert_rows(table, columns, values, loop.time() + deadline_s)
        except SqlLimitError as exc:  # (refused before anything was sent)
            if exc.limit != "max_txn_bytes" or len(chunk) < 2:
                failed.append((first, exc))
                return
        except Exception as exc:
            failed.append((first, exc))
            return
        else:
            written.append((first, len(chunk)))
            return
        half = len(chunk) // 2
        await send(first, chunk[:half])
        if not failed:
            await send(first + half, chunk[half:])

    source_error: BaseException | None = None
    try:
        try:
            for first, chunk in _chunks(rows, chunk_rows):
                if failed:
                    break
                task = asyncio.ensure_future(send(first, chunk))
                sending.add(task)
                task.add_done_callback(sending.discard)
                while len(sending) >= in_flight and not failed:
                    await asyncio.wait(sending, return_when=asyncio.FIRST_COMPLETED)
        except Exception as exc:  # (the rows' source failed: a bad line of a file)
            source_error = exc
        if sending:  # (let what was sent settle: the count of rows written is exact)
            await asyncio.wait(set(sending))
    finally:
        for task in sending:
            task.cancel()
    if failed:
        first, error = min(failed, key=lambda f: f[0])
        raise _copy_error(error, first, written) from error
    if source_error is not None:
        source_error.add_note(f"shardwise: copy_rows stopped; {_written(written)}")
        raise source_error
    return sum(count for _, count in written)


def _chunks(
    rows: Iterable[Sequence[object]], chunk_rows: int
) -> Iterable[tuple[int, list[Sequence[object]]]]:
    """(position of the first row, its rows) of each chunk."""
    first = 0
    iterator = iter(rows)
    while True:
        chunk: list[Sequence[object]] = []
        size = 0
        for row in itertools.islice(iterator, chunk_rows):
            chunk.append(row)
            # MessagePack's size, or more: a string or blob its length and a header of
            # up to 5 bytes, anything else up to 9, a row's own header up to 3.
            size += 3 + sum(_size(v) for v in row)
            if size >= COPY_CHUNK_BYTES:
                break
        if not chunk:
            return
        yield first, chunk
        first += len(chunk)


def _copy_error(exc: BaseException, first: int, written: list[tuple[int, int]]) -> BaseException:
    """The chunk's error, its row named by its place in the whole copy, and what was
    written."""
    where = _written(written)
    if isinstance(exc, SqlExecutionError):
        message = _ROW_OF_INSERT.sub(
            lambda m: f"row {first + int(m.group(1)):,} of the copy", str(exc.detail)
        )
        if message == exc.detail:
            message = f"{message} (in the chunk from row {first + 1:,})"
        return type(exc)(f"{message}; {where}", exc.shard)
    if isinstance(exc, ShardwiseError):
        exc.add_note(f"shardwise: copy_rows failed at the chunk from row {first + 1:,}; {where}")
    return exc


def _written(written: list[tuple[int, int]]) -> str:
    """``N rows of the copy were written (rows a to b, ...)``, counted from 1."""
    spans: list[list[int]] = []
    for start, count in sorted(written):
        if spans and spans[-1][1] == start:
            spans[-1][1] = start + count
        else:
            spans.append([start, start + count])
    total = sum(count for _, count in written)
    listed = ", ".join(f"{a + 1:,} to {b:,}" for a, b in spans) if spans else "none"
    return f"{total:,} rows of the copy were written (rows {listed})"


def _size(value: object) -> int:
    """At least ``value``'s MessagePack size: a string's or blob's length (in UTF-8)
    and a header of up to 5 bytes; anything else up to 9."""
    if isinstance(value, str):
        return (len(value) if value.isascii() else len(value.encode("utf-8", "replace"))) + 5
    if isinstance(value, bytes):
        return len(value) + 5
    return 9
