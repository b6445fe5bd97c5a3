"""Bounds every integer of the wire and the log is decoded against.

A Python ``int`` has no size, SQLite's INTEGER and MessagePack's have 64 bits. An
integer past them that reached a Raft log would fail on every replica as it applied
(``OverflowError: Python int too large to convert to SQLite INTEGER``) and halt the
group, again at every restart. So every integer field of a request, a reply and a log
command is :data:`Int64`: msgspec refuses anything outside the signed 64-bit range while
decoding, before a handler sees it, and the caller gets ``bad_request``.
"""

from __future__ import annotations

from typing import Annotated, Final, TypeAlias

import msgspec

INT64_MIN: Final = -(1 << 63)
INT64_MAX: Final = (1 << 63) - 1

Int64: TypeAlias = Annotated[int, msgspec.Meta(ge=INT64_MIN, le=INT64_MAX)]
"""An integer SQLite can store: what every ``int`` field on the wire and in the log is."""
