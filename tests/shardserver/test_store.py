"""The shard store: one SQLite file per shard, replayed idempotently, shipped whole."""

from __future__ import annotations

import os
import shutil
import sqlite3
import struct
import tempfile
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import crc32c
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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
from shardwise.model.config import ShardId
from shardwise.model.kv import (
    MAX_KEY_BYTES,
    MAX_SCAN_ROWS,
    MAX_VALUE_BYTES,
    Append,
    Cas,
    Delete,
    Get,
    Key,
    KVOp,
    KVResult,
    Put,
    Value,
    check_op,
    key_bytes,
)
from shardwise.raft.client_sessions import MAX_SESSIONS, SessionTable
from shardwise.raft.kv import KVStateMachine, decode_result, encode_command
from shardwise.shardserver import kvops
from shardwise.shardserver import store as store_module
from shardwise.shardserver.migration import image as image_module
from shardwise.shardserver.migration.image import (
    EXPORT_HEADER,
    EXPORT_MAGIC,
    export_delta,
    export_image,
    install_image,
)
from shardwise.shardserver.shardfile import SCHEMA_VERSION
from shardwise.shardserver.store import ShardStore
from shardwise.shardserver.tracking import ChangeTracker
from shardwise.storage.fsutil import CacheDisk

SHARD = ShardId("default", 7)


@pytest.fixture
def db(tmp_path: Path) -> Iterator[ShardStore]:
    with ShardStore.create(tmp_path / "shard.db", SHARD, state="serving") as store:
        yield store


class Client:
    """Applies ops at consecutive indexes, as the group's state machine would."""

    def __init__(self, store: ShardStore, client_id: str = "") -> None:
        self.store = store
        self.client_id = client_id

    def run(self, op: KVOp, seq: int = 0) -> KVResult | None:
        index = self.store.applied_index + 1
        return self.store.apply(index, self.client_id, seq, op)


def contents(store: ShardStore) -> list[tuple[Key, Value]]:
    return store.scan(limit=MAX_SCAN_ROWS)


def frame(image: bytes) -> bytes:
    """Frame an image as an export is framed (pins the format)."""
    length = struct.pack("<Q", len(image))
    checksum = crc32c.crc32c(image, crc32c.crc32c(length))
    return EXPORT_HEADER.pack(EXPORT_MAGIC, len(image), checksum) + image


# --- making and opening ------------------------------------------------------------------


def test_a_new_store_is_empty_and_remembers_what_it_is(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    with ShardStore.create(path, SHARD, state="pulling", index=4) as store:
        assert (store.shard, store.state, store.applied_index) == (SHARD, "pulling", 4)
        assert store.count() == 0
        assert store.get("k") is None
        assert store.scan() == []
        assert store.size_bytes() > 0
        assert store.path == str(path)
    with ShardStore.open(path) as store:
        assert (store.shard, store.state, store.applied_index) == (SHARD, "pulling", 4)


def test_open_and_create_refuse_what_they_cannot_take(tmp_path: Path) -> None:
    with pytest.raises(ShardNotFoundError):
        ShardStore.open(tmp_path / "missing.db")
    ShardStore.create(tmp_path / "s.db", SHARD, state="serving").close()
    with pytest.raises(ShardExistsError):
        ShardStore.create(tmp_path / "s.db", SHARD, state="serving")
    with pytest.raises(ShardFormatError, match="not default/8"):
        ShardStore.open(tmp_path / "s.db", ShardId("default", 8))
    (tmp_path / "junk.db").write_bytes(b"not a database at all" * 100)
    with pytest.raises(ShardFormatError):
        ShardStore.open(tmp_path / "junk.db")
    with closing_connection(tmp_path / "other.db") as conn:
        conn.execute("CREATE TABLE t (x)")
    with pytest.raises(ShardFormatError):
        ShardStore.open(tmp_path / "other.db")
    (tmp_path / "empty.db").write_bytes(b"")
    with pytest.raises(ShardFormatError):
        ShardStore.open(tmp_path / "empty.db")


def test_another_schema_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    ShardStore.create(path, SHARD, state="serving").close()
    with closing_connection(path) as conn:
        conn.execute("UPDATE meta SET v = ? WHERE k = 'format_version'", (SCHEMA_VERSION + 1,))
    with pytest.raises(ShardSchemaVersionError) as info:
        ShardStore.open(path)
    assert (info.value.found, info.value.expected) == (SCHEMA_VERSION + 1, SCHEMA_VERSION)


def closing_connection(path: Path | str) -> closing[sqlite3.Connection]:
    """A plain sqlite3 connection to poke at a file, closed on exit (autocommit)."""
    return closing(sqlite3.connect(path, isolation_level=None))


# --- operations and de-duplication -------------------------------------------------------


def test_every_operation_and_its_result(db: ShardStore) -> None:
    c = Client(db)
    assert c.run(Get("k")) == KVResult(value=None)
    assert c.run(Put("k", "a")) == KVResult()
    assert c.run(Append("k", "b")) == KVResult()
    assert c.run(Append("new", "x")) == KVResult()
    assert c.run(Get("k")) == KVResult(value="ab")
    assert c.run(Cas("k", "zz", "c")) == KVResult(ok=False)
    assert c.run(Cas("k", "ab", "c")) == KVResult()
    assert c.run(Cas("absent", None, "y")) == KVResult()
    assert c.run(Cas("absent", None, "z")) == KVResult(ok=False)
    assert c.run(Delete("new")) == KVResult()
    assert c.run(Delete("never there")) == KVResult()
    assert contents(db) == [("absent", "y"), ("k", "c")]
    assert db.applied_index == 11
    assert db.count() == 2


def test_a_retry_returns_the_first_result_and_applies_once(db: ShardStore) -> None:
    c = Client(db, "c1")
    first = c.run(Append("k", "x"), seq=1)
    assert c.run(Append("k", "x"), seq=1) == first
    assert c.run(Get("k"), seq=2) == KVResult(value="x")
    db.apply(db.applied_index + 1, "c2", 1, Put("k", "other"))
    assert c.run(Get("k"), seq=2) == KVResult(value="x")  # the first answer, not a new read
    assert db.last_seq("c1") == 2
    assert db.last_seq("nobody") == 0


def test_an_older_command_is_stale_and_not_applied(db: ShardStore) -> None:
    c = Client(db, "c1")
    c.run(Put("k", "new"), seq=5)
    assert c.run(Put("k", "old"), seq=4) == KVResult(ok=False, stale=True)
    assert db.get("k") == "new"
    assert db.last_seq("c1") == 5
    assert db.applied_index == 2  # the stale command still took its index


def test_no_client_id_opts_out_of_de_duplication(db: ShardStore) -> None:
    c = Client(db)
    c.run(Append("k", "x"), seq=1)
    c.run(Append("k", "x"), seq=1)
    assert db.get("k") == "xx"
    assert db.last_seq("") == 0


def test_sessions_are_evicted_least_recently_heard_from_first(tmp_path: Path) -> None:
    with ShardStore.create(tmp_path / "s.db", SHARD, state="serving", max_sessions=2) as db:
        Client(db, "a").run(Append("k", "a"), seq=1)
        Client(db, "b").run(Append("k", "b"), seq=1)
        Client(db, "a").run(Append("k", "a"), seq=1)  # a retry: "a" is heard from again
        Client(db, "c").run(Append("k", "c"), seq=1)  # evicts "b"
        assert (db.last_seq("a"), db.last_seq("b"), db.last_seq("c")) == (1, 0, 1)
        Client(db, "b").run(Append("k", "b"), seq=1)  # forgotten: applied again; evicts "a"
        assert db.get("k") == "abcb"
        assert db.last_seq("a") == 0


def test_sessions_survive_a_reopen(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    with ShardStore.create(path, SHARD, state="serving") as db:
        first = Client(db, "c1").run(Append("k", "x"), seq=1)
    with ShardStore.open(path, SHARD) as db:
        assert Client(db, "c1").run(Append("k", "x"), seq=1) == first
        assert db.get("k") == "x"


# --- replay --------------------------------------------------------------------------------


def test_an_applied_index_is_skipped(db: ShardStore) -> None:
    assert db.apply(1, "c1", 1, Append("k", "x")) == KVResult()
    assert db.apply(1, "c1", 1, Append("k", "x")) is None
    assert db.apply(1, "", 0, Append("k", "x")) is None
    assert db.apply(3, "", 0, Append("k", "y")) == KVResult()
    assert db.apply(2, "", 0, Append("k", "z")) is None  # below the applied index
    assert (db.get("k"), db.applied_index) == ("xy", 3)


def test_the_applied_index_survives_a_reopen(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    with ShardStore.create(path, SHARD, state="serving") as db:
        db.apply(9, "", 0, Put("k", "v"))
    with ShardStore.open(path) as db:
        assert db.applied_index == 9


def commands(n: int) -> list[tuple[int, str, int, KVOp]]:
    return [(i, f"c{i % 3}", i, Append(f"k{i % 4}", str(i))) for i in range(1, n + 1)]


def test_replay_after_a_crash_applies_each_entry_once(tmp_path: Path) -> None:
    log = commands(30)
    with ShardStore.create(tmp_path / "ref.db", SHARD, state="serving") as ref:
        for entry in log:
            ref.apply(*entry)
        expected = contents(ref)
    live = tmp_path / "live"
    live.mkdir()
    crashed = tmp_path / "crashed"
    crashed.mkdir()
    with ShardStore.create(live / "s.db", SHARD, state="serving") as db:
        for entry in log[:20]:
            db.apply(*entry)
        # The process dies here: what is on disk is the file and its WAL, not checkpointed.
        assert (live / "s.db-wal").exists()
        for name in os.listdir(live):
            shutil.copy(live / name, crashed / name)
    with ShardStore.open(crashed / "s.db", SHARD) as db:
        assert db.applied_index == 20
        results = [db.apply(*entry) for entry in log]  # the host replays from its log
        assert results[:20] == [None] * 20
        assert all(r == KVResult() for r in results[20:])
        assert contents(db) == expected


def test_a_failed_apply_changes_nothing(db: ShardStore, monkeypatch: pytest.MonkeyPatch) -> None:
    db.apply(1, "c1", 1, Put("k", "v"))

    def explode(conn: sqlite3.Connection, op: KVOp, changes: ChangeTracker) -> KVResult:
        conn.execute("INSERT INTO kv (key, value, ver) VALUES ('half', 'done', 9)")
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(kvops, "execute", explode)
    with pytest.raises(ShardStoreError, match="disk I/O error"):
        db.apply(2, "c1", 2, Put("k", "w"))
    assert (db.applied_index, db.get("half"), db.last_seq("c1")) == (1, None, 1)
    monkeypatch.undo()
    assert db.apply(2, "c1", 2, Put("k", "w")) == KVResult()


def test_the_state_changes_through_the_log(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    with ShardStore.create(path, SHARD, state="serving") as db:
        db.apply(1, "", 0, Put("k", "v"))
        assert db.set_state(2, "frozen")
        assert not db.set_state(2, "garbage")
        assert not db.set_state(1, "garbage")
        assert (db.state, db.applied_index) == ("frozen", 2)
    with ShardStore.open(path) as db:
        assert (db.state, db.applied_index) == ("frozen", 2)


# --- reads -----------------------------------------------------------------------------------


def test_scan_orders_bounds_filters_and_limits(db: ShardStore) -> None:
    keys = ["b", "a", "ab", "abc", "a\x00", "ac", "é", "z", "日本", "\U0001f600", "", "b\uffff"]
    for i, key in enumerate(keys, 1):
        db.apply(i, "", 0, Put(key, key.upper()))
    everything = sorted((k, k.upper()) for k in keys)
    assert contents(db) == everything  # SQLite's order is Python's str order
    assert db.scan("a") == [(k, v) for k, v in everything if k.startswith("a")]
    assert db.scan("ab") == [("ab", "AB"), ("abc", "ABC")]
    assert db.scan("zz") == []
    assert db.scan(start="ab", end="b") == [("ab", "AB"), ("abc", "ABC"), ("ac", "AC")]
    assert db.scan("a", start="ab", end="abc") == [("ab", "AB")]
    assert db.scan("a", start="0") == db.scan("a")  # start below the prefix
    assert db.scan("b", start="c") == []  # start above the prefix
    assert db.scan(limit=3) == everything[:3]
    assert db.scan(limit=0) == []
    assert db.scan("a", limit=2) == [("a", "A"), ("a\x00", "A\x00")]
    page = db.scan(limit=5)
    assert db.scan(start=key_bytes(page[-1][0]) + b"\x00", limit=5) == everything[5:10]
    assert db.count() == len(keys)


def test_scan_is_bounded(db: ShardStore) -> None:
    with pytest.raises(ShardLimitError):
        db.scan(limit=MAX_SCAN_ROWS + 1)
    with pytest.raises(ShardLimitError):
        db.scan(limit=-1)


def test_size_grows_with_the_data(db: ShardStore) -> None:
    before = db.size_bytes()
    for i in range(1, 21):
        db.apply(i, "", 0, Put(f"k{i}", "v" * 1000))
    assert db.size_bytes() > before + 20_000


# --- limits ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "op",
    [
        Get("k" * (MAX_KEY_BYTES + 1)),
        Delete("é" * (MAX_KEY_BYTES // 2 + 1)),
        Put("k", "v" * (MAX_VALUE_BYTES + 1)),
        Append("k", "v" * (MAX_VALUE_BYTES + 1)),
        Cas("k", "v" * (MAX_VALUE_BYTES + 1), "v"),
        Cas("k", None, "日" * (MAX_VALUE_BYTES // 3 + 1)),
    ],
    ids=["get-key", "delete-key-utf8", "put", "append", "cas-expected", "cas-new-utf8"],
)
def test_oversized_input_is_refused_and_changes_nothing(db: ShardStore, op: KVOp) -> None:
    db.apply(1, "c1", 1, Put("k", "v"))
    with pytest.raises(ShardLimitError):
        check_op(op)
    with pytest.raises(ShardLimitError):
        db.apply(2, "c1", 2, op)
    assert (db.applied_index, db.get("k"), db.last_seq("c1")) == (1, "v", 1)


def test_the_largest_key_and_value_fit(db: ShardStore) -> None:
    key, value = "k" * MAX_KEY_BYTES, "v" * MAX_VALUE_BYTES
    check_op(Put(key, value))
    assert db.apply(1, "", 0, Put(key, value)) == KVResult()
    assert db.get(key) == value


def test_an_append_past_the_value_limit_is_not_applied(db: ShardStore) -> None:
    db.apply(1, "", 0, Put("k", "v" * MAX_VALUE_BYTES))
    assert db.apply(2, "c1", 1, Append("k", "w")) == KVResult(ok=False)
    assert db.apply(3, "c1", 1, Append("k", "w")) == KVResult(ok=False)  # retry: same answer
    assert db.get("k") == "v" * MAX_VALUE_BYTES
    assert db.applied_index == 3


def test_export_and_install_are_bounded(
    db: ShardStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = export_image(db)
    monkeypatch.setattr(image_module, "MAX_EXPORT_BYTES", db.size_bytes() - 1)
    with pytest.raises(ShardLimitError):
        export_image(db)
    with pytest.raises(ShardLimitError):
        install_image(tmp_path / "new.db", data)
    assert not (tmp_path / "new.db").exists()


# --- export, install, delete -------------------------------------------------------------


def fill(db: ShardStore) -> dict[str, KVResult | None]:
    """Some data and sessions; the first result each client got."""
    firsts = {}
    for i in range(1, 41):
        client = f"c{i % 5}"
        firsts[client] = db.apply(i, client, i, Append(f"k{i % 7}", f"{i},"))
    db.set_state(41, "frozen")
    return firsts


def test_export_and_install_round_trip(db: ShardStore, tmp_path: Path) -> None:
    firsts = fill(db)
    data = export_image(db)
    with install_image(tmp_path / "copy.db", data, shard=SHARD) as copy:
        assert (copy.shard, copy.state, copy.applied_index) == (SHARD, "frozen", 41)
        assert contents(copy) == contents(db)
        assert copy.size_bytes() == db.size_bytes()
        index = 41
        for client in sorted(firsts):
            # The de-duplication state moved with the shard: retries get the first result.
            seq = db.last_seq(client)
            assert copy.last_seq(client) == seq
            assert copy.apply(index + 1, client, seq, Append("k0", "again")) == firsts[client]
            stale = copy.apply(index + 2, client, seq - 1, Get("k0"))
            assert stale == KVResult(ok=False, stale=True)
            index += 2
        assert copy.get("k0") == db.get("k0")
        copy.apply(index + 1, "new", 1, Put("k0", "changed"))  # the copy is writable, in WAL mode
        assert export_image(copy) != data


def test_install_can_move_a_shard_into_another_log(db: ShardStore, tmp_path: Path) -> None:
    fill(db)
    target = tmp_path / "target.db"
    with install_image(target, export_image(db), applied_index=7, state="serving") as copy:
        assert (copy.state, copy.applied_index) == ("serving", 7)
        assert contents(copy) == contents(db)
        assert copy.apply(8, "", 0, Put("x", "y")) == KVResult()  # the new group's indexes
    # Eviction order is the shard's own, not the log's: a new client is the most recent.
    with ShardStore.open(target, max_sessions=5) as copy:
        copy.apply(9, "newcomer", 1, Put("x", "z"))
        assert copy.last_seq("newcomer") == 1
        assert copy.last_seq("c1") == 0  # c1 was heard from least recently (at index 36)


def test_install_replaces_an_existing_shard(db: ShardStore, tmp_path: Path) -> None:
    fill(db)
    path = tmp_path / "old.db"
    with ShardStore.create(path, SHARD, state="pulling") as old:
        for i in range(1, 30):
            old.apply(i, "", 0, Put(f"old{i}", "x"))
        data = export_image(db)
        old_wal = Path(str(path) + "-wal")
        assert old_wal.exists()
        # The old store is closed by the caller before an install; its WAL is dropped.
        shutil.copy(old_wal, tmp_path / "saved-wal")
    old_wal.write_bytes((tmp_path / "saved-wal").read_bytes())  # as if not checkpointed
    with install_image(path, data, shard=SHARD) as new:
        assert contents(new) == contents(db)
        assert new.applied_index == 41
    assert not Path(str(path) + ".tmp").exists()


def corruptions(data: bytes) -> Iterator[tuple[str, bytes]]:
    for offset in (0, 5, 12, 16, 16 + 18, 16 + 100, len(data) // 2, len(data) - 1):
        flipped = bytearray(data)
        flipped[offset] ^= 0x10
        yield f"bit flipped at {offset}", bytes(flipped)
    for size in (0, 10, 16, len(data) // 2, len(data) - 1):
        yield f"truncated to {size}", data[:size]
    yield "trailing bytes", data + b"\x00"


def test_corrupt_data_is_refused_and_replaces_nothing(db: ShardStore, tmp_path: Path) -> None:
    fill(db)
    data = export_image(db)
    path = tmp_path / "existing.db"
    with ShardStore.create(path, SHARD, state="serving") as existing:
        existing.apply(1, "", 0, Put("mine", "kept"))
    before = path.read_bytes()
    for what, bad in corruptions(data):
        with pytest.raises(CorruptShardSnapshotError):
            install_image(path, bad)
        assert path.read_bytes() == before, what
        with pytest.raises(CorruptShardSnapshotError):
            install_image(tmp_path / "fresh.db", bad)
        assert not (tmp_path / "fresh.db").exists(), what
    with ShardStore.open(path) as existing:
        assert contents(existing) == [("mine", "kept")]


def test_a_checksummed_but_broken_image_is_refused(db: ShardStore, tmp_path: Path) -> None:
    fill(db)
    image = bytearray(export_image(db)[EXPORT_HEADER.size :])
    page = int.from_bytes(image[16:18], "big")
    image[page : page + 64] = b"\xff" * 64  # the data's root page gone bad at the source
    with pytest.raises(CorruptShardSnapshotError):
        install_image(tmp_path / "s.db", frame(bytes(image)))
    assert not (tmp_path / "s.db").exists()


def test_an_image_of_format_1_is_upgraded_on_install(tmp_path: Path) -> None:
    with closing(sqlite3.connect(":memory:")) as mem:
        mem.executescript(
            "CREATE TABLE kv (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;"
            "CREATE TABLE sessions (client_id TEXT PRIMARY KEY, seq INTEGER NOT NULL,"
            " result BLOB NOT NULL, touched INTEGER NOT NULL);"
            "CREATE INDEX sessions_by_touched ON sessions (touched);"
            "CREATE TABLE meta (k TEXT PRIMARY KEY, v) WITHOUT ROWID;"
            "INSERT INTO kv VALUES ('old', 'value');"
            "INSERT INTO meta VALUES ('format_version', 1), ('shard', 'default/7'),"
            " ('state', 'serving'), ('applied_index', 5);"
        )
        image = frame(mem.serialize())
    with install_image(tmp_path / "s.db", image, shard=SHARD) as store:
        assert (store.get("old"), store.write_version, store.applied_index) == ("value", 0, 5)
        store.apply(6, "", 0, Put("new", "v"))
        assert store.write_version == 1
        delta = export_delta(store, 0)
        assert delta is not None
    with closing(sqlite3.connect(tmp_path / "s.db")) as conn:
        version = conn.execute("SELECT v FROM meta WHERE k = 'format_version'").fetchone()[0]
        assert version == SCHEMA_VERSION


def test_install_refuses_another_schema_version_or_shard(db: ShardStore, tmp_path: Path) -> None:
    data = export_image(db)
    with pytest.raises(ShardFormatError, match="not default/8"):
        install_image(tmp_path / "s.db", data, shard=ShardId("default", 8))
    with closing_connection(":memory:") as mem:
        mem.deserialize(data[EXPORT_HEADER.size :])
        mem.execute("UPDATE meta SET v = 99 WHERE k = 'format_version'")
        other_version = frame(mem.serialize())
    with pytest.raises(ShardSchemaVersionError):
        install_image(tmp_path / "s.db", other_version)
    assert not (tmp_path / "s.db").exists()


def test_the_export_is_a_plain_sqlite_file(db: ShardStore, tmp_path: Path) -> None:
    fill(db)
    plain = tmp_path / "plain.db"
    plain.write_bytes(export_image(db)[EXPORT_HEADER.size :])
    with closing_connection(plain) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("delete",)
        assert conn.execute("SELECT count(*) FROM kv").fetchone() == (db.count(),)


def test_delete_removes_every_file(tmp_path: Path) -> None:
    db = ShardStore.create(tmp_path / "s.db", SHARD, state="garbage")
    db.apply(1, "", 0, Put("k", "v"))
    assert {p.name for p in tmp_path.iterdir()} >= {"s.db", "s.db-wal"}
    db.delete()
    assert list(tmp_path.iterdir()) == []
    db.close()  # idempotent
    with pytest.raises(ShardStoreClosedError):
        db.get("k")
    with pytest.raises(ShardStoreClosedError):
        db.apply(2, "", 0, Put("k", "v"))


def test_close_leaves_only_the_database_file(tmp_path: Path) -> None:
    with ShardStore.create(tmp_path / "s.db", SHARD, state="serving") as db:
        db.apply(1, "", 0, Put("k", "v"))
        db.checkpoint()
        assert Path(str(db.path) + "-wal").stat().st_size == 0
    assert [p.name for p in tmp_path.iterdir()] == ["s.db"]


# --- against the in-memory reference ---------------------------------------------------------

keys = st.sampled_from(["", "a", "ab", "b", "é", "a\x00"])
values = st.text(alphabet="xyé\x00", max_size=3)
ops = st.one_of(
    st.builds(Get, keys),
    st.builds(Put, keys, values),
    st.builds(Append, keys, values),
    st.builds(Delete, keys),
    st.builds(Cas, keys, st.none() | values, values),
)
FAST_DIR = "/dev/shm" if os.path.isdir("/dev/shm") else None
"""A tmpfs where there is one: fsyncs are free, and this test checks semantics, not
durability (a store on a disk spends ~80 ms in fsyncs to create, install and close)."""

CLIENTS = ("c1", "c2", "c3", "c4")
# (client id, seq, op): few clients and seqs, so retries and stale commands are common.
commands_st = st.lists(
    st.tuples(st.sampled_from(["", *CLIENTS]), st.integers(1, 6), ops),
    max_size=40,
)


@settings(max_examples=200)
@given(
    commands=commands_st,
    limit=st.sampled_from([2, 3, None]),
    gaps=st.booleans(),
    batch_ends=st.sets(st.integers(0, 40)),
    reopen_at=st.integers(0, 40),
)
def test_the_store_matches_the_in_memory_machine(
    commands: list[tuple[str, int, KVOp]],
    limit: int | None,
    gaps: bool,
    batch_ends: set[int],
    reopen_at: int,
) -> None:
    """Also in batches (the store keeps each client's last seq and the applied index in
    memory inside one) and across a reopen mid-way (what it keeps must be re-read)."""
    reference = KVStateMachine()
    if limit is not None:
        reference._sessions = SessionTable(limit=limit)  # the same eviction bound
    with tempfile.TemporaryDirectory(dir=FAST_DIR) as directory:
        path = os.path.join(directory, "s.db")
        most = MAX_SESSIONS if limit is None else limit
        store = ShardStore.create(path, SHARD, state="serving", max_sessions=most)
        try:
            index = 0
            store.begin_batch()
            for position, (client_id, drawn_seq, op) in enumerate(commands):
                if position in batch_ends:
                    store.end_batch()
                    store.begin_batch()
                if position == reopen_at:
                    store.close()
                    store = ShardStore.open(path, SHARD, max_sessions=most)
                    assert store.applied_index == index  # written with the batch
                    store.begin_batch()
                index += 2 if gaps else 1  # non-command entries leave gaps in the indexes
                seq = drawn_seq if client_id else 0
                command = encode_command(op, client_id=client_id, seq=seq)
                expected = decode_result(reference.apply(index, command))
                assert store.apply(index, client_id, seq, op) == expected
                assert store.apply(index, client_id, seq, op) is None
                # The same clients remembered (and forgotten) after every command.
                assert [store.last_seq(c) for c in CLIENTS] == [
                    reference.last_seq(c) for c in CLIENTS
                ]
            store.end_batch()
            assert dict(contents(store)) == reference.items()
            data = export_image(store)
            store.close()
            store = install_image(path, data, max_sessions=most)
            assert dict(contents(store)) == reference.items()
        finally:
            store.close()


def file_rows(path: str) -> dict[str, list[tuple[object, ...]]]:
    """Every row of a closed store's file, table by table (versions and sessions too)."""
    queries = {
        "kv": "SELECT key, value, ver FROM kv ORDER BY key",
        "kv_gone": "SELECT key, ver FROM kv_gone ORDER BY key",
        "sessions": "SELECT client_id, seq, result, touched FROM sessions ORDER BY client_id",
        "meta": "SELECT k, v FROM meta ORDER BY k",
    }
    with closing(sqlite3.connect(path)) as conn:
        return {table: conn.execute(sql).fetchall() for table, sql in queries.items()}


@settings(max_examples=150)
@given(
    commands=commands_st,
    batch_ends=st.sets(st.integers(0, 40)),
    reads=st.sets(st.integers(0, 40)),
    cache=st.booleans(),
)
def test_puts_held_in_memory_leave_the_file_as_applying_each_would(
    commands: list[tuple[str, int, KVOp]], batch_ends: set[int], reads: set[int], cache: bool
) -> None:
    """Plain puts wait in memory inside batches (and, on a cache disk, across them) and a
    later one replaces an earlier, and point reads are served from a cache: checked
    against the same store applying every command with SQL and reading the file. Same
    results, same reads in between, and the same rows in the file at the end: values,
    versions, sessions and their eviction order, the applied index."""
    with tempfile.TemporaryDirectory(dir=FAST_DIR) as directory:
        paths = [os.path.join(directory, name) for name in ("held.db", "naive.db")]
        held, naive = (
            ShardStore.create(
                path, SHARD, state="serving", max_sessions=3, disk=CacheDisk() if cache else None
            )
            for path in paths
        )
        naive._held.take_put = lambda *_: False  # type: ignore[method-assign]
        naive._read_cache.remember = lambda *_: None  # type: ignore[method-assign]
        stores = (held, naive)
        try:
            for store in stores:
                store.begin_batch()
            for position, (client_id, drawn_seq, op) in enumerate(commands):
                if position in batch_ends:
                    for store in stores:
                        store.end_batch()
                        store.begin_batch()
                seq = drawn_seq if client_id else 0
                index = position + 1
                assert held.apply(index, client_id, seq, op) == naive.apply(
                    index, client_id, seq, op
                )
                if position in reads:
                    assert held.get(op.key) == naive.get(op.key)
            for store in stores:
                store.end_batch()
        finally:
            for store in stores:
                store.close()
        assert file_rows(paths[0]) == file_rows(paths[1])


def test_held_puts_are_bounded_in_memory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_module, "MAX_PENDING_BYTES", 100)
    path = tmp_path / "h.db"

    def rows_in_the_file() -> int:
        with closing(sqlite3.connect(path)) as other:
            return int(other.execute("SELECT count(*) FROM kv").fetchone()[0])

    with ShardStore.create(path, SHARD, state="serving", disk=CacheDisk()) as store:
        client = Client(store)
        store.begin_batch()
        client.run(Put("a", "x" * 40))
        store.end_batch()
        assert store.get("a") == "x" * 40 and rows_in_the_file() == 0  # held, and read
        assert store.get("other") is None and rows_in_the_file() == 0  # a read of another key
        store.begin_batch()
        client.run(Put("b", "y" * 70))  # past 100 characters held: written and committed
        store.end_batch()
        assert rows_in_the_file() == 2


def test_a_batch_is_one_transaction_committed_at_its_end(tmp_path: Path) -> None:
    path = tmp_path / "b.db"

    def seen_from_outside() -> list[tuple[bytes, str]]:
        with closing(sqlite3.connect(path)) as other:
            return other.execute("SELECT key, value FROM kv ORDER BY key").fetchall()

    with ShardStore.create(path, SHARD, state="serving") as store:
        client = Client(store, "c")
        store.begin_batch()
        for i in range(5):
            client.run(Append("k", str(i)), seq=i + 1)
        assert store.get("k") == "01234"  # the batch sees its own writes
        assert seen_from_outside() == []  # nobody else does yet
        store.end_batch()
        assert seen_from_outside() == [(b"k", "01234")]  # keys are stored as bytes
        assert store.applied_index == 5 and store.last_seq("c") == 5
        with closing(sqlite3.connect(path)) as other:  # the index is committed with the batch
            sql = "SELECT v FROM meta WHERE k = 'applied_index'"
            assert other.execute(sql).fetchone() == (5,)
        store.begin_batch()
        client.run(Put("j", "x"), seq=6)
    # Closing in the middle of a batch commits it.
    with ShardStore.open(path) as store:
        assert store.get("j") == "x" and store.applied_index == 6


def test_a_cache_store_commits_every_so_many_batches_and_before_an_export(
    tmp_path: Path,
) -> None:
    path = tmp_path / "c.db"
    with ShardStore.create(path, SHARD, state="serving", disk=CacheDisk()) as store:
        client = Client(store)
        for i in range(store_module.CACHE_COMMIT_EVERY - 1):
            store.begin_batch()
            client.run(Put(f"k{i}", "v"))
            store.end_batch()
        with closing(sqlite3.connect(path)) as other:
            assert other.execute("SELECT count(*) FROM kv").fetchone()[0] == 0
        image = export_image(store)  # flushes first: the export has every change
        copy = install_image(tmp_path / "copy.db", image, shard=SHARD)
        assert copy.count() == store_module.CACHE_COMMIT_EVERY - 1
        copy.close()
        store.begin_batch()
        client.run(Put("last", "v"))
        store.end_batch()
        store.begin_batch()
        client.run(Put("after", "v"))
        store.end_batch()
    with ShardStore.open(path) as reopened:  # close committed the rest
        assert reopened.get("after") == "v"
