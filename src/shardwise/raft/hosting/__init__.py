"""The parts of :class:`~shardwise.raft.host.RaftHost` that own a job of their own: its
options and status (``options``), when it snapshots (``snapshots``), the leadership
changes it logs (``events``) and the futures its callers wait on (``waiting``). Like the
host, they run on asyncio; the pure core in ``shardwise.raft`` imports none of them."""
