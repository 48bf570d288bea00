"""hpbroker: a high-throughput, durable log-ingest message broker.

Producers send record batches over ZeroMQ to acceptor processes, which hand
them through shared-memory rings to disk-writer processes that append and
group-commit.  A producer's ack means its batch is on disk.
"""

__version__ = "0.1.0"
