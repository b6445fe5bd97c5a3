"""What a Raft host replicates: a deterministic state machine fed committed commands.

The host hands the state machine every committed COMMAND entry, in log order, exactly
once per incarnation of its state. Everything a replica does to its state must follow
from the command bytes and the index alone (no clock, no randomness, no local files other
than its own), or replicas diverge.
"""

from __future__ import annotations

from typing import Protocol


class StateMachine(Protocol):
    """The application side of a replica group.

    **Idempotent replay.** :meth:`applied_index` is stored *with* the data it describes
    (an in-memory machine loses both together; a SQLite one writes it in the same
    transaction as each command), so after a crash the host skips every entry at or
    below it and nothing is applied twice. Indexes of entries that are not commands
    (no-ops, membership changes) are never passed in, so the applied index may lag the
    host's by those entries; replaying them is harmless.

    **Batches.** A state machine may also define ``end_batch()``: the host calls it after
    each batch of :meth:`apply` calls (one Raft Ready's committed entries), before anything
    else runs on the loop, so the machine can commit the batch's writes at once. Results
    returned by :meth:`apply` are delivered to proposers only after it returns.

    **Errors.** :meth:`apply` answers bad *requests* with a result (the proposer decodes
    it); it raises only when it cannot understand a committed command at all, and then the
    host halts the replica (``ReplicaHaltedError``) rather than skip it and diverge.
    """

    def applied_index(self) -> int:
        """Index of the last command applied (0 for an empty state)."""
        ...

    def apply(self, index: int, command: bytes) -> bytes:
        """Apply the committed command at ``index``; return the result for its proposer."""
        ...

    def snapshot(self) -> bytes:
        """The whole state as of :meth:`applied_index`, de-duplication state included."""
        ...

    def restore(self, data: bytes, index: int) -> None:
        """Replace the whole state with a snapshot covering the log up to ``index``."""
        ...
