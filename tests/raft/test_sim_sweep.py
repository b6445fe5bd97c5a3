"""The randomized sweep: a replicated KV store under a random nemesis, every history
checked for linearizability and every Raft invariant checked on every event.

200 seeds run in every CI run; ``make soak`` runs thousands. A failure names its seed,
and ``run_sweep(seed)`` replays it exactly.
"""

from __future__ import annotations

import os

import pytest

from shardwise.raft.log import RaftLog
from shardwise.testing.kvsweep import SweepOptions, run_sweep
from shardwise.testing.linearizability import Verdict
from shardwise.testing.sim import InvariantViolationError

CI_SEEDS = 200
SOAK_SEEDS = int(os.environ.get("SHARDWISE_SOAK_SEEDS", "5000"))


def options_for(seed: int) -> SweepOptions:
    # Alternate cluster sizes and snapshotting, so snapshots are installed under faults.
    return SweepOptions(servers=5 if seed % 3 else 3, snapshot_every=(seed % 2) * 15)


def assert_clean(seed: int) -> None:
    result = run_sweep(seed, options_for(seed))
    assert result.verdict is Verdict.LINEARIZABLE, result.describe()
    # Liveness: once the network heals and every server is back, every client finishes.
    assert result.settled, f"seed={seed}: clients still waiting after the cluster healed"
    assert result.completed > 0


@pytest.mark.parametrize("seed", range(CI_SEEDS))
def test_sweep(seed: int) -> None:
    assert_clean(seed)


@pytest.mark.soak
def test_soak_sweep() -> None:
    failures: list[str] = []
    for seed in range(CI_SEEDS, CI_SEEDS + SOAK_SEEDS):
        try:
            assert_clean(seed)
        except (AssertionError, InvariantViolationError) as exc:
            failures.append(f"seed {seed}: {str(exc).splitlines()[0]}")
    assert not failures, "\n".join(failures)


def test_a_seed_replays_exactly() -> None:
    first, second = run_sweep(7), run_sweep(7)
    assert first.events == second.events
    assert [str(op) for op in first.history] == [str(op) for op in second.history]


def test_the_sweep_catches_a_broken_raft(monkeypatch: pytest.MonkeyPatch) -> None:
    """The control: with the vote's up-to-date check gone, some seed must fail."""
    monkeypatch.setattr(RaftLog, "is_up_to_date", lambda self, index, term: True)
    failures = 0
    for seed in range(40):
        try:
            result = run_sweep(seed, options_for(seed))
        except InvariantViolationError:
            failures += 1
            continue
        failures += result.verdict is not Verdict.LINEARIZABLE
    assert failures > 0
