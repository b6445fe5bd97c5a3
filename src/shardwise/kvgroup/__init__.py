"""A Raft-replicated key-value group in real processes: the networked form of
:class:`~shardwise.raft.kv.KVStateMachine`, with its server entry point and client.

This is one replica group on its own (no shards, no controller): the building block the
sharded store runs many of, and the unit the Raft benchmarks compare with etcd.
"""
