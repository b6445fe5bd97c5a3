"""The operations of the key-value store, their results and their size limits.

Every layer speaks these: the client builds them, the shard server checks and applies
them, the Raft log carries them inside each service's command envelope. They are frozen
msgspec Structs, so they encode deterministically and decode with validation.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final, TypeAlias

import msgspec

from shardwise.errors import InvalidKVTypeError, ShardLimitError

if TYPE_CHECKING:
    Data: TypeAlias = str | bytes
else:
    # msgspec cannot tell ``str`` from ``bytes`` in a union (both may encode as strings
    # in JSON), so it decodes these fields as ``Any`` (MessagePack keeps str and bin
    # apart) and each operation's ``__post_init__`` checks the type, on construction
    # and on decoding alike. The type checker sees the real type.
    Data = Any

Key: TypeAlias = Data
"""A key: bytes, or a ``str`` standing for its UTF-8 encoding (``"k"`` and ``b"k"`` are
the same key). Keys compare and sort as bytes everywhere."""

Value: TypeAlias = Data
"""A value: bytes or ``str``; it is read back as the type it was written with."""

Pairs: TypeAlias = "Mapping[str, Value] | Mapping[bytes, Value] | Mapping[Key, Value]"
"""Keys and their values (a mapping's key type is invariant: this takes any of the three)."""

MAX_KEY_BYTES: Final = 4 * 1024
"""Largest key (bytes; a str counts its UTF-8 bytes): keys fill the B-tree's interior
pages; small keeps the tree shallow."""

MAX_VALUE_BYTES: Final = 1 << 20
"""Largest value (bytes; a str counts its UTF-8 bytes): it rides in a log entry and a
reply (one ``AppendEntries`` batch)."""

MAX_SCAN_ROWS: Final = 10_000
"""Most rows one scan returns; page on with ``start``."""

MAX_BATCH_OPS: Final = 128
"""Most client operations in one batched call (and one ``ClientBatch`` log entry)."""


def check_type(what: str, data: object) -> None:
    """Raise :class:`InvalidKVTypeError` unless ``data`` is ``str`` or ``bytes``."""
    if type(data) is not str and type(data) is not bytes:
        raise InvalidKVTypeError(
            f"a {what} is str or bytes (a str stands for its UTF-8 bytes), "
            f"not {type(data).__name__}"
        )


def key_bytes(key: Key) -> bytes:
    """The bytes a key stands for: how keys are stored, compared and sorted."""
    return key.encode() if isinstance(key, str) else key


def data_size(data: Data) -> int:
    """Size in bytes (a str's UTF-8 encoding)."""
    if isinstance(data, bytes):
        return len(data)
    return len(data) if data.isascii() else len(data.encode())


def is_binary(data: Data) -> bool:
    return isinstance(data, bytes)


class Get(msgspec.Struct, frozen=True, array_like=True, tag="get"):
    key: Key

    def __post_init__(self) -> None:
        check_type("key", self.key)


class Put(msgspec.Struct, frozen=True, array_like=True, tag="put"):
    key: Key
    value: Value

    def __post_init__(self) -> None:
        check_type("key", self.key)
        check_type("value", self.value)


class Append(msgspec.Struct, frozen=True, array_like=True, tag="append"):
    """Concatenate ``value`` to the key's value (or set it if the key is absent). Two
    str make a str, two bytes bytes; a str and bytes make bytes (the str's UTF-8)."""

    key: Key
    value: Value

    def __post_init__(self) -> None:
        check_type("key", self.key)
        check_type("value", self.value)


class Delete(msgspec.Struct, frozen=True, array_like=True, tag="delete"):
    key: Key

    def __post_init__(self) -> None:
        check_type("key", self.key)


class Cas(msgspec.Struct, frozen=True, array_like=True, tag="cas"):
    """Set ``key`` to ``new`` if it holds ``expected`` (``None``: if it is absent). The
    comparison is of bytes: ``"v"`` matches a stored ``b"v"`` and the other way round."""

    key: Key
    expected: Value | None
    new: Value

    def __post_init__(self) -> None:
        check_type("key", self.key)
        if self.expected is not None:
            check_type("expected value", self.expected)
        check_type("value", self.new)


KVOp: TypeAlias = Get | Put | Append | Delete | Cas


class KVResult(msgspec.Struct, frozen=True, array_like=True):
    """What a command returns to its proposer."""

    value: Value | None = None
    """For ``Get``: the value, ``None`` if the key is absent."""
    ok: bool = True
    """For ``Cas``: whether it swapped. False for a stale command."""
    stale: bool = False
    """The client already had a newer command applied; this one was not applied."""
    locked: str = ""
    """The key is locked by this prepared transaction: not applied (and not recorded for
    de-duplication), so the client retries it once the transaction resolves."""


def has_bytes(op: KVOp) -> bool:
    """Whether ``op`` carries a ``bytes`` key or value (a log entry with one needs the
    envelope version that allows it: see ``shardserver/commands.py``)."""
    if isinstance(op, Put | Append):
        return is_binary(op.key) or is_binary(op.value)
    if isinstance(op, Cas):
        expected = op.expected
        return (
            is_binary(op.key) or is_binary(op.new) or (expected is not None and is_binary(expected))
        )
    return is_binary(op.key)


def check_op(op: KVOp) -> None:
    """Raise :class:`ShardLimitError` if ``op`` has a key or value over the limits.

    Call it before proposing (and a client before sending): the shard store raises the
    same error when it applies, and a request refused at the edge never reaches the log.
    """
    check_key(op.key)
    values: tuple[Value | None, ...] = ()
    if isinstance(op, Put | Append):
        values = (op.value,)
    elif isinstance(op, Cas):
        values = (op.expected, op.new)
    for value in values:
        if value is not None:
            _check_size("value", value, MAX_VALUE_BYTES)


def check_key(key: Key) -> None:
    """Raise :class:`ShardLimitError` if ``key`` is over :data:`MAX_KEY_BYTES`."""
    _check_size("key", key, MAX_KEY_BYTES)


def _check_size(what: str, data: Data, limit: int) -> None:
    size = data_size(data)
    if size > limit:
        raise ShardLimitError(f"{what} of {size} bytes is over the limit of {limit}")
