"""The shard controller service: replicated, numbered configurations of the cluster.

The data it replicates (configurations, keyspace schemes, the SQL catalog, the commands
that make the next configuration) lives below the services, in :mod:`shardwise.model`,
so that clients and the SQL planner can read a configuration without loading a service.
Here: ``statemachine.py`` applies the commands, ``rebalance.py`` assigns shards,
``server.py`` and ``protocol.py`` serve them, and ``client.py`` calls them.

Nothing is re-exported, so importing one part loads only what that part needs.
"""
