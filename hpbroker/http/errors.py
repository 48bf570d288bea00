"""JSON errors of the HTTP port: the codes of docs/protocol.md, an HTTP status each.

Every error body is ``{"error": {"code": N, "name": "...", "message": "...",
"retriable": bool}}`` with ``code`` and ``name`` from
:class:`hpbroker.protocol.errors.ErrorCode`, so a client handles the same
codes whether it speaks ZeroMQ or HTTP.

====================================  ======
code                                  status
====================================  ======
UNKNOWN_TOPIC_OR_PARTITION            404
MESSAGE_TOO_LARGE                     413
OFFSET_OUT_OF_RANGE                   416
BUSY (rate limit of the HTTP port)    429
BUSY (the broker's back-pressure)     503
NOT_LEADER, NOT_ENOUGH_REPLICAS,      503
BROKER_SHUTTING_DOWN, PARTITION_FENCED
REQUEST_TIMED_OUT                     504
INTERNAL                              500
any other (BAD_REQUEST, CORRUPT_BATCH,
UNSUPPORTED_*, ...)                   400
====================================  ======

Retriable codes (503, 429, 504) carry ``Retry-After: 1``.
"""

from __future__ import annotations

import msgspec
from aiohttp import web

from hpbroker.protocol.errors import RETRIABLE, ErrorCode, code_name

_STATUS = {
    ErrorCode.UNKNOWN_TOPIC_OR_PARTITION: 404,
    ErrorCode.MESSAGE_TOO_LARGE: 413,
    ErrorCode.OFFSET_OUT_OF_RANGE: 416,
    ErrorCode.BUSY: 503,
    ErrorCode.NOT_LEADER: 503,
    ErrorCode.NOT_ENOUGH_REPLICAS: 503,
    ErrorCode.BROKER_SHUTTING_DOWN: 503,
    ErrorCode.PARTITION_FENCED: 503,
    ErrorCode.REQUEST_TIMED_OUT: 504,
    ErrorCode.INTERNAL: 500,
}


def status_of(code: int) -> int:
    return _STATUS.get(code, 400)


def error_response(code: int, message: str, status: int | None = None) -> web.Response:
    status = status or status_of(code)
    body = {"error": {"code": int(code), "name": code_name(code), "message": message,
                      "retriable": code in RETRIABLE}}
    headers = {"Retry-After": "1"} if status in (429, 503, 504) else None
    return web.Response(status=status, body=msgspec.json.encode(body), content_type="application/json",
                        headers=headers)
