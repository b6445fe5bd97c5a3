"""A fault harness on real processes (Jepsen's nemeses, here): see ``DESIGN.md`` of
``shardwise.testing`` and :mod:`shardwise.testing.faults.run`."""
