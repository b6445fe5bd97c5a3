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
