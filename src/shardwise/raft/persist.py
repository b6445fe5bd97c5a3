"""Writing a Ready to storage: the one place that knows the order, shared by every host.

The order matters. The snapshot goes first: entries that arrived after it start right
past its index, so appending them first would leave a gap in the stored log. Entries go
before the hard state, whose commit index may point into them. Nothing is durable until
``sync``; a caller that syncs separately (the simulator, to crash between the two) uses
:func:`write_ready`.
"""

from __future__ import annotations

from shardwise.raft.ready import Ready
from shardwise.storage.interface import RaftStorage


def write_ready(storage: RaftStorage, ready: Ready) -> None:
    """Hand the Ready's snapshot, entries and hard state to storage, without syncing."""
    if ready.snapshot is not None:
        storage.save_snapshot(ready.snapshot.meta, ready.snapshot.data)
    if ready.entries:
        storage.append(ready.entries)
    if ready.hard_state is not None:
        storage.set_hard_state(ready.hard_state)


def persist_ready(storage: RaftStorage, ready: Ready) -> None:
    """:func:`write_ready`, then one sync if the Ready needs durability (group commit)."""
    write_ready(storage, ready)
    if ready.must_sync:
        storage.sync()
