"""The vocabulary every layer above shares, as plain data with no I/O.

- ``config.py``: numbered configurations (groups, the owner of every shard, keyspace
  schemes, the SQL catalog) and the controller commands that make the next one;
- ``schemes.py``: a keyspace's scheme made into a key -> shard lookup;
- ``kv.py``: the key-value operations, their results and their size limits;
- ``replies.py``: the status every service reply carries, and a replica's own view.

The controller replicates configurations, the shard server applies them, clients and the
SQL planner read them; all of them import this package and nothing here imports them.
"""
