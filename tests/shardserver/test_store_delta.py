"""Change tracking in the shard store: a copy taken while the shard serves, brought up to
date by a delta of what changed since (the pre-copy of a shard move)."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from contextlib import closing
from pathlib import Path

import crc32c
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shardwise.errors import CorruptShardSnapshotError, ShardFormatError
from shardwise.model.config import ShardId
from shardwise.model.kv import Append, Cas, Delete, KVOp, Put
from shardwise.model.sql import SqlStatement
from shardwise.shardserver.migration.image import (
    EXPORT_HEADER,
    apply_delta,
    export_delta,
    export_image,
    install_image,
)
from shardwise.shardserver.migration.staged import StagedImage
from shardwise.shardserver.store import ShardStore
from shardwise.storage.fsutil import CacheDisk

SHARD = ShardId("default", 3)

# str keys and their bytes twins (one key), keys that are not UTF-8; str and bytes values.
keys = st.sampled_from([f"k{i}" for i in range(12)] + [b"k1", b"\xff", b"\x00k", b"k\xc3"])
values = st.one_of(st.text(alphabet="abcé", max_size=6), st.binary(max_size=6))
ops: st.SearchStrategy[KVOp] = st.one_of(
    st.builds(Put, keys, values),
    st.builds(Append, keys, values),
    st.builds(Delete, keys),
    st.builds(Cas, keys, st.one_of(st.none(), values), values),
)
writes = st.lists(st.tuples(st.sampled_from(["", "c1", "c2", "c3"]), ops), max_size=40)


def everything(store: ShardStore) -> tuple[list[tuple[object, ...]], ...]:
    """The rows a copy must agree on: data with versions, and the sessions."""
    store.flush()
    with closing(sqlite3.connect(store.path)) as conn:
        return (
            conn.execute("SELECT key, value, ver FROM kv ORDER BY key").fetchall(),
            conn.execute("SELECT * FROM sessions ORDER BY client_id").fetchall(),
        )


def run(store: ShardStore, batch: Sequence[tuple[str, KVOp]], seqs: dict[str, int]) -> None:
    for client_id, op in batch:
        seqs[client_id] = seqs.get(client_id, 0) + 1
        store.apply(store.applied_index + 1, client_id, seqs[client_id], op)


def base_copy(source: ShardStore, path: Path, index: int = 1) -> ShardStore:
    return install_image(path, export_image(source), shard=SHARD, applied_index=index)


@settings(max_examples=150, deadline=None)
@given(before=writes, after=writes)
def test_a_base_and_its_delta_equal_the_source(
    tmp_path_factory: pytest.TempPathFactory,
    before: list[tuple[str, KVOp]],
    after: list[tuple[str, KVOp]],
) -> None:
    directory = tmp_path_factory.mktemp("delta")
    seqs: dict[str, int] = {}
    with ShardStore.create(directory / "source.db", SHARD, state="serving") as source:
        run(source, before, seqs)
        with base_copy(source, directory / "base.db") as copy:
            base_version = copy.write_version
            assert base_version == source.write_version
            run(source, after, seqs)
            delta = export_delta(source, base_version)
            assert delta is not None
            apply_delta(copy, 50, delta, state="serving")
            assert everything(copy) == everything(source)
            assert (copy.write_version, copy.applied_index, copy.state) == (
                source.write_version,
                50,
                "serving",
            )
        # The version is derived from the rows: a reopened copy has the same one.
        version = source.write_version
    with ShardStore.open(directory / "source.db") as reopened:
        assert reopened.write_version == version


def test_a_delta_carries_only_what_changed(tmp_path: Path) -> None:
    with ShardStore.create(tmp_path / "s.db", SHARD, state="serving") as source:
        run(source, [("", Put(f"k{i}", "v" * 100)) for i in range(1000)], {})
        with base_copy(source, tmp_path / "b.db") as copy:
            run(source, [("w", Put("k1", "new")), ("w", Delete("k2")), ("w", Delete("nope"))], {})
            delta = export_delta(source, copy.write_version)
            assert delta is not None and len(delta) < 300  # not 100 KB of rows
            apply_delta(copy, 9, delta, state="serving")
            assert (copy.get("k1"), copy.get("k2"), copy.count()) == ("new", None, 999)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "s.db"


def test_a_delete_of_a_missing_key_changes_no_version(db_path: Path) -> None:
    with ShardStore.create(db_path, SHARD, state="serving") as store:
        run(store, [("", Delete("ghost")), ("", Cas("k", "x", "y"))], {})
        assert store.write_version == 0
        run(store, [("", Put("k", "v"))], {})
        assert store.write_version == 1


def test_pruned_tombstones_refuse_an_older_base_and_serve_a_newer_one(tmp_path: Path) -> None:
    with ShardStore.create(tmp_path / "s.db", SHARD, state="serving", max_tombstones=4) as source:
        run(source, [("", Put(f"k{i}", "v")) for i in range(10)], {})
        old = source.write_version
        run(source, [("", Delete(f"k{i}")) for i in range(5)], {})  # the fifth prunes two
        assert export_delta(source, old) is None
        with base_copy(source, tmp_path / "b.db") as copy:
            run(source, [("", Delete(f"k{i}")) for i in range(5, 7)], {})
            delta = export_delta(source, copy.write_version)
            assert delta is not None
            apply_delta(copy, 3, delta, state="serving")
            assert everything(copy)[0] == everything(source)[0]
            assert copy.count() == 3


def test_a_sql_change_after_the_base_means_a_full_copy(tmp_path: Path) -> None:
    with ShardStore.create(tmp_path / "s.db", SHARD, state="serving") as source:
        run(source, [("", Put("k", "v"))], {})
        base = source.write_version
        statement = SqlStatement("SELECT 1")
        source.apply_sql(source.applied_index + 1, "c", 1, [statement])
        assert source.write_version == base + 1
        assert export_delta(source, base) is None
        assert export_delta(source, source.write_version) is not None


def test_a_delta_that_does_not_fit_changes_nothing(tmp_path: Path) -> None:
    with ShardStore.create(tmp_path / "s.db", SHARD, state="serving") as source:
        run(source, [("", Put("a", "1")), ("", Put("b", "2"))], {})
        with base_copy(source, tmp_path / "b.db") as copy:
            run(source, [("", Put("a", "3"))], {})
            too_early = export_delta(source, 1)
            assert too_early is not None and export_delta(source, 99) is None
            with pytest.raises(ShardFormatError, match="does not fit"):
                apply_delta(copy, 7, too_early, state="serving")
            good = export_delta(source, copy.write_version)
            assert good is not None
            broken = good[:-1] + bytes([good[-1] ^ 1])
            with pytest.raises(CorruptShardSnapshotError):
                apply_delta(copy, 7, broken, state="serving")
            with pytest.raises(CorruptShardSnapshotError):
                apply_delta(copy, 7, export_image(source), state="serving")  # an image, not a delta
            assert (copy.get("a"), copy.applied_index, copy.write_version) == ("1", 1, 2)
            apply_delta(copy, 7, good, state="serving")
            assert copy.get("a") == "3"


def test_moved_to_takes_the_file_and_its_changes(tmp_path: Path) -> None:
    store = ShardStore.create(tmp_path / "a.db", SHARD, state="serving")
    run(store, [("", Put("k", "v"))], {})
    ShardStore.create(tmp_path / "b.db", SHARD, state="frozen").close()
    with store.moved_to(tmp_path / "b.db") as moved:
        assert (moved.get("k"), moved.state, moved.write_version) == ("v", "serving", 1)
    assert not (tmp_path / "a.db").exists()


def test_a_staged_image_installs_in_place(tmp_path: Path) -> None:
    with ShardStore.create(tmp_path / "s.db", SHARD, state="serving") as source:
        run(source, [("c", Put(f"k{i}", "v" * 50)) for i in range(200)], {})
        image = export_image(source)
    staged = StagedImage(tmp_path / "incoming", CacheDisk())
    for offset in range(0, len(image), 7):  # pieces smaller than the frame's header too
        staged.append(image[offset : offset + 7])
    assert (staged.size, staged.crc, staged.read()) == (len(image), crc32c.crc32c(image), image)
    ShardStore.create(tmp_path / "old.db", SHARD, state="frozen").close()
    with staged.install(
        tmp_path / "old.db", shard=SHARD, applied_index=9, state="pulling", disk=CacheDisk()
    ) as store:
        assert (store.count(), store.applied_index, store.state) == (200, 9, "pulling")
        assert store.last_seq("c") == 200
    assert staged.size == 0 and (tmp_path / "incoming").exists()


def test_a_staged_image_that_is_not_a_shard_is_refused(tmp_path: Path) -> None:
    with ShardStore.create(tmp_path / "s.db", SHARD, state="serving") as source:
        image = bytearray(export_image(source))
    staged = StagedImage(tmp_path / "incoming")
    staged.append(bytes(image[:10]))
    with pytest.raises(CorruptShardSnapshotError, match="truncated"):
        staged.install(tmp_path / "t.db", shard=SHARD, applied_index=1, state="pulling")
    staged.reset()
    page = int.from_bytes(image[EXPORT_HEADER.size + 16 : EXPORT_HEADER.size + 18], "big")
    start = EXPORT_HEADER.size + page  # the second page: the data's root
    image[start : start + 64] = b"\xff" * 64
    staged.append(bytes(image))
    with pytest.raises(CorruptShardSnapshotError):
        staged.install(tmp_path / "t.db", shard=SHARD, applied_index=1, state="pulling")
    assert not (tmp_path / "t.db").exists()
    staged.reset()
    with ShardStore.create(tmp_path / "o.db", ShardId("x", 1), state="serving") as other:
        staged.append(export_image(other))
    with pytest.raises(ShardFormatError, match="not default/3"):
        staged.install(tmp_path / "t.db", shard=SHARD, applied_index=1, state="pulling")
    assert not (tmp_path / "t.db").exists()
