"""Binary-safe keys and values, end to end: the real client against real shard servers in
the simulator (virtual time, so "at once" is measured exactly: no time passes).

Keys and values are bytes or str (a str stands for its UTF-8); a value reads back as the
type it was written with; keys sort by their bytes everywhere; anything else, and
anything over a limit, fails at once with a typed error.
"""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest

from shardwise.errors import InvalidKVTypeError, RequestRefusedError
from shardwise.model.kv import MAX_KEY_BYTES, MAX_VALUE_BYTES, key_bytes
from shardwise.testing.cluster import SimCluster

pytestmark = pytest.mark.virtual_time


async def _cluster(tmp_path: Path, seed: int, groups: int = 2) -> SimCluster:
    cluster = SimCluster(tmp_path, groups=groups, seed=seed)
    await cluster.start()
    await cluster.join(*range(1, groups + 1))
    await cluster.settled()
    return cluster


async def test_bytes_and_str_keys_and_values_round_trip_with_their_type(
    tmp_path: Path, seed: int
) -> None:
    cluster = await _cluster(tmp_path, seed)
    try:
        async with cluster.client() as kv:
            await kv.put("typed", b"\x00\xff")
            await kv.put(b"bk", "v")
            await kv.put(b"\xff\xfe not utf-8", b"\x80")
            assert await kv.get("typed") == b"\x00\xff"  # bytes in, bytes out
            assert await kv.get(b"bk") == "v"  # str in, str out
            assert await kv.get("bk") == "v"  # "k" and b"k" are one key
            await kv.put("bk", b"now bytes")
            assert await kv.get(b"bk") == b"now bytes"
            assert await kv.get(b"\xff\xfe not utf-8") == b"\x80"
            await kv.put(bytearray(b"ba"), memoryview(b"mv"))  # type: ignore[arg-type]  # bytes
            assert await kv.get(b"ba") == b"mv"
            # Append: str + str is a str; any bytes make bytes.
            await kv.put("s", "ab")
            await kv.append("s", "c")
            assert await kv.get("s") == "abc"
            await kv.append("s", b"\x00")
            assert await kv.get("s") == b"abc\x00"
            # Cas compares bytes: a str matches the bytes it encodes to.
            assert await kv.cas("s", b"abc\x00", "é")
            assert await kv.cas("s", "é".encode(), b"\x01")
            assert not await kv.cas("s", "x", "y")
            assert await kv.mget(["typed", b"bk", "missing"]) == {
                "typed": b"\x00\xff",
                b"bk": b"now bytes",
                "missing": None,
            }
            await kv.delete(b"typed")
            assert await kv.get("typed") is None
    finally:
        await cluster.close()


async def test_a_scan_orders_keys_by_their_bytes_and_returns_them_as_typed(
    tmp_path: Path, seed: int
) -> None:
    rng = random.Random(seed)
    cluster = await _cluster(tmp_path, seed)
    try:
        keys: set[bytes] = {b"p/" + rng.randbytes(rng.randrange(0, 6)) for _ in range(120)}
        keys |= {b"p/\xff", b"p/\x00", b"p/\x7f", b"p/\xc3\xa9", b"p/z", b"p/"}
        written = {k: (rng.randbytes(3) if rng.random() < 0.5 else k.hex()) for k in keys}
        async with cluster.client() as kv:
            await kv.mput(written)
            await kv.put("q", "outside the prefix")
            got = await kv.scan(b"p/", page_rows=7, limit=1000)  # many pages per shard
            assert [key_bytes(k) for k, _ in got] == sorted(keys)
            for key, value in got:
                # A key comes back as a str when it is valid UTF-8, else as bytes.
                raw = key_bytes(key)
                try:
                    assert key == raw.decode()
                except UnicodeDecodeError:
                    assert key == raw
                assert value == written[raw]  # with the type it was written with
            bounded = await kv.scan(start=b"p/\x7f", end=b"p/\xff")
            assert [key_bytes(k) for k, _ in bounded] == sorted(
                k for k in keys if b"p/\x7f" <= k < b"p/\xff"
            )
    finally:
        await cluster.close()


@pytest.mark.parametrize(
    "call",
    [
        lambda kv: kv.put("k", 42),
        lambda kv: kv.put("k", None),
        lambda kv: kv.put(1.5, "v"),
        lambda kv: kv.get(7),
        lambda kv: kv.append("k", ["v"]),
        lambda kv: kv.cas("k", 3, "v"),
        lambda kv: kv.mput({"k": 1}),
        lambda kv: kv.scan(prefix=5),
        lambda kv: kv.put("k", "\ud800"),  # a lone surrogate has no UTF-8
    ],
    ids=["int", "none", "float-key", "get-int", "list", "cas", "mput", "scan", "surrogate"],
)
async def test_anything_but_str_or_bytes_fails_at_once_with_a_typed_error(
    tmp_path: Path, seed: int, call: object
) -> None:
    cluster = await _cluster(tmp_path, seed, groups=1)
    try:
        async with cluster.client() as kv:
            loop = asyncio.get_running_loop()
            before = loop.time()
            with pytest.raises(InvalidKVTypeError, match=r"str or bytes|UTF-8") as caught:
                await call(kv)  # type: ignore[operator]
            assert loop.time() == before  # at once: nothing was sent
            assert isinstance(caught.value, TypeError)  # typed, and still a TypeError
    finally:
        await cluster.close()


@pytest.mark.parametrize(
    ("make", "limit"),
    [
        (lambda kv: kv.put("k", "x" * (MAX_VALUE_BYTES + 1)), MAX_VALUE_BYTES),
        (lambda kv: kv.put("k", b"x" * (50 << 20)), MAX_VALUE_BYTES),
        (lambda kv: kv.put("k", "é" * (MAX_VALUE_BYTES // 2 + 1)), MAX_VALUE_BYTES),
        (lambda kv: kv.append(b"k", b"x" * (MAX_VALUE_BYTES + 1)), MAX_VALUE_BYTES),
        (lambda kv: kv.cas("k", "x" * (MAX_VALUE_BYTES + 1), "v"), MAX_VALUE_BYTES),
        (lambda kv: kv.get(b"k" * (MAX_KEY_BYTES + 1)), MAX_KEY_BYTES),
        (lambda kv: kv.delete("k" * (MAX_KEY_BYTES + 1)), MAX_KEY_BYTES),
        (lambda kv: kv.mput({"a": "v", "b": "x" * (2 * MAX_VALUE_BYTES)}), MAX_VALUE_BYTES),
        (lambda kv: kv.scan(start="k" * (MAX_KEY_BYTES + 1)), MAX_KEY_BYTES),
    ],
    ids=["1MiB+1", "50MB", "utf8", "append", "cas", "get", "delete", "mput", "scan"],
)
async def test_an_oversized_request_fails_at_once_naming_the_limit(
    tmp_path: Path, seed: int, make: object, limit: int
) -> None:
    cluster = await _cluster(tmp_path, seed, groups=1)
    try:
        async with cluster.client() as kv:
            loop = asyncio.get_running_loop()
            before = loop.time()
            with pytest.raises(RequestRefusedError, match=f"over the limit of {limit}"):
                await make(kv)  # type: ignore[operator]
            assert loop.time() == before  # at once: nothing was sent, no deadline waited
            assert await kv.get("a") is None  # mput refused all before sending any
    finally:
        await cluster.close()


async def test_a_str_key_and_its_utf8_bytes_land_on_the_same_shard(
    tmp_path: Path, seed: int
) -> None:
    cluster = await _cluster(tmp_path, seed)
    try:
        async with cluster.client() as kv:
            for i in range(20):
                text = f"ключ-{i}"
                await kv.put(text.encode(), f"v{i}")
                assert await kv.get(text) == f"v{i}"
    finally:
        await cluster.close()
