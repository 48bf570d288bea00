"""The hpbroker wire protocol, sans-IO (no sockets, no zmq).

Transport: clients use ZeroMQ DEALER sockets connected to the acceptors'
ROUTER sockets.  A message is multipart: frame 0 is a msgpack header (a
tagged msgspec Struct from :mod:`.messages`, tag key ``"t"``), frames 1..
are raw payload.  DEALER sends no empty delimiter frame; replies come back
the same way, matched to requests by ``id``.  docs/protocol.md has the
full specification.
"""

from hpbroker.protocol.codec import (
    as_buffer,
    decode_reply,
    decode_request,
    encode_reply,
    encode_request,
    error_frames,
    error_reply,
    protocol_error_frames,
    protocol_error_reply,
    wants_reply,
)
from hpbroker.protocol.errors import RETRIABLE, BrokerError, ErrorCode, ProtocolError, code_name
from hpbroker.protocol.messages import (
    ANY_PARTITION,
    EARLIEST,
    LATEST,
    PROTOCOL_VERSION,
    REPLY_FOR,
    CreateTopic,
    CreateTopicReply,
    ErrorReply,
    Fetch,
    FetchReply,
    ListOffsets,
    ListOffsetsReply,
    Metadata,
    MetadataReply,
    PartitionMetadata,
    Produce,
    ProduceMessages,
    ProduceReply,
    Reply,
    Request,
    TopicMetadata,
)
from hpbroker.protocol.payload import build_messages_batch, check_produce, messages_batch_size

__all__ = [name for name in dir() if not name.startswith("_")]
