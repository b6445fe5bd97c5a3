"""Binary-safe keys and values: the corners (an empty bytes value in a Cas, byte-like keys)."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from shardwise.client.kv import Client
from shardwise.errors import CommandDecodeError
from shardwise.model.config import ShardId
from shardwise.model.kv import Cas, Key, Value, has_bytes
from shardwise.shardserver.commands import ClientOp, GroupCommand, decode, encode

SHARD = ShardId("default", 1)


def test_a_cas_expecting_empty_bytes_is_logged_as_version_5() -> None:
    op = Cas("k", b"", "new")
    assert has_bytes(op)
    envelope = msgspec.msgpack.decode(encode(ClientOp(SHARD, "c", 1, op)), type=GroupCommand)
    assert envelope.version == 5


def test_a_version_1_envelope_cannot_carry_a_cas_expecting_empty_bytes() -> None:
    forged = msgspec.msgpack.encode(GroupCommand(1, ClientOp(SHARD, "c", 1, Cas("k", b"", "v"))))
    with pytest.raises(CommandDecodeError, match="with bytes keys or values"):
        decode(forged)


async def test_mget_takes_bytearray_and_memoryview_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    """The client says a ``bytearray`` or ``memoryview`` key is taken as bytes; ``mget``
    de-duplicated the keys before converting them and raised a bare ``TypeError``
    (unhashable type) instead."""
    client = Client({"c1": ("127.0.0.1", 1)}, b"s" * 32)
    asked: list[Key] = []

    async def get(key: Key, deadline: float) -> Value | None:
        asked.append(key)
        return b"v"

    monkeypatch.setattr(client, "_get", get)
    await client.start()
    try:
        keys: list[Any] = [bytearray(b"a"), memoryview(b"b"), b"a"]  # (typed as Key: str | bytes)
        got = await client.mget(keys, deadline_s=1.0)
    finally:
        await client.close()
    assert got == {b"a": b"v", b"b": b"v"}
    assert sorted(asked) == [b"a", b"b"]  # each key read once
