"""A replica's side of the consistency check: digest each serving shard at the index of
a :class:`~shardwise.shardserver.commands.CheckShards` entry, and keep the digests.

Every replica applies the entry at the same log index, so each hashes the same state
(as etcd hashes its KV state at a revision, and CockroachDB its replicas' checksums at a
Raft index). Applying it costs the apply loop only a copy of each shard's file (a file
read after the commit the copy needs, bounded by :data:`MAX_CHECK_BYTES`); the hashing
(``digest.content_digest`` of the copy, opened in memory) runs on a thread of its own, and
the result is kept here, with its index, for the leader's :mod:`checker` to collect.

The digest leaves out one row: ``meta.applied_index``, the last index that changed *this
file*, which a replica that restored the shard from a Raft snapshot sets to the
snapshot's index while one that applied the log holds the index of the shard's last
write. Everything else a shard holds is replicated state (see ``digest.py``).

**Test faults.** With ``SHARDWISE_TEST_FAULTS=1`` in its environment, a server reads the
file ``test-fault`` in its data directory at start: ``halt-on-check`` makes it fail to
apply a check (it halts, reason and all), ``diverge-on-check`` makes it write one key
that no other replica has into its first serving shard just before it digests (a planted
divergence, the control for the checker). Without the variable the file is ignored.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Final

from shardwise.errors import ShardStoreError
from shardwise.model.config import ShardId
from shardwise.model.kv import Put
from shardwise.shardserver.digest import content_digest

if TYPE_CHECKING:
    from shardwise.shardserver.statemachine import ShardGroupStateMachine
    from shardwise.shardserver.store import ShardStore

logger = logging.getLogger(__name__)

MAX_CHECK_BYTES: Final = 256 << 20
"""Shard bytes one check copies on the apply loop and holds until hashed: reading 256 MiB
of page cache takes ~0.1-0.3 s, well under an election timeout. Shards past it (in the
order of their ids) are skipped by that check and reported as skipped."""

MAX_KEPT_CHECKS: Final = 8
"""Checks whose digests a replica keeps (the newest): a leader collects them within
seconds of the entry, so a few cover overlapping checks and a slow collector."""

FAULT_ENV: Final = "SHARDWISE_TEST_FAULTS"
FAULT_FILE: Final = "test-fault"
HALT_ON_CHECK: Final = "halt-on-check"
DIVERGE_ON_CHECK: Final = "diverge-on-check"
PLANTED_KEY: Final = b"\x00planted-divergence"


def read_fault(data_dir: Path) -> str:
    """The test fault this server plays ("" unless enabled: see the module's docstring)."""
    if os.environ.get(FAULT_ENV) != "1":
        return ""
    try:
        fault = (data_dir / FAULT_FILE).read_text().strip()
    except OSError:
        return ""
    if fault not in (HALT_ON_CHECK, DIVERGE_ON_CHECK):
        raise ValueError(f"unknown test fault {fault!r} in {data_dir / FAULT_FILE}")
    logger.warning("test fault %r is on", fault)
    return fault


@dataclass(slots=True)
class ReplicaCheck:
    """This replica's digests for the check logged at ``index``."""

    index: int
    digests: dict[ShardId, str] = field(default_factory=dict)
    skipped: list[ShardId] = field(default_factory=list)
    pending: int = 0
    """Shards copied but not hashed yet."""
    error: str = ""


def image_digest(image: bytes | bytearray) -> str:
    """The check's digest of a shard file's image: ``content_digest`` of the database
    without its ``applied_index`` row (see the module's docstring), from a private copy."""
    data = bytearray(image)
    if len(data) > 19 and data[18] == 2:  # a WAL-mode header: an in-memory copy has none
        data[18] = data[19] = 1
    conn = sqlite3.connect(":memory:")
    try:
        conn.deserialize(bytes(data))
        conn.execute("DELETE FROM meta WHERE k = 'applied_index'")
        return content_digest(conn)
    finally:
        conn.close()


class ShardChecks:
    """The digests of the latest checks this replica applied (thread-safe reads)."""

    def __init__(self, fault: str = "") -> None:
        self.fault = fault
        self._results: dict[int, ReplicaCheck] = {}
        self._lock = threading.Lock()
        self._executor: ThreadPoolExecutor | None = None

    def take(self, index: int, sm: ShardGroupStateMachine, shards: Sequence[ShardId] = ()) -> None:
        """Apply the check logged at ``index``: copy each serving shard (of ``shards``,
        or all) and hash the copies off the loop."""
        if self.fault == HALT_ON_CHECK:
            raise ShardStoreError(f"test fault {HALT_ON_CHECK!r} at index {index}")
        wanted = set(shards)
        stores: list[tuple[ShardId, ShardStore]] = []
        for shard, _ in sm.held():
            store = sm.serving_store(shard)
            if store is not None and (not wanted or shard in wanted):
                stores.append((shard, store))
        if self.fault == DIVERGE_ON_CHECK and stores:
            stores[0][1].apply(index, "", 0, Put(PLANTED_KEY, b"only here"))
            logger.warning("test fault: planted a key in %s at index %d", stores[0][0], index)
        check = ReplicaCheck(index)
        images: list[tuple[ShardId, bytearray]] = []
        budget = MAX_CHECK_BYTES
        for shard, store in stores:
            size = store.size_bytes()
            if size > budget:
                check.skipped.append(shard)
                continue
            budget -= size
            images.append((shard, store.file_image(reserve=0)))
        check.pending = len(images)
        with self._lock:
            self._results[index] = check
            while len(self._results) > MAX_KEPT_CHECKS:
                del self._results[min(self._results)]
        if images:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(1, thread_name_prefix="shard-check")
            self._executor.submit(self._hash, check, images)

    def _hash(self, check: ReplicaCheck, images: list[tuple[ShardId, bytearray]]) -> None:
        for shard, image in images:
            try:
                digest = image_digest(image)
            except sqlite3.Error as exc:
                digest = ""
                logger.error("check at index %d: cannot digest %s: %s", check.index, shard, exc)
                with self._lock:
                    check.error = f"{shard}: {exc}"
            with self._lock:
                if digest:
                    check.digests[shard] = digest
                check.pending -= 1

    def result(self, index: int) -> ReplicaCheck | None:
        """A copy of the check at ``index`` as it stands (``None``: not applied here)."""
        with self._lock:
            check = self._results.get(index)
            if check is None:
                return None
            return ReplicaCheck(
                check.index, dict(check.digests), list(check.skipped), check.pending, check.error
            )

    def close(self) -> None:
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)
