"""The shard lifecycle table: every allowed edge, every forbidden one refused."""

from __future__ import annotations

import itertools

import pytest

from shardwise.errors import InvalidShardTransitionError
from shardwise.shardserver.lifecycle import (
    HOLDS_DATA,
    SERVES,
    TRANSITIONS,
    ShardEvent,
    ShardState,
    transition,
)

S, E = ShardState, ShardEvent


def test_the_migration_path() -> None:
    # The gaining group: absent -> pulling -> serving.
    assert transition(transition(S.ABSENT, E.GAIN), E.INSTALLED) is S.SERVING
    # The losing group: serving -> frozen -> garbage -> absent.
    state = S.SERVING
    for event in (E.LOSE, E.HANDED_OFF, E.DELETED):
        state = transition(state, event)
    assert state is S.ABSENT


def test_only_serving_shards_answer_and_pulling_ones_hold_no_complete_copy() -> None:
    assert {S.SERVING} == SERVES
    assert S.PULLING not in HOLDS_DATA and S.ABSENT not in HOLDS_DATA


@pytest.mark.parametrize(("state", "event"), list(itertools.product(S, E)))
def test_every_pair_is_either_in_the_table_or_refused(state: ShardState, event: ShardEvent) -> None:
    if (state, event) in TRANSITIONS:
        assert transition(state, event) is TRANSITIONS[(state, event)]
    else:
        with pytest.raises(InvalidShardTransitionError, match=state.value):
            transition(state, event)


def test_no_state_is_a_dead_end_and_every_state_is_reachable() -> None:
    sources = {state for state, _ in TRANSITIONS}
    targets = set(TRANSITIONS.values())
    assert sources == set(S) and targets == set(S)
