"""The shardwise client: key-value operations and SQL on a sharded, replicated cluster.

::

    async with Client({"ctl-1": ("10.0.0.1", 7000)}, secret) as client:
        await client.put("user:1", "ada")
        assert await client.get("user:1") == "ada"

    with SyncClient({"ctl-1": ("10.0.0.1", 7000)}, secret) as client:  # blocking
        client.put("user:1", "ada")

The parts (see ``DESIGN.md``): ``kv.py`` the async :class:`Client`, ``sync.py`` the
blocking :class:`SyncClient`, ``router.py`` a request's way to its group's leader,
``batching.py`` requests to one server sent together, ``writers.py`` exactly-once writes,
``scan.py`` scans, ``txn.py`` transactions, ``sql.py`` SQL over the cluster,
``controller.py`` the controller's client.
"""

from __future__ import annotations

from shardwise.client.fanout import MAX_FANOUT
from shardwise.client.kv import DEFAULT_DEADLINE_S, MAX_WRITES_IN_FLIGHT, Client
from shardwise.client.scan import DEFAULT_SCAN_LIMIT, MAX_SCAN_LIMIT, SCAN_PAGE_ROWS
from shardwise.client.sync import SyncClient, SyncTransaction
from shardwise.client.txn import Transaction
from shardwise.model.txn import (
    TransactionConflictError,
    TransactionError,
    TransactionOutcomeUnknownError,
)

__all__ = [
    "DEFAULT_DEADLINE_S",
    "DEFAULT_SCAN_LIMIT",
    "MAX_FANOUT",
    "MAX_SCAN_LIMIT",
    "MAX_WRITES_IN_FLIGHT",
    "SCAN_PAGE_ROWS",
    "Client",
    "SyncClient",
    "SyncTransaction",
    "Transaction",
    "TransactionConflictError",
    "TransactionError",
    "TransactionOutcomeUnknownError",
]
