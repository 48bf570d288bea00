"""hpbroker: a high-throughput, durable log-ingest message broker.

Producers send record batches over ZeroMQ to acceptor processes, which hand
them through shared-memory rings to disk-writer processes that append and
group-commit.  A producer's ack means its batch is on disk.
"""

__version__ = "0.1.0"

# The client API, imported on first use so that ``import hpbroker`` (and
# every broker process) stays cheap and zmq-free until a client is needed.
_CLIENT_NAMES = {
    "Producer": "hpbroker.client.producer",
    "Consumer": "hpbroker.client.consumer",
    "Admin": "hpbroker.client.admin",
    "RecordMetadata": "hpbroker.client.records",
    "Message": "hpbroker.client.records",
    "BrokerError": "hpbroker.protocol.errors",
    "CorruptBatchError": "hpbroker.client.integrity",
    "Filter": "hpbroker.protocol.filters",
    "FilterError": "hpbroker.protocol.filters",
}


def __getattr__(name: str):
    module = _CLIENT_NAMES.get(name)
    if module is None:
        raise AttributeError(f"module 'hpbroker' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(list(globals()) + list(_CLIENT_NAMES))
