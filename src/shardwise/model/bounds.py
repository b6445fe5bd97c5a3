"""Bounds every integer of the wire and the log is decoded against.

A Python ``int`` has no size, SQLite's INTEGER and MessagePack's have 64 bits. An
integer past them that reached a Raft log would fail on every replica as it applied
(``OverflowError: Python int too large to convert to SQLite INTEGER``) and halt the
group, again at every restart. So every integer field of a request, a reply and a log
command is :data:`Int64` (a digest, which is only compared, :data:`UInt64`): msgspec
refuses anything outside its range while decoding, before a handler sees it, and the
caller gets ``bad_request``.
"""

from __future__ import annotations

from typing import Annotated, Final, TypeAlias

import msgspec

INT64_MIN: Final = -(1 << 63)
INT64_MAX: Final = (1 << 63) - 1

UINT64_MAX: Final = (1 << 64) - 1

Int64: TypeAlias = Annotated[int, msgspec.Meta(ge=INT64_MIN, le=INT64_MAX)]
"""An integer SQLite can store: what every ``int`` field on the wire and in the log is."""

UInt64: TypeAlias = Annotated[int, msgspec.Meta(ge=0)]
"""A 64-bit digest (e.g. a keyspace's schema digest): compared, never stored in SQLite.
No upper bound is written because msgspec takes none past ``INT64_MAX``; MessagePack's
integers end at ``UINT64_MAX``, which bounds it while decoding."""
