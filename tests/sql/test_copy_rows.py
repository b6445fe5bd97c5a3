"""Bulk loading (``Client.copy_rows``, ``Coordinator.insert_rows``, ``\\copy``): rows
placed by their distribution values with no SQL text, answering as one SQLite holding
them; a refused chunk names its offending row and writes nothing; every storage class
and the 64-bit edges go through as they went in."""

from __future__ import annotations

import contextlib
import random
import sqlite3
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from shardwise.cli.copy_command import CopyUsageError, parse_copy, run_copy
from shardwise.client import Client
from shardwise.client import copy as bulk
from shardwise.errors import (
    DistributionValueError,
    SqlCatalogError,
    SqlConstraintError,
    SqlParameterError,
    SqlSemanticError,
)
from shardwise.model.config import Keyspace, Scheme
from shardwise.sql import Coordinator, LocalShards
from shardwise.sql.values import INT64_MAX, INT64_MIN, SqlValue
from shardwise.testing.cluster import SimCluster

KEYSPACE = Keyspace("default", Scheme(kind="hash", shards=8))
TABLE = (
    "CREATE TABLE m (id INTEGER PRIMARY KEY, v TEXT, n NUMERIC, b BLOB, r REAL, "
    "t TEXT NOT NULL DEFAULT 'd')"
)
EVERY_CLASS: tuple[SqlValue, ...] = (
    None, 0, -1, INT64_MAX, INT64_MIN, 2.5, -0.0, 1e308, "", "7", "007", " 3", "é", "x" * 300,
    b"", b"\x00\xff", b"7",
)  # fmt: skip


@contextlib.asynccontextmanager
async def _cluster(tmp_path: Path, seed: int) -> AsyncIterator[Client]:
    """A simulated cluster of two groups, joined, and a client of it."""
    cluster = SimCluster(tmp_path, groups=2, seed=seed)
    async with cluster:
        await cluster.join(1, 2)
        await cluster.settled()
        async with cluster.client() as kv:
            yield kv


@pytest.fixture
def local() -> Iterator[LocalShards]:
    shards = LocalShards([KEYSPACE])
    yield shards
    shards.close()


def _row(rng: random.Random, key: int) -> tuple[SqlValue, ...]:
    pick = rng.choice
    return (key, pick(EVERY_CLASS), pick(EVERY_CLASS), pick(EVERY_CLASS), pick(EVERY_CLASS), "t")


async def test_rows_inserted_without_sql_answer_as_one_sqlite(
    local: LocalShards, rng: random.Random
) -> None:
    coordinator = Coordinator(local, local)
    reference = sqlite3.connect(":memory:")
    await coordinator.execute(TABLE + " WITH (distribution = 'id')")
    reference.execute(TABLE)
    keys = [*rng.sample(range(-(10**12), 10**12), 1500), INT64_MAX, INT64_MIN, 0]
    rows = [_row(rng, key) for key in keys]
    for start in range(0, len(rows), 400):
        chunk = rows[start : start + 400]
        flat = [value for row in chunk for value in row]
        result = await coordinator.insert_rows("m", ["id", "v", "n", "b", "r", "t"], flat)
        assert result.rowcount == len(chunk)
        reference.executemany("INSERT INTO m VALUES (?, ?, ?, ?, ?, ?)", chunk)
    query = (
        "SELECT id, v, typeof(v), n, typeof(n), b, typeof(b), r, typeof(r), t FROM m ORDER BY id"
    )
    got = [tuple(r) for r in (await coordinator.execute(query)).rows]
    assert got == reference.execute(query).fetchall()
    point = "SELECT v FROM m WHERE id = $1"  # (each row on the shard its value hashes to)
    for key in keys[:50]:
        want = reference.execute(point.replace("$1", "?"), [key]).fetchall()
        assert (await coordinator.execute(point, [key])).rows == want


async def test_a_refused_insert_names_its_row_and_writes_nothing(local: LocalShards) -> None:
    coordinator = Coordinator(local, local)
    await coordinator.execute(TABLE + " WITH (distribution = 'id')")
    await coordinator.insert_rows("m", ["id", "t"], [1, "a", 2, "b"])
    cases = [
        (
            [10, "x", 11, "y", 1, "again", 12, "z"],
            r"UNIQUE.*row 3 of the INSERT \(id=1, t='again'\)",
        ),
        ([20, "x", 21, "y", 21, "twice"], r"UNIQUE.*row 3 of the INSERT \(id=21, t='twice'\)"),
        ([30, "x", 31, None], r"NOT NULL.*m\.t: row 2 of the INSERT"),
    ]
    for values, message in cases:
        with pytest.raises(SqlConstraintError, match=message):
            await coordinator.insert_rows("m", ["id", "t"], values)
    count = (await coordinator.execute("SELECT count(*) FROM m")).rows
    assert count == [(2,)]  # (every refused INSERT changed nothing, on any shard)


async def test_bad_rows_are_refused_before_anything_is_sent(local: LocalShards) -> None:
    coordinator = Coordinator(local, local)
    await coordinator.execute(TABLE + " WITH (distribution = 'id')")
    with pytest.raises(SqlParameterError, match=r"row 2, column v: .* 64-bit"):
        await coordinator.insert_rows("m", ["id", "v"], [1, "a", 2, INT64_MAX + 1])
    with pytest.raises(SqlParameterError, match="row 1, column v: cannot bind a list"):
        await coordinator.insert_rows("m", ["id", "v"], [1, [2]])
    with pytest.raises(SqlParameterError, match="do not make whole rows of 2 columns"):
        await coordinator.insert_rows("m", ["id", "v"], [1, "a", 2])
    with pytest.raises(DistributionValueError, match="cannot take NULL"):
        await coordinator.insert_rows("m", ["id", "v"], [None, "a"])
    with pytest.raises(SqlCatalogError):
        await coordinator.insert_rows("nope", None, [1])
    with pytest.raises(SqlCatalogError):
        await coordinator.insert_rows("m", ["id", "missing"], [1, 2])
    with pytest.raises(SqlCatalogError):
        await coordinator.insert_rows("M", None, [1])  # (names are taken exactly)
    with pytest.raises(SqlSemanticError, match="no column"):
        await coordinator.insert_rows("m", [], [1])
    assert (await coordinator.execute("SELECT count(*) FROM m")).rows == [(0,)]


def test_the_copy_command_parses_as_psqls() -> None:
    command = parse_copy("""Items (ID, "Odd Name") FROM '/tmp/it''s.csv' CSV HEADER;""")
    assert command.table == "items" and command.columns == ("id", "Odd Name")
    assert command.path == Path("/tmp/it's.csv") and command.header
    assert not parse_copy("t FROM data.csv").header
    assert parse_copy('t ("a,b", c, "x)") FROM f').columns == ("a,b", "c", "x)")
    for bad in ("t TO 'x.csv'", "t FROM x BINARY", "FROM 'x'", "t (a,,b) FROM 'x'", "t () FROM x"):
        with pytest.raises(CopyUsageError):
            parse_copy(bad)


@pytest.mark.virtual_time
async def test_copy_rows_loads_in_chunks_and_says_what_a_failed_chunk_left(
    tmp_path: Path, seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bulk, "COPY_CHUNK_ROWS", 300)
    async with _cluster(tmp_path, seed) as kv:
        await kv.sql(TABLE + " WITH (distribution = 'id')")
        rng = random.Random(seed)
        rows = [_row(rng, key) for key in range(2000)]
        assert await kv.copy_rows("m", None, iter(rows)) == 2000
        found = await kv.sql("SELECT count(*), sum(id) FROM m")
        assert found.rows == [(2000, sum(range(2000)))]
        # A duplicate in the fourth chunk: three chunks before it stay, it and the
        # chunks after it (never sent, or sent with it) are named.
        more = [_row(rng, key) for key in range(5000, 6500)]
        more[1000] = (7, "dup", None, None, None, "t")
        with pytest.raises(SqlConstraintError) as caught:
            await kv.copy_rows("m", None, more, deadline_s=30)
        message = str(caught.value)
        assert "row 1,001 of the copy (id=7, v='dup'" in message, message
        assert "rows 1 to 900" in message, message
        stored = (await kv.sql("SELECT count(*) FROM m WHERE id >= 5000")).rows[0][0]
        assert isinstance(stored, int) and 900 <= stored < 1500
        assert f"{stored:,} rows of the copy were written" in message
        # Inside a transaction the chunks join it: rolled back, nothing stays.
        await kv.sql("BEGIN")
        assert await kv.copy_rows("m", ["id", "t"], [(9000, "a"), (9001, "b")]) == 2
        assert (await kv.sql("SELECT count(*) FROM m WHERE id >= 9000")).rows == [(2,)]
        await kv.sql("ROLLBACK")
        assert (await kv.sql("SELECT count(*) FROM m WHERE id >= 9000")).rows == [(0,)]


@pytest.mark.virtual_time
async def test_a_chunk_over_a_transactions_bytes_goes_in_halves(
    tmp_path: Path, seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reference table's chunk is written to every shard: past a transaction's bytes,
    refused before anything is sent, it goes again in halves."""
    monkeypatch.setattr(bulk, "COPY_CHUNK_ROWS", 64)
    async with _cluster(tmp_path, seed) as kv:
        await kv.sql("CREATE TABLE ref (id INTEGER PRIMARY KEY, pad BLOB) WITH (reference = true)")
        rows = [(n, bytes(2000)) for n in range(64)]  # (64 x 2 KB x 64 shards: 8 MiB)
        assert await kv.copy_rows("ref", ["id", "pad"], rows) == 64
        assert (await kv.sql("SELECT count(*) FROM ref")).rows == [(64,)]
        # A failure in the second half: the first half stays, and is counted; the
        # row is named by its place in the whole copy.
        more = [(1000 + n, bytes(2000)) for n in range(64)]
        more[50] = (1040, bytes(2000))
        with pytest.raises(SqlConstraintError) as caught:
            await kv.copy_rows("ref", ["id", "pad"], more)
        message = str(caught.value)
        assert "row 51 of the copy (id=1040" in message, message
        assert "32 rows of the copy were written (rows 1 to 32)" in message, message
        assert (await kv.sql("SELECT count(*) FROM ref WHERE id >= 1000")).rows == [(32,)]


@pytest.mark.virtual_time
async def test_a_failing_source_of_rows_stops_the_copy_after_what_was_sent_settles(
    tmp_path: Path, seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bulk, "COPY_CHUNK_ROWS", 300)
    async with _cluster(tmp_path, seed) as kv:
        await kv.sql(TABLE + " WITH (distribution = 'id')")

        def rows() -> Iterator[tuple[int, str]]:
            for n in range(650):
                yield (n, "t")
            raise ValueError("a bad line")

        with pytest.raises(ValueError, match="a bad line") as caught:
            await kv.copy_rows("m", ["id", "t"], rows())
        notes = " ".join(getattr(caught.value, "__notes__", []))
        stored = (await kv.sql("SELECT count(*) FROM m")).rows
        assert stored == [(600,)] and "600 rows of the copy were written" in notes, notes


def test_the_shell_loads_a_csv_file(tmp_path: Path) -> None:
    path = tmp_path / "rows.csv"
    path.write_text('id,v\n1,hello\n2,"with, comma"\n3,\n')
    loaded: list[object] = []

    class Loader:
        def copy_rows(self, table: str, columns: object, rows: object, **_: object) -> int:
            loaded.extend([table, columns, list(rows)])  # type: ignore[call-overload]
            return 3

    assert run_copy(Loader(), parse_copy(f"t (id, v) FROM '{path}' CSV HEADER"), None) == 3
    assert loaded == ["t", ("id", "v"), [["1", "hello"], ["2", "with, comma"], ["3", None]]]
    with pytest.raises(CopyUsageError, match="cannot read"):
        run_copy(Loader(), parse_copy(f"t FROM '{tmp_path / 'none.csv'}'"), None)
