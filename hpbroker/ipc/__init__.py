"""The contracts between a broker's processes, free of sockets and of zmq.

==========================  ====================================================
module                      what crosses, between whom
==========================  ====================================================
:mod:`.handoff`             ring records: acceptor (or a slave's replicator) ->
                            writer; which writer owns a partition
:mod:`.completions`         writer -> acceptors and replicator, per group commit
:mod:`.control`             supervisor <-> children: readiness, topics, the
                            cluster view, promotion
:mod:`.replica`             replicator -> acceptors (ReplicaState), slave ->
                            master (SlaveAck), a master writer's PUB metadata
==========================  ====================================================

Each process imports these and its own sockets; nothing here imports
another hpbroker package, so a contract cannot drag a process's code along.
"""
