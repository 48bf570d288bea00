"""hpbroker.client: Producer, Consumer and Admin over ZeroMQ (kafka-python's shape).

Imports only :mod:`hpbroker.protocol`, :mod:`hpbroker.batch` and zmq; a
``zk://`` URL (a cluster found in ZooKeeper, docs/client.md) also loads
:mod:`hpbroker.cluster` and kazoo.
"""

from hpbroker.client.admin import Admin, PartitionInfo
from hpbroker.client.consumer import Consumer
from hpbroker.client.integrity import CorruptBatchError
from hpbroker.client.producer import Producer
from hpbroker.client.records import FutureRecordMetadata, Message, RawBatches, RecordMetadata, SpilledFuture
from hpbroker.protocol.errors import BrokerError, ErrorCode
from hpbroker.protocol.filters import Filter, FilterError

__all__ = [
    "Admin",
    "BrokerError",
    "Consumer",
    "CorruptBatchError",
    "ErrorCode",
    "Filter",
    "FilterError",
    "FutureRecordMetadata",
    "Message",
    "PartitionInfo",
    "Producer",
    "RawBatches",
    "RecordMetadata",
    "SpilledFuture",
]
