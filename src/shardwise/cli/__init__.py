"""The ``shardwise`` command line: ``shardwise up`` runs a local cluster, the other
commands look at a running cluster, use it and change it (see ``main.py``)."""
