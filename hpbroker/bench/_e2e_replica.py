"""``hpbroker-bench --replica sync|async``: a private master and slave.

Both run as ``python -m hpbroker serve`` (:class:`LocalBroker`, each in its
own session, temp dir and free port): the master with ``--role master
--broker-id 1``, the slave with ``--role slave --master URL --broker-id 2``,
both with ``--replication-mode MODE``.  Before the replicated run is
measured the bench waits until the master reports the slave in sync
(``slave_2_insync == 1`` in its Stats); at the end of the produce phase it
reads the master's ``slave_2_lag_*`` counters, then times how long the
slave takes to reach the master's LATEST offset on every partition.
"""

from __future__ import annotations

import time

from hpbroker.bench._e2e_broker import LocalBroker

MASTER_ID, SLAVE_ID = 1, 2
PREFIX = f"slave_{SLAVE_ID}_"


def stats(url: str, timeout_ms: int = 5000) -> dict:
    from hpbroker.client.request import request
    from hpbroker.protocol import messages as m

    return request(url, lambda i: m.Stats(id=i), timeout_ms).stats


def lag_stats(url: str) -> dict:
    """The master's counters about the slave: insync, lag_messages, lag_bytes, lag_seconds."""
    return {k.removeprefix(PREFIX): v for k, v in stats(url).items() if k.startswith(PREFIX)}


def latest_offsets(adm, topic: str, nparts: int) -> list[int]:
    """LATEST (high watermark) of each partition through ``adm`` (an open
    :class:`hpbroker.client.Admin`); 0 where the broker does not know the topic yet."""
    from hpbroker.protocol.errors import BrokerError, ErrorCode

    out = []
    for p in range(nparts):
        try:
            out.append(int(adm.list_offsets(topic, p, -1)))
        except BrokerError as e:
            if e.code != ErrorCode.UNKNOWN_TOPIC_OR_PARTITION:
                raise
            out.append(0)
    return out


class ReplicaPair:
    """A private master and its slave, with ``serve_args`` passed to both."""

    def __init__(self, root: str | None, serve_args: list[str], mode: str):
        self.mode = mode
        rep = ["--replication-mode", mode]
        self.master = LocalBroker(root, [*serve_args, *rep, "--role", "master", "--broker-id", str(MASTER_ID)])
        self.slave = LocalBroker(root, [*serve_args, *rep, "--role", "slave", "--master", self.master.url,
                                        "--broker-id", str(SLAVE_ID)])
        self.insync_wait_s: float | None = None

    def start(self, timeout: float = 60.0) -> "ReplicaPair":
        self.master.start(timeout)
        try:
            self.slave.start(timeout)
        except BaseException:
            self.master.stop()
            raise
        return self

    def processes(self) -> dict:
        """Both brokers' processes; the slave's are named ``slave.<role>``."""
        out = dict(self.master.processes())
        out.update({f"slave.{n}": p for n, p in self.slave.processes().items()})
        return out

    def wait_insync(self, timeout: float = 60.0) -> float:
        """Block until the master reports the slave in sync; returns the seconds waited."""
        t0 = time.perf_counter()
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            try:
                last = stats(self.master.url, 2000)
                if last.get(PREFIX + "insync") == 1:
                    self.insync_wait_s = time.perf_counter() - t0
                    return self.insync_wait_s
            except Exception as e:  # noqa: BLE001 - keep polling until the deadline
                last = repr(e)
            time.sleep(0.05)
        raise RuntimeError(f"the slave was not in sync after {timeout} s (master stats: {last});\n"
                           f"slave log:\n{self.slave.log_tail(3000)}")

    def wait_caught_up(self, topic: str, nparts: int, timeout: float = 300.0) -> dict:
        """Poll (every 10 ms, over two open connections) until the slave's
        LATEST equals the master's on every partition.  ``catch_up_seconds``
        is from the call to the poll that saw them equal, so with
        ``catch_up_polls == 1`` the slave was already there and the figure
        is just the cost of one poll."""
        from hpbroker.client import Admin

        t0 = time.perf_counter()
        deadline = time.monotonic() + timeout
        polls = 0
        with Admin(self.master.url) as ma, Admin(self.slave.url) as sa:
            while True:
                mo = latest_offsets(ma, topic, nparts)
                so = latest_offsets(sa, topic, nparts)
                polls += 1
                if mo == so:
                    return {"caught_up": True, "catch_up_seconds": time.perf_counter() - t0, "catch_up_polls": polls,
                            "master_offsets": mo, "slave_offsets": so}
                if time.monotonic() > deadline:
                    return {"caught_up": False, "catch_up_seconds": None, "catch_up_polls": polls,
                            "waited_seconds": time.perf_counter() - t0, "master_offsets": mo, "slave_offsets": so}
                time.sleep(0.01)

    def bytes_on_disk(self) -> int:
        return self.master.bytes_on_disk()

    @property
    def root(self) -> str:
        return self.master.root

    def stop(self) -> dict:
        """Stop the slave first (so the master's stop is not a failover), then the master."""
        return {"slave": self.slave.stop(), "master": self.master.stop()}

    def cleanup(self) -> dict:
        return {"master": self.master.cleanup(), "slave": self.slave.cleanup()}
