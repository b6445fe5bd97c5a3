"""What binary-safe keys changed in the formats: the log envelope's version 5, the shard
file's schema version 3 (keys stored as BLOBs, upgraded from version 2), and delta format
2 (bytes keys) beside format 1."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

import msgspec
import pytest

from shardwise.errors import CommandDecodeError
from shardwise.model.config import ShardId
from shardwise.model.kv import Append, Cas, Get, Put
from shardwise.shardserver import commands
from shardwise.shardserver.commands import ClientBatch, ClientOp, GroupCommand, decode, encode
from shardwise.shardserver.migration.image import (
    DELTA_MAGIC_V1,
    EXPORT_MAGIC,
    apply_delta,
    export_image,
    frame,
    install_image,
)
from shardwise.shardserver.shardfile import SCHEMA_VERSION, new_file_image
from shardwise.shardserver.store import ShardStore
from shardwise.shardserver.tracking import ShardDelta

SHARD = ShardId("default", 1)


def _version(data: bytes) -> int:
    envelope = msgspec.msgpack.decode(data, type=GroupCommand)
    return envelope.version


@pytest.mark.parametrize(
    "op",
    [Put(b"k", "v"), Put("k", b"v"), Append("k", b"\x00"), Cas("k", b"old", "new"), Get(b"\xff")],
)
def test_an_op_with_bytes_is_written_as_version_5_and_round_trips(op: object) -> None:
    command = ClientOp(SHARD, "c", 1, op)  # type: ignore[arg-type]
    data = encode(command)
    assert _version(data) == 5
    assert decode(data) == command
    batch = ClientBatch((ClientOp(SHARD, "c", 1, Put("k", "v")), command))
    assert _version(encode(batch)) == 5 and decode(encode(batch)) == batch


def test_an_op_of_str_only_keeps_its_old_version() -> None:
    """A log without bytes stays readable by replicas of the previous version."""
    assert _version(encode(ClientOp(SHARD, "c", 1, Put("k", "v")))) == 1
    batch = ClientBatch((ClientOp(SHARD, "c", 1, Cas("k", None, "v")),))
    assert _version(encode(batch)) == 4


def test_an_older_replica_refuses_bytes_rather_than_misreads_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    data = encode(ClientOp(SHARD, "c", 1, Put(b"\xff", "v")))
    monkeypatch.setattr(commands, "GROUP_COMMAND_VERSION", 4)  # a version-4 replica
    with pytest.raises(CommandDecodeError, match="version 5 is unknown"):
        decode(data)


def test_an_envelope_too_old_for_bytes_is_refused() -> None:
    forged = msgspec.msgpack.encode(GroupCommand(1, ClientOp(SHARD, "c", 1, Put(b"k", "v"))))
    with pytest.raises(CommandDecodeError, match="with bytes keys or values"):
        decode(forged)


def _version_2_image(rows: list[tuple[str, str]]) -> bytes:
    """The image of a shard file as version 2 wrote it: TEXT keys."""
    with closing(sqlite3.connect(":memory:", isolation_level=None)) as conn:
        conn.deserialize(new_file_image(SHARD, "serving", 0))
        conn.executemany("INSERT INTO kv (key, value, ver) VALUES (?, ?, 1)", rows)
        conn.execute("UPDATE meta SET v = 2 WHERE k = 'format_version'")
        return bytes(frame(EXPORT_MAGIC, conn.serialize()))


def test_a_version_2_file_is_upgraded_to_bytes_keys_when_installed(tmp_path: Path) -> None:
    rows = [("b", "2"), ("a", "1"), ("é", "3"), ("z", "4")]
    image = _version_2_image(rows)
    with install_image(tmp_path / "v3.db", image, shard=SHARD) as store:
        assert store.get("a") == "1" and store.get(b"\xc3\xa9") == "3"
        store.apply(store.applied_index + 1, "", 0, Put(b"\xff", b"top"))
        store.apply(store.applied_index + 2, "", 0, Put("c", "new"))
        keys = [key for key, _ in store.scan()]
        assert keys == ["a", "b", "c", "z", "é", b"\xff"]  # byte order, one kind of key
        store.flush()
        with closing(sqlite3.connect(store.path)) as conn:
            kinds = {row[0] for row in conn.execute("SELECT typeof(key) FROM kv")}
            version = conn.execute("SELECT v FROM meta WHERE k = 'format_version'").fetchone()
        assert kinds == {"blob"} and version == (SCHEMA_VERSION,) == (4,)


def test_a_delta_of_format_1_with_str_keys_still_applies(tmp_path: Path) -> None:
    with ShardStore.create(tmp_path / "s.db", SHARD, state="serving") as source:
        source.apply(1, "", 0, Put("k", "old"))
        base = install_image(tmp_path / "b.db", export_image(source), shard=SHARD)
    with base:
        old = ShardDelta(str(SHARD), base.write_version, base.write_version + 2,
                         [("k", "new", base.write_version + 1)],
                         [("gone", base.write_version + 2)], [], 0, 0)  # fmt: skip
        apply_delta(base, 10, bytes(frame(DELTA_MAGIC_V1, msgspec.msgpack.encode(old))),
                    state="serving")  # fmt: skip
        assert base.get(b"k") == "new"
