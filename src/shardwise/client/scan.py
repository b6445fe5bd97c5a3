"""``Client.scan``: a keyspace's pairs in key order, read shard by shard, page by page.

Keys are ordered by their bytes (a str key by its UTF-8), as the shards order them. A
hash or ring keyspace scatters keys over all its shards, so every shard is read and the
pages merged (a k-way merge on the keys' bytes: each shard's pairs come in that order,
and a key lives in one shard); a range keyspace reads only the shards the range spans,
in order. Every page is a linearizable read; the whole scan is not a snapshot.
"""

from __future__ import annotations

import heapq
from collections import deque
from dataclasses import dataclass, field
from typing import Final

from shardwise.client.fanout import bind, fan_out
from shardwise.client.router import ShardRouter
from shardwise.errors import RequestRefusedError
from shardwise.model.config import Keyspace, ShardId
from shardwise.model.kv import MAX_SCAN_ROWS, Key, Value, key_bytes
from shardwise.net.leader import CallDeadline
from shardwise.placement import KeyRangePartition
from shardwise.shardserver.protocol import SCAN, ScanRequest

DEFAULT_SCAN_LIMIT: Final = 1000
MAX_SCAN_LIMIT: Final = 100_000
"""Most pairs one ``scan`` returns: the result is held in memory whole."""

SCAN_PAGE_ROWS: Final = 256
"""Pairs asked of one shard per scan request. A hash-scheme scan asks every shard for a
page up front, so this times the shard count is what it may read beyond ``limit``."""


def check_scan(limit: int, page_rows: int) -> None:
    """Refuse a scan over the limits before anything is sent."""
    if not 0 <= limit <= MAX_SCAN_LIMIT:
        raise RequestRefusedError(f"scan limit {limit} is not in [0, {MAX_SCAN_LIMIT}]")
    if not 1 <= page_rows <= MAX_SCAN_ROWS:
        raise RequestRefusedError(f"page_rows {page_rows} is not in [1, {MAX_SCAN_ROWS}]")


@dataclass(frozen=True, slots=True)
class Scan:
    """What one scan asks for."""

    keyspace: Keyspace
    prefix: Key | None
    start: Key | None
    end: Key | None
    limit: int
    page_rows: int
    deadline: float


@dataclass(slots=True)
class _ScanCursor:
    """One shard's part of a scan: the pairs read and not yet merged, and where to go on."""

    shard: ShardId
    start: Key | None
    rows: deque[tuple[Key, Value]] = field(default_factory=deque)
    done: bool = False


async def run_scan(router: ShardRouter, scan: Scan) -> list[tuple[Key, Value]]:
    """Up to ``scan.limit`` pairs (see the module's docstring)."""
    if scan.keyspace.scheme.kind == "range":
        return await _scan_ranges(router, scan)
    return await _scan_merge(router, scan)


async def _scan_page(router: ShardRouter, scan: Scan, cursor: _ScanCursor, rows: int) -> None:
    call = CallDeadline.starting_now(f"scan of shard {cursor.shard}", scan.deadline)
    request = ScanRequest(
        cursor.shard, prefix=scan.prefix, start=cursor.start, end=scan.end, limit=rows
    )
    items = (await router.call(cursor.shard, SCAN, request, call)).items
    cursor.rows.extend(items)
    if len(items) < rows:
        cursor.done = True
    else:
        # The smallest key above the last one: the next page starts right after it.
        cursor.start = next_key(items[-1][0])


def next_key(key: Key) -> Key:
    """The smallest key after ``key`` in byte order (its bytes and a zero byte), as a
    str when ``key`` is one (what a server of an older version can read)."""
    return key + "\x00" if isinstance(key, str) else key + b"\x00"


async def _scan_merge(router: ShardRouter, scan: Scan) -> list[tuple[Key, Value]]:
    name, shards = scan.keyspace.name, scan.keyspace.scheme.shards
    cursors = [_ScanCursor(ShardId(name, i), scan.start) for i in range(shards)]
    first = min(scan.page_rows, scan.limit)
    await fan_out([bind(_scan_page, router, scan, c, first) for c in cursors])
    # A k-way merge: each shard's pairs come in key order, and a key lives in one shard.
    heap = [(key_bytes(c.rows[0][0]), i) for i, c in enumerate(cursors) if c.rows]
    heapq.heapify(heap)
    out: list[tuple[Key, Value]] = []
    while heap and len(out) < scan.limit:
        _, i = heapq.heappop(heap)
        cursor = cursors[i]
        out.append(cursor.rows.popleft())
        if not cursor.rows and not cursor.done and len(out) < scan.limit:
            rows = min(scan.page_rows, scan.limit - len(out))
            await _scan_page(router, scan, cursor, rows)
        if cursor.rows:
            heapq.heappush(heap, (key_bytes(cursor.rows[0][0]), i))
    return out


async def _scan_ranges(router: ShardRouter, scan: Scan) -> list[tuple[Key, Value]]:
    splits = [key_bytes(point) for point in scan.keyspace.scheme.split_points]
    prefix = None if scan.prefix is None else key_bytes(scan.prefix)
    start = b"" if scan.start is None else key_bytes(scan.start)
    low = max(start, prefix or b"") or None
    out: list[tuple[Key, Value]] = []
    for index in KeyRangePartition(splits).partitions_for_range(low, scan.end):
        lower = splits[index - 1] if index > 0 else b""
        if prefix is not None and lower >= prefix and not lower.startswith(prefix):
            break  # this shard and every later one start above all keys with the prefix
        cursor = _ScanCursor(ShardId(scan.keyspace.name, index), scan.start)
        while not cursor.done and len(out) < scan.limit:
            rows = min(scan.page_rows, scan.limit - len(out))
            await _scan_page(router, scan, cursor, rows)
            out.extend(cursor.rows)
            cursor.rows.clear()
        if len(out) >= scan.limit:
            break
    return out
