"""Issue 21, finding 5, on real processes: a group's leader checks its replicas by itself,
every ``--check-interval`` seconds, with nobody asking (``shardwise check`` is tested in
``tests/cli/test_health_and_checks.py``).

One replica plays a planted bug (the test fault ``diverge-on-check``: it writes a key no
other replica has just before it digests); the periodic check must name it, in the
leader's status, without any request for a check.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

import pytest

from shardwise.shardserver.checks import DIVERGE_ON_CHECK, FAULT_ENV, FAULT_FILE
from shardwise.shardserver.protocol import CheckOutcome
from shardwise.testing.cluster import ProcessCluster, wait_until

pytestmark = [pytest.mark.timeout(180), pytest.mark.slow]

CHECK_INTERVAL_S: Final = 1.0
FOUND_WITHIN_S: Final = 60.0


async def test_the_leader_checks_by_itself_and_names_a_diverged_replica(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(FAULT_ENV, "1")  # the servers inherit it: test faults are read
    cluster = ProcessCluster(
        tmp_path,
        groups=1,
        controllers=1,
        server_args=(f"--check-interval={CHECK_INTERVAL_S}",),
    )
    diverged = cluster.servers[1][2]
    cluster.data_dir(diverged).mkdir(parents=True)
    (cluster.data_dir(diverged) / FAULT_FILE).write_text(DIVERGE_ON_CHECK)
    async with cluster:
        await cluster.join(1)
        async with cluster.client() as kv:
            for i in range(20):
                await kv.put(f"key-{i}", f"value-{i}")

        async def found() -> CheckOutcome | None:
            for server in cluster.servers[1]:
                status = await cluster.status(server)
                if status is not None and status.last_check and status.last_check.mismatches:
                    return status.last_check
            return None

        async def caught() -> bool:
            return await found() is not None

        await wait_until(caught, FOUND_WITHIN_S, "a periodic check to find the divergence")
        outcome = await found()
        assert outcome is not None
        assert all(m.differ == [diverged] for m in outcome.mismatches), outcome
