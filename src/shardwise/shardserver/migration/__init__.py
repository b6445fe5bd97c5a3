"""Moving a shard from one replica group to another: the image and delta formats
(``image``), an image arriving through the log (``staged``, ``arrivals``), the shards
that change owner (``owners``), the giving side (``source``), the paced copy
(``transfer``) and the leader's background task that drives it all (``reconciler``).

This package imports nothing itself: the state machine loads the half every replica
applies, the server the half only a leader or a source runs (see ``../DESIGN.md``).
"""
