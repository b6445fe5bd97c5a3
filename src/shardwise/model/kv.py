"""The operations of the key-value store, their results and their size limits.

Every layer speaks these: the client builds them, the shard server checks and applies
them, the Raft log carries them inside each service's command envelope. They are frozen
msgspec Structs, so they encode deterministically and decode with validation.
"""

from __future__ import annotations

from typing import Final, TypeAlias

import msgspec

from shardwise.errors import ShardLimitError

MAX_KEY_BYTES: Final = 4 * 1024
"""Largest key (UTF-8): keys fill the B-tree's interior pages; small keeps the tree shallow."""

MAX_VALUE_BYTES: Final = 1 << 20
"""Largest value (UTF-8): it rides in a log entry and a reply (one ``AppendEntries`` batch)."""

MAX_SCAN_ROWS: Final = 10_000
"""Most rows one scan returns; page on with ``start``."""

MAX_BATCH_OPS: Final = 128
"""Most client operations in one batched call (and one ``ClientBatch`` log entry)."""


class Get(msgspec.Struct, frozen=True, array_like=True, tag="get"):
    key: str


class Put(msgspec.Struct, frozen=True, array_like=True, tag="put"):
    key: str
    value: str


class Append(msgspec.Struct, frozen=True, array_like=True, tag="append"):
    """Concatenate ``value`` to the key's value (or set it if the key is absent)."""

    key: str
    value: str


class Delete(msgspec.Struct, frozen=True, array_like=True, tag="delete"):
    key: str


class Cas(msgspec.Struct, frozen=True, array_like=True, tag="cas"):
    """Set ``key`` to ``new`` if it holds ``expected`` (``None``: if it is absent)."""

    key: str
    expected: str | None
    new: str


KVOp: TypeAlias = Get | Put | Append | Delete | Cas


class KVResult(msgspec.Struct, frozen=True, array_like=True):
    """What a command returns to its proposer."""

    value: str | None = None
    """For ``Get``: the value, ``None`` if the key is absent."""
    ok: bool = True
    """For ``Cas``: whether it swapped. False for a stale command."""
    stale: bool = False
    """The client already had a newer command applied; this one was not applied."""


def check_op(op: KVOp) -> None:
    """Raise :class:`ShardLimitError` if ``op`` has a key or value over the limits.

    Call it before proposing: the shard store raises the same error when it applies, and
    a request refused at the edge never reaches the log.
    """
    _check_size("key", op.key, MAX_KEY_BYTES)
    values: tuple[str | None, ...] = ()
    if isinstance(op, Put | Append):
        values = (op.value,)
    elif isinstance(op, Cas):
        values = (op.expected, op.new)
    for value in values:
        if value is not None:
            _check_size("value", value, MAX_VALUE_BYTES)


def _check_size(what: str, text: str, limit: int) -> None:
    size = len(text) if text.isascii() else len(text.encode())
    if size > limit:
        raise ShardLimitError(f"{what} of {size} bytes is over the limit of {limit}")
