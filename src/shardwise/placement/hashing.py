"""Stable hashing: the one function that decides where a key lives.

Placement is part of the on-disk format: a key written to shard 17 today must map to
shard 17 after an upgrade, on another machine, under any ``PYTHONHASHSEED``. So we never
use the builtin ``hash()`` (salted per process for ``str``/``bytes``, the identity on
``int``) and pin this module with golden vectors in the tests.

The canonical encoding of a key, before hashing:

* ``str``   -> its UTF-8 bytes,
* ``bytes`` (and ``bytearray``/``memoryview``) -> the bytes themselves,
* ``int``   -> the UTF-8 bytes of its decimal form, ``str(key)``.

So ``"42"``, ``b"42"`` and ``42`` are the same key, as they are in Redis or memcached,
where every key is a string: a client that switches between them keeps its placement.
``bool`` is refused: ``True`` is an ``int`` to Python, but almost never meant as a key.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import TYPE_CHECKING, Final, TypeAlias

import xxhash

from shardwise.errors import UnsupportedKeyTypeError

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

HASH_BITS: Final = 64
HASH_SPACE: Final = 1 << HASH_BITS
"""Size of the hash space: every stable hash lies in ``[0, HASH_SPACE)``."""

KETAMA_SPACE: Final = 1 << 32
"""Ketama-compatible rings hash into 32 bits (the first four bytes of an MD5 digest)."""

Key: TypeAlias = str | bytes | bytearray | memoryview | int

_xxh3_64 = xxhash.xxh3_64_intdigest


def key_bytes(key: Key) -> bytes:
    """The canonical byte encoding of ``key`` (see the module docstring)."""
    kind = type(key)
    if kind is str:
        return key.encode()  # type: ignore[union-attr]
    if kind is bytes:
        return key  # type: ignore[return-value]
    if isinstance(key, bytearray | memoryview):
        return bytes(key)
    if isinstance(key, int) and not isinstance(key, bool):
        return str(key).encode()
    if isinstance(key, str):  # a str subclass
        return str.encode(key)
    if isinstance(key, bytes):
        return bytes(key)
    raise UnsupportedKeyTypeError(
        f"cannot place a key of type {type(key).__name__}: use str, bytes or int"
    )


def stable_hash(key: Key, seed: int = 0) -> int:
    """xxh3-64 of the canonical encoding of ``key``; an ``int`` in ``[0, 2**64)``.

    The same key and seed give the same hash in every process, on every machine. Pick one
    seed per purpose and keep it: for short keys xxh3 mixes the seed in almost linearly, so
    ``(key, seed)`` and ``(other_key, seed + 1)`` can collide. Never derive many "independent"
    hashes by counting seeds; append a fixed-width counter to the key instead.
    """
    if type(key) is str:  # fast path: the common case skips the dispatch below
        return _xxh3_64(key.encode(), seed)
    return _xxh3_64(key_bytes(key), seed)


def stable_hash_batch(keys: Iterable[Key], seed: int = 0) -> npt.NDArray[np.uint64]:
    """Hash many keys into a ``uint64`` array, ready for the batch lookups."""
    import numpy as np  # noqa: PLC0415 - numpy only for batch lookups

    return np.fromiter((stable_hash(k, seed) for k in keys), dtype=np.uint64)


def ketama_hash(key: Key, replica: int = 0) -> int:
    """The 32-bit point hash of ketama (libketama, uhashring's ketama mode).

    Four little-endian bytes of ``md5(key)`` starting at ``4 * replica``: one digest
    yields four ring points. Keys are hashed with ``replica=0``.
    """
    digest = hashlib.md5(key_bytes(key), usedforsecurity=False).digest()
    offset = 4 * replica
    return int.from_bytes(digest[offset : offset + 4], "little")


_MIX_C1: Final = 0xBF58476D1CE4E5B9
_MIX_C2: Final = 0x94D049BB133111EB
_MASK64: Final = HASH_SPACE - 1


def mix64(value: int) -> int:
    """A bijective 64-bit finalizer (splitmix64's), used to combine two hashes.

    Rendezvous hashing needs a fresh pseudo-random number per (key, node) pair; mixing
    ``key_hash ^ node_hash`` is much cheaper than hashing the concatenation, and
    :func:`mix64_array` computes the identical function over numpy arrays.
    """
    value &= _MASK64
    value ^= value >> 30
    value = (value * _MIX_C1) & _MASK64
    value ^= value >> 27
    value = (value * _MIX_C2) & _MASK64
    value ^= value >> 31
    return value


def mix64_array(values: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint64]:
    """:func:`mix64` over a ``uint64`` array (numpy's unsigned arithmetic wraps mod 2**64)."""
    import numpy as np  # noqa: PLC0415 - numpy only for batch lookups

    v = values.astype(np.uint64, copy=True)
    v ^= v >> np.uint64(30)
    v *= np.uint64(_MIX_C1)
    v ^= v >> np.uint64(27)
    v *= np.uint64(_MIX_C2)
    v ^= v >> np.uint64(31)
    return v


def as_hash_array(hashes: npt.ArrayLike) -> npt.NDArray[np.uint64]:
    """Accept any integer array of pre-computed hashes as ``uint64`` without copying it."""
    import numpy as np  # noqa: PLC0415 - numpy only for batch lookups

    arr = np.asarray(hashes)
    if arr.dtype != np.uint64:
        if not np.issubdtype(arr.dtype, np.integer):
            raise UnsupportedKeyTypeError(
                f"batch lookups take integer hashes, got an array of {arr.dtype}"
            )
        arr = arr.astype(np.uint64)
    return arr
