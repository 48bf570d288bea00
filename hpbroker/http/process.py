"""The HTTP process: entry point, spawned by the supervisor after the acceptors serve.

It binds ``http.bind``:``http.port`` (docs/http.md) and serves until SIGTERM
(the supervisor stops it first, so /readyz goes away before the acceptors
drain).  It reads the stats block read-only except for its own ``http``
slot, and talks to the acceptors as a client: nothing in the data path ever
waits for it.  If it dies, the supervisor starts it again; the broker keeps
serving meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import signal

from hpbroker import stats
from hpbroker.procutil import child_setup

log = logging.getLogger("hpbroker.http")


def main(cfg_bytes: bytes, instance: str, endpoints: list[str], supervisor_pid: int) -> None:
    cfg = child_setup("http", cfg_bytes, None)
    asyncio.run(serve(cfg, instance, endpoints, supervisor_pid))


async def serve(cfg, instance: str, endpoints: list[str], supervisor_pid: int) -> None:
    from aiohttp import web

    from hpbroker.http.app import make_app
    from hpbroker.http.brokerlink import BrokerLink
    from hpbroker.http.gateway import Gateway
    from hpbroker.http.view import BrokerView

    slot = stats.process_slot(instance, "http")
    block = stats.StatsBlock.attach(instance, readonly=True)
    view = BrokerView(cfg, instance, endpoints, block)
    link = BrokerLink(endpoints, max_message_bytes=max(64 << 20, 4 * cfg.broker.max_fetch_bytes))
    link.start()
    app = make_app(view, Gateway(cfg, link, slot), slot, supervisor_pid)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    bind = cfg.http.bind or cfg.broker.bind
    # at SIGTERM, requests in flight (a long poll) get 2 s: the broker's shutdown does not wait for them
    site = web.TCPSite(runner, bind, cfg.http_port, reuse_address=True, shutdown_timeout=2.0)
    await site.start()
    log.info("http serving on http://%s:%d (metrics, health, gateway%s)", bind, cfg.http_port,
             ", dashboard" if cfg.http.dashboard else "")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    poller = loop.create_task(view.run())
    beat = loop.create_task(_beat(slot))
    try:
        await stop.wait()
    finally:
        poller.cancel()
        beat.cancel()
        await runner.cleanup()
        await link.close()
        view.close()


async def _beat(slot) -> None:
    while True:
        slot.beat()
        await asyncio.sleep(1.0)
