"""SQL transactions on real processes (a controller of 3, two groups of 3, TCP, fsync'd
logs): sessions move money between accounts on shards of both groups with ``BEGIN`` ...
``COMMIT`` while group leaders are killed with ``kill -9`` and restarted, and while a
client *process* doing the same is killed with ``kill -9`` wherever its commit is. After:
the participants' recovery settled what the dead clients left prepared (a plain read of
every shard goes through: nothing stays locked), the total is what it was, and no
balance went below zero although every transfer checked it inside its transaction."""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Final

import pytest

from shardwise.client.sql import ClusterSql
from shardwise.errors import ShardwiseError
from shardwise.model.config import Configuration, ShardId
from shardwise.model.schemes import shard_map
from shardwise.model.txn import TransactionError
from shardwise.testing.cluster import ProcessCluster, kill_leaders_and_clients
from shardwise.testing.procs import kill_child, start_python_child

pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]

SEED: Final = 23
WORKLOAD_S: Final = 20.0
"""Wall-clock seconds of workload (and of faults)."""
CHILD_START_S: Final = 30.0
ACCOUNTS: Final = 12
START: Final = 100
SESSIONS: Final = 3

CREATE: Final = (
    "CREATE TABLE accounts (id INTEGER PRIMARY KEY, balance INTEGER NOT NULL) "
    "WITH (distribution = 'id')"
)

CHILD = """
import json, random, sys
from shardwise.client import SyncClient
from shardwise.errors import ShardwiseError
from shardwise.model.config import Configuration, ShardId
from shardwise.model.schemes import shard_map

controllers, secret, accounts, seed = json.loads(sys.argv[1])
controllers = {name: tuple(address) for name, address in controllers.items()}
rng = random.Random(seed)
with SyncClient(controllers, bytes.fromhex(secret), deadline_s=4.0) as db:
    print("READY", flush=True)
    while True:
        source, dest = rng.sample(accounts, 2)
        amount = rng.randint(1, 40)
        try:
            db.sql("BEGIN")
            have = db.sql("SELECT balance FROM accounts WHERE id = ?", [source]).rows[0][0]
            if have >= amount:
                db.sql("UPDATE accounts SET balance = balance - ? WHERE id = ?", [amount, source])
                db.sql("UPDATE accounts SET balance = balance + ? WHERE id = ?", [amount, dest])
            db.sql("COMMIT")
        except ShardwiseError:
            try:
                db.sql("ROLLBACK")
            except ShardwiseError:
                pass
"""


def start_child(cluster: ProcessCluster, accounts: list[int], seed: int) -> subprocess.Popen[str]:
    controllers = {name: list(address) for name, address in cluster.controllers.items()}
    argument = json.dumps([controllers, cluster.secret.hex(), accounts, seed])
    return start_python_child(CHILD, argument, "READY", CHILD_START_S)


async def transfers(
    session: ClusterSql, accounts: list[int], rng: random.Random, stop: asyncio.Event
) -> tuple[int, int]:
    """Transfers until ``stop``: (committed, refused for want of money)."""
    loop = asyncio.get_running_loop()
    committed = refused = 0
    while not stop.is_set():
        source, dest = rng.sample(accounts, 2)
        amount = rng.randint(1, 40)

        async def run(sql: str, params: list[int] | None = None) -> Sequence[tuple[object, ...]]:
            return (await session.execute(sql, params, loop.time() + 4.0)).rows

        try:
            await run("BEGIN")
            have = (await run("SELECT balance FROM accounts WHERE id = ?", [source]))[0][0]
            assert isinstance(have, int)
            if have < amount:
                await run("COMMIT")  # (a read-only commit: the refusal was on a true read)
                refused += 1
                continue
            await run("UPDATE accounts SET balance = balance - ? WHERE id = ?", [amount, source])
            await run("UPDATE accounts SET balance = balance + ? WHERE id = ?", [amount, dest])
            await run("COMMIT")
            committed += 1
        except (TransactionError, ShardwiseError):
            try:
                await run("ROLLBACK")
            except ShardwiseError:
                await asyncio.sleep(0.1)  # (a group without a leader, for a moment)
    return committed, refused


async def test_sql_transfers_survive_kill_9_of_leaders_and_of_clients_mid_commit(
    tmp_path: Path,
) -> None:
    rng = random.Random(SEED)
    async with ProcessCluster(tmp_path, groups=2) as cluster:
        await cluster.join(1, 2)
        await cluster.settled()
        async with cluster.client(deadline_s=10.0) as db:
            await db.sql(CREATE)
            accounts = list(range(1, ACCOUNTS + 1))
            rows = ", ".join(f"({a}, {START})" for a in accounts)
            await db.sql(f"INSERT INTO accounts VALUES {rows}")
            config = await db.latest_configuration()
            groups = {config.owner(_shard(config, a)) for a in accounts}
            assert groups == {1, 2}, "the accounts must span both groups"

            stop = asyncio.Event()
            sessions = [
                asyncio.create_task(
                    transfers(db.sql_session(), accounts, random.Random(rng.getrandbits(32)), stop)
                )
                for _ in range(SESSIONS)
            ]
            children = [start_child(cluster, accounts, rng.getrandbits(32))]

            async def replace_child() -> None:
                kill_child(children.pop())  # kill -9, wherever its commit is
                children.append(start_child(cluster, accounts, rng.getrandbits(32)))

            try:
                events = await kill_leaders_and_clients(cluster, rng, WORKLOAD_S, replace_child)
            finally:
                for child in children:
                    kill_child(child)
                stop.set()
                done = await asyncio.gather(*sessions)
            await cluster.settled()
            # Every shard answers a plain read (nothing left locked past recovery), and
            # the money is all there.
            result = await db.sql("SELECT id, balance FROM accounts ORDER BY id", deadline_s=30.0)
            balances = {int(r[0]): int(r[1]) for r in result.rows}  # type: ignore[arg-type]
    committed = sum(c for c, _ in done)
    described = f"events {events}; committed {committed}; balances {balances}"
    print(described)
    assert sorted(balances) == accounts, described
    assert sum(balances.values()) == START * ACCOUNTS, described
    assert min(balances.values()) >= 0, described
    assert committed > 20, described


def _shard(config: Configuration, key: int) -> ShardId:
    return shard_map(config.keyspaces["default"]).shard(str(key))
