"""Messages to frames and frames to messages, without any I/O.

The caller owns the socket: it hands :func:`decode_request` the list that
``recv_multipart(copy=False)`` returned (minus the ROUTER identity frame)
and passes what :func:`encode_reply` returns to ``send_multipart(copy=False)``.

Frame 0 is the msgpack header; frames 1.. are payload.  A frame may be
``bytes``, ``bytearray``, ``memoryview``, anything else that ``memoryview()``
accepts, or an object with a ``.buffer`` attribute (``zmq.Frame``).  Decoded
payload frames are returned as byte-format memoryviews (no copy).

Everything that can go wrong while decoding raises :class:`ProtocolError`
with a code from :class:`ErrorCode` and the correlation id when known.
"""

from __future__ import annotations

from typing import Any, Sequence

import msgspec

from hpbroker.protocol.errors import ErrorCode, ProtocolError
from hpbroker.protocol.messages import (
    PROTOCOL_VERSION,
    REPLY_FOR,
    REPLY_TYPES,
    REQUEST_TYPES,
    ErrorReply,
    FetchReply,
    Produce,
    ProduceMessages,
    Reply,
    Request,
    TxEnd,
    TxProduce,
)

_encoder = msgspec.msgpack.Encoder()
_request_decoder = msgspec.msgpack.Decoder(Request)
_reply_decoder = msgspec.msgpack.Decoder(Reply)
_untyped_decoder = msgspec.msgpack.Decoder()

_EMPTY = memoryview(b"")
_REQUEST_BY_NAME: dict[str, type] = {t.__name__: t for t in REQUEST_TYPES}
_PRODUCE_NAMES = frozenset({"Produce", "ProduceMessages"})


def as_buffer(frame: Any) -> memoryview:
    """A flat byte memoryview over ``frame`` (no copy); TypeError if none."""
    buf = getattr(frame, "buffer", None)
    mv = memoryview(frame if buf is None else buf)
    if mv.format != "B" or mv.ndim != 1:
        mv = mv.cast("B")
    return mv


def encode_request(req: Request, payloads: Sequence[Any] = ()) -> list:
    """Frames for ``send_multipart(copy=False)``: the header, then payloads."""
    if not isinstance(req, REQUEST_TYPES):
        raise TypeError(f"not a request: {type(req).__name__}")
    return [_encoder.encode(req), *payloads]


def encode_reply(rep: Reply, payloads: Sequence[Any] = ()) -> list:
    """Frames for a reply.  A :class:`FetchReply` always carries exactly one
    payload frame; an empty one is added when none is given."""
    if not isinstance(rep, REPLY_TYPES):
        raise TypeError(f"not a reply: {type(rep).__name__}")
    if isinstance(rep, FetchReply) and not payloads:
        payloads = (b"",)
    return [_encoder.encode(rep), *payloads]


def error_reply(req: Request | int | None, code: int, message: str = "") -> Reply:
    """The reply that reports ``code`` for ``req``: the request's own reply
    type when ``req`` is a decoded request, else an :class:`ErrorReply`
    (``req`` may be the correlation id, or None for -1)."""
    if isinstance(req, REQUEST_TYPES):
        return REPLY_FOR[type(req)](id=req.id, code=int(code), message=message)
    return ErrorReply(id=-1 if req is None else int(req), code=int(code), message=message)


def error_frames(req: Request | int | None, code: int, message: str = "") -> list:
    """:func:`error_reply`, encoded."""
    return encode_reply(error_reply(req, code, message))


def protocol_error_reply(err: ProtocolError) -> Reply:
    """The reply to a request that did not decode: the reply type of the
    request type its header names (``err.kind``), so that, e.g., every reply
    to a Fetch is a FetchReply with its one payload frame; an
    :class:`ErrorReply` when the header names no request type, or a protocol
    version other than this one (whose types this side cannot know)."""
    request_type = _REQUEST_BY_NAME.get(err.kind)
    if request_type is None or err.code == ErrorCode.UNSUPPORTED_VERSION:
        return ErrorReply(id=err.id, code=int(err.code), message=err.message)
    return REPLY_FOR[request_type](id=err.id, code=int(err.code), message=err.message)


def protocol_error_frames(err: ProtocolError) -> list:
    """The frames that answer an undecodable request (:func:`protocol_error_reply`)."""
    return encode_reply(protocol_error_reply(err))


def wants_reply(x: Request | ProtocolError) -> bool:
    """False for a produce request with acks=0, or a decoding error in one
    whose header showed acks=0: those get no reply at all, errors included
    (docs/protocol.md, section 7).  True for everything else."""
    if isinstance(x, ProtocolError):
        return x.acks != 0
    return not (isinstance(x, (Produce, ProduceMessages)) and x.acks == 0)


def decode_request(frames: Sequence[Any]) -> tuple[Request, list[memoryview]]:
    """``(request, payload_frames)``; raises :class:`ProtocolError`."""
    req, payloads = _decode(frames, _request_decoder, "request")
    n = len(payloads)
    if isinstance(req, Produce):
        if n == 0:
            raise _refused(req, "Produce carries no record batch frame")
    elif isinstance(req, ProduceMessages):
        if n == 0:
            raise _refused(req, "ProduceMessages carries no message frame")
        if req.keys and n % 2:
            raise _refused(req, f"ProduceMessages with keys=True needs key/value frame pairs, got {n} frames")
    elif isinstance(req, (TxProduce, TxEnd)):
        want = sum(part.batches for part in req.parts)
        if n != want:
            raise _refused(req, f"{type(req).__name__} names {want} batches in parts but carries {n} frames")
    elif n:
        raise _refused(req, f"{type(req).__name__} takes no payload frames, got {n}")
    return req, payloads


def _refused(req, message: str, code: int = ErrorCode.BAD_REQUEST) -> ProtocolError:
    """A ProtocolError about a request whose header decoded."""
    return ProtocolError(code, message, req.id, kind=type(req).__name__, acks=getattr(req, "acks", None))


def decode_reply(frames: Sequence[Any]) -> tuple[Reply, list[memoryview]]:
    """``(reply, payload_frames)``; raises :class:`ProtocolError`.  A
    :class:`FetchReply` always comes back with exactly one payload buffer
    (empty if the broker sent none)."""
    rep, payloads = _decode(frames, _reply_decoder, "reply")
    if isinstance(rep, FetchReply):
        if not payloads:
            payloads = [_EMPTY]
        elif len(payloads) > 1:
            raise ProtocolError(ErrorCode.BAD_REQUEST, f"FetchReply with {len(payloads)} payload frames (expected 1)", rep.id)
    elif payloads:
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"{type(rep).__name__} takes no payload frames", rep.id)
    return rep, payloads


def _decode(frames: Sequence[Any], decoder: msgspec.msgpack.Decoder, what: str):
    try:
        n = len(frames)
    except TypeError:
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"{what} frames must be a sequence") from None
    if n == 0:
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"empty {what}: no header frame")
    try:
        head = as_buffer(frames[0])
    except (TypeError, ValueError) as e:
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"header frame is not a buffer: {e}") from None
    try:
        msg = decoder.decode(head)
    except Exception as e:  # DecodeError, ValidationError, or worse on hostile input
        raise _diagnose(head, e, what) from None
    if msg.v != PROTOCOL_VERSION:
        raise ProtocolError(
            ErrorCode.UNSUPPORTED_VERSION, f"protocol version {msg.v} is not supported (this side speaks {PROTOCOL_VERSION})", msg.id
        )
    try:
        payloads = [as_buffer(f) for f in frames[1:]]
    except (TypeError, ValueError) as e:
        raise _refused(msg, f"payload frame is not a buffer: {e}") from None
    return msg, payloads


def _diagnose(head: memoryview, err: Exception, what: str) -> ProtocolError:
    """Say as precisely as possible why a header did not decode, and recover
    the correlation id when the header is a readable map."""
    try:
        obj = _untyped_decoder.decode(head)
    except Exception:
        return ProtocolError(ErrorCode.BAD_REQUEST, f"{what} header is not valid msgpack")
    if not isinstance(obj, dict):
        return ProtocolError(ErrorCode.BAD_REQUEST, f"{what} header must be a msgpack map, got {type(obj).__name__}")
    cid = obj.get("id", -1)
    if not isinstance(cid, int) or isinstance(cid, bool) or not -(1 << 63) <= cid < 1 << 63:
        cid = -1
    v = obj.get("v", PROTOCOL_VERSION)
    if v != PROTOCOL_VERSION:
        return ProtocolError(
            ErrorCode.UNSUPPORTED_VERSION, f"protocol version {v!r} is not supported (this side speaks {PROTOCOL_VERSION})", cid
        )
    kind = obj.get("t")
    kind = kind if isinstance(kind, str) else ""
    acks = obj.get("acks", 1)
    # acks=0 is what this version's produce requests say it is: an integer 0
    acks = 0 if kind in _PRODUCE_NAMES and type(acks) is int and acks == 0 else None
    return ProtocolError(ErrorCode.BAD_REQUEST, f"invalid {what} header: {err}", cid, kind=kind, acks=acks)
