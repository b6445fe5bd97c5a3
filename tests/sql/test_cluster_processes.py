"""SQL on real processes: a controller of 3 and two groups of 3 servers, each its own
process on loopback, through ``Client.sql`` and through ``shardwise.dbapi``."""

from __future__ import annotations

import asyncio
import random
from collections import defaultdict
from pathlib import Path

import pytest

from shardwise import dbapi
from shardwise.client import SyncClient
from shardwise.testing.cluster import ProcessCluster

pytestmark = pytest.mark.timeout(300)

ORDERS = 300


async def test_sql_on_real_processes(tmp_path: Path, rng: random.Random) -> None:
    orders = [(i, f"c{rng.randint(0, 19)}", rng.randint(1, 400) / 4) for i in range(ORDERS)]
    totals: dict[str, list[float]] = defaultdict(list)
    for _, customer, total in orders:
        totals[customer].append(total)
    async with ProcessCluster(tmp_path, groups=2) as cluster:
        await cluster.join(1, 2)
        await cluster.settled()
        async with cluster.client(deadline_s=30.0) as kv:
            await kv.sql(
                "CREATE TABLE orders (id INTEGER PRIMARY KEY, customer TEXT NOT NULL, "
                "total REAL) WITH (distribution = 'id')"
            )
            marks = ", ".join("(?, ?, ?)" for _ in orders)
            inserted = await kv.sql(
                f"INSERT INTO orders VALUES {marks}", [v for row in orders for v in row]
            )
            assert inserted.rowcount == ORDERS
            # An aggregate over every shard, grouped by a column that is not the
            # distribution column, ordered by the aggregate, cut by LIMIT.
            top = await kv.sql(
                "SELECT customer, count(*) AS n, sum(total) AS spent FROM orders "
                "GROUP BY customer ORDER BY spent DESC, customer LIMIT 3"
            )
            want = sorted(
                ((c, len(t), sum(t)) for c, t in totals.items()), key=lambda r: (-r[2], r[0])
            )[:3]
            assert top.columns == ("customer", "n", "spent")
            assert top.rows == want
            one = await kv.sql("SELECT customer, total FROM orders WHERE id = $1", [17])
            assert one.rows == [(orders[17][1], orders[17][2])]

        def through_dbapi() -> None:
            with dbapi.connect(cluster.controllers, cluster.secret) as conn:
                cursor = conn.cursor()
                cursor.execute(
                    "SELECT count(*) AS n, max(total) AS top FROM orders WHERE customer = ?",
                    ["c3"],
                )
                assert [d[0] for d in cursor.description or ()] == ["n", "top"]
                assert cursor.fetchall() == [(len(totals["c3"]), max(totals["c3"], default=None))]
                with pytest.raises(dbapi.IntegrityError):
                    cursor.execute("INSERT INTO orders VALUES (?, ?, ?)", orders[0])

        def sessions_of_one_client() -> None:
            """Connections on threads, each a session of one SyncClient, each its own
            transaction: one's rollback leaves the other's commit."""
            with SyncClient(cluster.controllers, cluster.secret) as client:
                one = dbapi.Connection(client.sql_session())
                two = dbapi.Connection(client.sql_session())
                one.cursor().execute("INSERT INTO orders VALUES (?, ?, ?)", (9001, "s1", 1.0))
                two.cursor().execute("INSERT INTO orders VALUES (?, ?, ?)", (9002, "s2", 2.0))
                one.rollback()
                two.commit()
                found = client.sql("SELECT id FROM orders WHERE id > 9000 ORDER BY id").rows
                assert found == [(9002,)]
                copied = client.copy_rows("orders", None, [(9003, "s3", 3.0), (9004, "s3", 4.0)])
                assert copied == 2
                one.close()
                two.close()

        await asyncio.to_thread(through_dbapi)
        await asyncio.to_thread(sessions_of_one_client)

        await batched_statements(cluster, orders)


async def batched_statements(cluster: ProcessCluster, orders: list[tuple[int, str, float]]) -> None:
    """Statements of one client that meet in one pass of its loop travel in one call
    to a server (client/batching.py), point reads and writes alike. Writes of one shard
    cannot share a log entry (a store applies an entry once): the first joins it, the
    others are logged alone, and each applies once."""
    async with cluster.client(deadline_s=30.0) as kv:
        before = kv.batches_sent
        bump = "UPDATE orders SET total = total + 1 WHERE id = ?"
        scatter = "SELECT id, customer FROM orders WHERE id < ?"
        done = await asyncio.gather(
            *(kv.sql(bump, [17]) for _ in range(8)),
            *(kv.sql(bump, [i]) for i in range(20, 60)),
            *(kv.sql("SELECT total FROM orders WHERE id = ?", [i]) for i in range(60, 90)),
            *(kv.sql(scatter, [ORDERS]) for _ in range(3)),
        )
        assert [r.rowcount for r in done[:48]] == [1] * 48
        assert [r.rows for r in done[48:78]] == [[(orders[i][2],)] for i in range(60, 90)]
        assert all(len(r.rows) == ORDERS for r in done[78:])
        assert kv.batches_sent > before
        after = await kv.sql("SELECT id, total FROM orders WHERE id = 17 OR id BETWEEN 20 AND 59")
        bumped = {i: orders[i][2] + (8 if i == 17 else 1) for i in (17, *range(20, 60))}
        assert {row[0]: row[1] for row in after.rows} == bumped
