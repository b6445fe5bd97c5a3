"""Transactions on real processes (a controller of 3, two groups of 3, TCP, fsync'd logs):
the list-append and bank workloads of ``testing/txnsweep.py`` while group leaders are
killed with ``kill -9`` and restarted, and while client *processes* doing transfers are
killed with ``kill -9`` in the middle of their commits. Afterwards the participants'
recovery must have settled every transaction those clients left prepared: the final
reads go through (no key stays locked), the list-append history is strictly
serializable and every read of all the accounts, the final one included, sees the
initial total.
"""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
from pathlib import Path
from typing import Final

import pytest

from shardwise.testing.cluster import ProcessCluster, kill_leaders_and_clients
from shardwise.testing.procs import kill_child, start_python_child
from shardwise.testing.txnsweep import TxnSweepOptions, TxnWorkloads

pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]

SEED: Final = 22
WORKLOAD_S: Final = 20.0
"""Wall-clock seconds of workload (and of faults)."""
CHILD_START_S: Final = 30.0

CHILD = """
import json, random, sys
from shardwise.client import SyncClient, TransactionError
from shardwise.testing.txnsweep import INITIAL_BALANCE

controllers, secret, accounts, seed = json.loads(sys.argv[1])
controllers = {name: tuple(address) for name, address in controllers.items()}
rng = random.Random(seed)

def balance(value):
    return INITIAL_BALANCE if value is None else int(value)

with SyncClient(controllers, bytes.fromhex(secret), deadline_s=4.0) as kv:
    print("READY", flush=True)
    while True:
        source, dest = rng.sample(accounts, 2)
        amount = rng.randint(1, 30)

        def transfer(tx):
            have = balance(tx.get(source))
            if have >= amount:
                tx.put(source, str(have - amount))
                tx.put(dest, str(balance(tx.get(dest)) + amount))

        try:
            kv.run_transaction(transfer, max_attempts=3)
        except TransactionError:
            pass
"""


def start_child(cluster: ProcessCluster, accounts: list[str], seed: int) -> subprocess.Popen[str]:
    controllers = {name: list(address) for name, address in cluster.controllers.items()}
    argument = json.dumps([controllers, cluster.secret.hex(), accounts, seed])
    return start_python_child(CHILD, argument, "READY", CHILD_START_S)


async def test_transactions_survive_kill_9_of_leaders_and_of_clients_mid_commit(
    tmp_path: Path,
) -> None:
    rng = random.Random(SEED)
    async with ProcessCluster(tmp_path, groups=2) as cluster:
        await cluster.join(1, 2)
        await cluster.settled()
        workloads = TxnWorkloads(SEED, cluster, TxnSweepOptions(clients=3))
        clients = [asyncio.create_task(workloads.client(n)) for n in range(3)]
        children = [start_child(cluster, workloads.accounts, rng.getrandbits(32))]

        async def replace_child() -> None:
            kill_child(children.pop())  # kill -9, wherever its commit is
            children.append(start_child(cluster, workloads.accounts, rng.getrandbits(32)))

        try:
            events = await kill_leaders_and_clients(cluster, rng, WORKLOAD_S, replace_child)
        finally:
            for child in children:
                kill_child(child)
            workloads.stop.set()
            await asyncio.gather(*clients)
        await cluster.settled()
        problems = await workloads.final_reads()
    result = workloads.verdict(problems, events)
    print(result.describe())
    assert result.ok, result.describe()
    assert result.committed > 100, result.describe()
