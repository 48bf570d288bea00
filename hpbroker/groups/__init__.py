"""Consumer groups on the broker: assignors, the coordinator's state
machine, and the record format of ``__consumer_offsets``.  Sans-IO; the
acceptor (``hpbroker/net/groups.py``) drives it."""
