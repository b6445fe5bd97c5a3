"""Transactions across shards, the shard server's side (DESIGN.md, "Transactions").

``state.py`` the SQL of a shard's transaction tables; ``store.py`` the store's methods
that apply a transaction's commands; ``handlers.py`` the RPCs; ``client.py`` the calls
that settle and resolve a transaction across groups (shared by clients and by
``recovery.py``, the leader's task that finishes what a dead client left prepared).
Imports nothing, so each part loads alone.
"""
