"""A shard's life in one replica group, as an explicit transition table.

Each group tracks every shard it holds through these states; a state changes only by an
entry in the group's Raft log (so all replicas agree), and only along the table below.
Anything else is a bug and raises :class:`~shardwise.errors.InvalidShardTransitionError`
rather than being patched over with flags.

::

    ABSENT --gain from nobody--> SERVING       (a brand-new shard starts empty)
    ABSENT --gain--------------> PULLING       (fetch it from the previous owner)
    PULLING --installed--------> SERVING       (data and de-duplication state arrived)
    SERVING --lose-------------> FROZEN        (no more writes; kept for the new owner)
    FROZEN --handed off--------> GARBAGE       (the new owner installed it)
    FROZEN --gain--------------> PULLING       (given back: fetch it from the owner in
                                                between, who may have written to it)
    GARBAGE --deleted----------> ABSENT        (the file is gone)

There is no "regain" straight from FROZEN to SERVING: a group cannot know locally whether
the group it lost the shard to has installed it and taken writes, so a shard given back
is always pulled from its previous owner. That owner can answer: it cannot move past the
configuration in which it gained the shard before it has installed it. The frozen copy
stays readable for that pull until the taker confirms (``frozen_at`` in the group's state
machine), even while the group pulls the newer copy.
"""

from __future__ import annotations

import enum
from typing import Final

from shardwise.errors import InvalidShardTransitionError


class ShardState(enum.Enum):
    ABSENT = "absent"
    PULLING = "pulling"
    SERVING = "serving"
    FROZEN = "frozen"
    GARBAGE = "garbage"


class ShardEvent(enum.Enum):
    GAIN_FROM_NOBODY = "gain from nobody"
    GAIN = "gain"
    INSTALLED = "installed"
    LOSE = "lose"
    HANDED_OFF = "handed off"
    DELETED = "deleted"


S, E = ShardState, ShardEvent

TRANSITIONS: Final[dict[tuple[ShardState, ShardEvent], ShardState]] = {
    (S.ABSENT, E.GAIN_FROM_NOBODY): S.SERVING,
    (S.ABSENT, E.GAIN): S.PULLING,
    (S.PULLING, E.INSTALLED): S.SERVING,
    (S.SERVING, E.LOSE): S.FROZEN,
    (S.FROZEN, E.HANDED_OFF): S.GARBAGE,
    (S.FROZEN, E.GAIN): S.PULLING,
    (S.GARBAGE, E.DELETED): S.ABSENT,
}

SERVES: Final = frozenset({S.SERVING})
"""States in which the group answers reads and writes for the shard."""

HOLDS_DATA: Final = frozenset({S.SERVING, S.FROZEN, S.GARBAGE})
"""States in which the group has a complete copy on disk (a pulling shard is partial)."""


def transition(state: ShardState, event: ShardEvent) -> ShardState:
    """The state after ``event``; an event the table does not allow is an error."""
    try:
        return TRANSITIONS[(state, event)]
    except KeyError:
        raise InvalidShardTransitionError(
            f"a shard in state {state.value!r} cannot take event {event.value!r}"
        ) from None
