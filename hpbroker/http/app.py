"""The aiohttp application of the HTTP port: routes, limits, JSON errors.

=================================================  ==================================
route                                              handler
=================================================  ==================================
GET /metrics                                       Prometheus exposition (metrics.py)
GET /healthz, GET /readyz                          health.py
POST /topics/{topic}[/partitions/{partition}]      gateway.py, produce
GET /topics/{topic}/partitions/{partition}         gateway.py, consume (long poll)
GET /, /static/*                                   the dashboard (static/)
GET /api/*                                         its JSON API (api.py)
=================================================  ==================================

Gateway routes are rate limited per client address
(``http.rate_limit_per_s``: 429 with code BUSY) and their bodies bounded
(``http.max_body_bytes``: 413 MESSAGE_TOO_LARGE).  Every error a handler
raises as BrokerError becomes the JSON body of :mod:`hpbroker.http.errors`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from hpbroker.protocol.errors import BrokerError, ErrorCode
from hpbroker.stats import Slot
from hpbroker.stats import layout as L

from hpbroker.http.api import DashboardApi
from hpbroker.http.errors import error_response
from hpbroker.http.gateway import Gateway
from hpbroker.http.health import readiness
from hpbroker.http.metrics import BrokerCollector
from hpbroker.http.view import BrokerView

log = logging.getLogger("hpbroker.http")

STATIC = Path(__file__).with_name("static")
_REQUESTS = L.COUNTER["http_requests"]
_LIMITED = L.COUNTER["http_rate_limited"]
_LATENCY = L.HISTOGRAM_INDEX["http_request_seconds"]


class RateLimit:
    """A token bucket per client address: ``rate`` tokens a second, at most
    ``rate`` saved up.  The table forgets addresses idle for a minute."""

    def __init__(self, rate: int, clock=time.monotonic):
        self.rate = rate
        self.clock = clock
        self._buckets: dict[str, list[float]] = {}
        self._sweep = clock() + 60

    def allow(self, who: str) -> bool:
        if not self.rate:
            return True
        now = self.clock()
        if now > self._sweep:
            self._buckets = {k: b for k, b in self._buckets.items() if now - b[1] < 60}
            self._sweep = now + 60
        b = self._buckets.get(who)
        if b is None:
            b = self._buckets[who] = [float(self.rate), now]
        b[0] = min(float(self.rate), b[0] + (now - b[1]) * self.rate)
        b[1] = now
        if b[0] < 1.0:
            return False
        b[0] -= 1.0
        return True


def make_app(view: BrokerView, gateway: Gateway, slot: Slot, supervisor_pid: int) -> web.Application:
    cfg = view.cfg
    limit = RateLimit(cfg.http.rate_limit_per_s)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(BrokerCollector(view, supervisor_pid))

    @web.middleware
    async def errors(request: web.Request, handler):
        gated = request.path.startswith("/topics/")
        t0 = time.perf_counter()
        slot.add(_REQUESTS)
        try:
            if gated and not limit.allow(request.remote or "?"):
                slot.add(_LIMITED)
                return error_response(ErrorCode.BUSY, f"more than {cfg.http.rate_limit_per_s} requests/s from "
                                                      f"{request.remote} (http.rate_limit_per_s)", 429)
            return await handler(request)
        except BrokerError as e:
            return error_response(e.code, e.message)
        except web.HTTPRequestEntityTooLarge:
            return error_response(ErrorCode.MESSAGE_TOO_LARGE,
                                  f"the body is larger than http.max_body_bytes ({cfg.http.max_body_bytes})")
        except web.HTTPException as e:
            if e.status >= 400 and gated:
                return error_response(ErrorCode.BAD_REQUEST, e.reason, e.status)
            raise
        except (asyncio.CancelledError, ConnectionResetError):
            raise
        except Exception as e:  # noqa: BLE001 - a bug answers 500 and leaves the rest serving
            log.exception("%s %s failed", request.method, request.path)
            return error_response(ErrorCode.INTERNAL, f"{type(e).__name__}: {e}")
        finally:
            if gated:
                slot.observe(_LATENCY, time.perf_counter() - t0)

    async def metrics(request: web.Request) -> web.Response:
        body = await asyncio.to_thread(generate_latest, registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(request: web.Request) -> web.Response:
        ready, checks = readiness(view)
        return web.json_response({"ready": ready, "checks": checks}, status=200 if ready else 503)

    app = web.Application(middlewares=[errors], client_max_size=cfg.http.max_body_bytes)
    app.add_routes([
        web.get("/metrics", metrics),
        web.get("/healthz", healthz),
        web.get("/readyz", readyz),
        web.post("/topics/{topic}", gateway.produce),
        web.post("/topics/{topic}/partitions/{partition}", gateway.produce),
        web.get("/topics/{topic}/partitions/{partition}", gateway.consume),
    ])
    if cfg.http.dashboard:
        started = view.block.created_ns / 1e9 if view.block is not None else time.time()
        app.add_routes(DashboardApi(view, supervisor_pid, started).routes())

        async def index(request: web.Request) -> web.FileResponse:
            return web.FileResponse(STATIC / "index.html")

        app.add_routes([web.get("/", index), web.static("/static", STATIC)])
    return app
