"""FileStorage and MemoryStorage against a naive model: a Python list of entries.

Hypothesis drives random sequences of appends (with overwrites), snapshots (matching the
log or not), compactions, syncs and restarts, with segments small enough to roll every
few entries, and checks after every step that both storages read exactly as the model.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from shardwise.storage import (
    HardState,
    LogEntry,
    MemoryStorage,
    RaftStorage,
    SnapshotMeta,
    entry_size,
)
from shardwise.storage.file import FileStorage


@dataclass
class Model:
    """The obvious implementation: entries ``first ..`` in a list."""

    first: int = 1
    base_term: int = 0
    log: list[LogEntry] = field(default_factory=list)
    snapshot: SnapshotMeta | None = None
    hard_state: HardState = field(default_factory=HardState)

    @property
    def last(self) -> int:
        return self.first + len(self.log) - 1

    def term(self, index: int) -> int:
        return self.base_term if index == self.first - 1 else self.log[index - self.first].term

    def append(self, entries: list[LogEntry]) -> None:
        self.log = self.log[: entries[0].index - self.first] + entries

    def save_snapshot(self, meta: SnapshotMeta) -> None:
        self.snapshot = meta
        if not (self.first <= meta.index <= self.last and self.term(meta.index) == meta.term):
            self.first, self.base_term, self.log = meta.index + 1, meta.term, []

    def compact(self, index: int) -> None:
        self.base_term = self.term(index)
        self.log = self.log[index + 1 - self.first :]
        self.first = index + 1

    def restart(self) -> None:
        if self.snapshot is not None:
            self.compact_to_snapshot(self.snapshot)

    def compact_to_snapshot(self, meta: SnapshotMeta) -> None:
        self.log = self.log[meta.index + 1 - self.first :]
        self.first, self.base_term = meta.index + 1, meta.term

    def read(self, lo: int, hi: int, max_bytes: int) -> list[LogEntry]:
        taken: list[LogEntry] = []
        total = 0
        for entry in self.log[lo - self.first : hi - self.first]:
            total += entry_size(entry)
            if taken and total > max_bytes:
                break
            taken.append(entry)
        return taken


class StorageMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.directory = tempfile.mkdtemp(prefix="storage-model-")
        self.model = Model()
        self.file = self._open_file(cache_bytes=300)
        self.memory = MemoryStorage()

    def _open_file(self, cache_bytes: int) -> FileStorage:
        return FileStorage(self.directory, max_segment_bytes=400, tail_cache_bytes=cache_bytes)

    @property
    def storages(self) -> tuple[RaftStorage, RaftStorage]:
        return self.file, self.memory

    def teardown(self) -> None:
        self.file.close()
        shutil.rmtree(self.directory, ignore_errors=True)

    @rule(data=st.data(), payloads=st.lists(st.binary(max_size=90), min_size=1, max_size=6))
    def append(self, data: st.DataObject, payloads: list[bytes]) -> None:
        model = self.model
        covered = 0 if model.snapshot is None else model.snapshot.index
        lowest = max(model.first, covered + 1)  # committed entries are never rewritten
        start = data.draw(st.integers(lowest, model.last + 1), label="start")
        term = model.term(start - 1) + data.draw(st.integers(0, 2), label="term step")
        bumps = data.draw(st.lists(st.booleans(), min_size=len(payloads), max_size=len(payloads)))
        entries = []
        for offset, (payload, bump) in enumerate(zip(payloads, bumps, strict=True)):
            term += bump
            entries.append(LogEntry(start + offset, term, payload))
        model.append(entries)
        for storage in self.storages:
            storage.append(entries)

    @rule(term_step=st.integers(0, 1), vote=st.sampled_from([None, "a", "b"]))
    def set_hard_state(self, term_step: int, vote: str | None) -> None:
        current = self.model.hard_state
        if term_step == 0 and current.vote is not None:
            vote = current.vote  # a node never changes its vote within a term
        hard_state = HardState(term=current.term + term_step, vote=vote)
        self.model.hard_state = hard_state
        for storage in self.storages:
            storage.set_hard_state(hard_state)

    @rule()
    def sync(self) -> None:
        for storage in self.storages:
            storage.sync()

    @rule(data=st.data(), matching=st.booleans(), payload=st.binary(max_size=50))
    def save_snapshot(self, data: st.DataObject, matching: bool, payload: bytes) -> None:
        model = self.model
        floor = max(model.first, 1 if model.snapshot is None else model.snapshot.index + 1)
        if matching and floor <= model.last:
            index = data.draw(st.integers(floor, model.last), label="snapshot index")
            meta = SnapshotMeta(index, model.term(index), b"conf")
        else:
            # From a leader: beyond our log, or disagreeing with it.
            index = data.draw(st.integers(floor, model.last + 3), label="snapshot index")
            known = model.term(index) if index <= model.last else model.term(model.last)
            meta = SnapshotMeta(index, known + 1, b"other")
        model.save_snapshot(meta)
        for storage in self.storages:
            storage.save_snapshot(meta, payload)
            assert storage.load_snapshot() == (meta, payload)

    @precondition(lambda self: self.model.snapshot is not None)
    @rule(data=st.data())
    def compact(self, data: st.DataObject) -> None:
        model = self.model
        assert model.snapshot is not None
        index = data.draw(st.integers(model.first - 1, model.snapshot.index), label="compact")
        if index >= model.first:
            model.compact(index)
        for storage in self.storages:
            storage.compact(index)

    @rule(cache_bytes=st.sampled_from([0, 300, 1 << 20]))
    def restart(self, cache_bytes: int) -> None:
        for storage in self.storages:
            storage.sync()
        self.file.close()
        self.file = self._open_file(cache_bytes)
        self.memory = self.memory.crash()
        self.model.restart()

    @rule(data=st.data(), max_bytes=st.integers(0, 600))
    def read_with_limit(self, data: st.DataObject, max_bytes: int) -> None:
        model = self.model
        lo = data.draw(st.integers(model.first, model.last + 1), label="lo")
        hi = data.draw(st.integers(lo, model.last + 1), label="hi")
        for storage in self.storages:
            assert storage.entries(lo, hi, max_bytes) == model.read(lo, hi, max_bytes)

    @invariant()
    def reads_match_the_model(self) -> None:
        model = self.model
        for storage in self.storages:
            assert (storage.first_index(), storage.last_index()) == (model.first, model.last)
            assert storage.snapshot_meta() == model.snapshot
            assert storage.hard_state() == model.hard_state
            terms = [storage.term(i) for i in range(model.first - 1, model.last + 1)]
            assert terms == [model.term(i) for i in range(model.first - 1, model.last + 1)]
            assert storage.entries(model.first, model.last + 1) == model.log


StorageMachine.TestCase.settings = settings(
    max_examples=60, stateful_step_count=30, deadline=None, print_blob=True
)
test_storage_matches_the_model = StorageMachine.TestCase
