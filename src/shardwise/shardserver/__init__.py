"""The shard server: a replica group's state machine and the shards it holds.

A group's Raft log drives everything here. Each shard the group holds is its own SQLite
database file (``store.py``: the shard's keys and values, its SQL tables (``sqlshard.py``),
its client de-duplication table, its lifecycle state and the log index it has applied),
and each shard moves through an explicit lifecycle (``lifecycle.py``: serving, pulling,
frozen, garbage) by log entries only, so every replica of the group agrees on what it
holds. Moving a shard between groups is ``migration/``; ``DESIGN.md`` maps the rest.
"""
