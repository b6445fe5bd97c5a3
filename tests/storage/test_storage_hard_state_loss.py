"""Issue 21, finding 2: a deleted hard-state file must not go unnoticed. Started without
it, a node is at term 0 with no vote, and can vote a second time in a term it voted in."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from shardwise.storage import HardState, LogEntry, SnapshotMeta
from shardwise.storage.file import FileStorage
from shardwise.storage.hardstate import HARD_STATE_NAME, MissingHardStateError


def entries(lo: int, hi: int, term: int) -> list[LogEntry]:
    return [LogEntry(i, term, f"{i}".encode()) for i in range(lo, hi)]


def test_a_new_directory_gets_its_hard_state_file_before_any_entry(tmp_path: Path) -> None:
    with FileStorage(tmp_path) as storage:
        assert (tmp_path / HARD_STATE_NAME).exists()
        assert storage.hard_state() == HardState()
    # An empty directory whose file went missing (nothing was ever written) is new again.
    os.remove(tmp_path / HARD_STATE_NAME)
    FileStorage(tmp_path).close()
    assert (tmp_path / HARD_STATE_NAME).exists()


def test_a_log_without_its_hard_state_refuses_to_open(tmp_path: Path) -> None:
    with FileStorage(tmp_path) as storage:
        storage.append(entries(1, 6, term=3))
        storage.set_hard_state(HardState(term=3, vote="b", commit=2))
        storage.sync()
    os.remove(tmp_path / HARD_STATE_NAME)
    with pytest.raises(MissingHardStateError) as caught:
        FileStorage(tmp_path)
    message = str(caught.value)
    assert str(tmp_path / HARD_STATE_NAME) in message
    assert "log entries 1..5" in message and "vote twice" in message
    assert "delete its whole data directory" in message and "docs/operations.md" in message
    # Refusing changed nothing: the log is still there, and the directory can be opened
    # again (by the operator's tools, say) with the same answer.
    with pytest.raises(MissingHardStateError):
        FileStorage(tmp_path)
    assert not (tmp_path / HARD_STATE_NAME).exists()


def test_a_snapshot_without_its_hard_state_refuses_to_open(tmp_path: Path) -> None:
    with FileStorage(tmp_path) as storage:
        storage.append(entries(1, 4, term=2))
        storage.set_hard_state(HardState(term=2, vote="a", commit=3))
        storage.sync()
        storage.save_snapshot(SnapshotMeta(3, 2), b"state")
        storage.compact(3)
    os.remove(tmp_path / HARD_STATE_NAME)
    with pytest.raises(MissingHardStateError, match="a snapshot at entry 3"):
        FileStorage(tmp_path)
