"""asv suite: the broker end to end (``hpbroker-bench`` with no subcommand).

One private broker (``python -m hpbroker serve`` on a free loopback port,
temp data dir) is started per benchmark class in ``setup`` and stopped in
``teardown`` (SIGTERM, process group killed if it hangs, /dev/shm checked).
Each ``track_*`` runs one short round trip: a producer process sends
100-byte messages with acks=1 (durable) and a consumer process reads them
back with ``poll_batches``.  The CLI equivalent with latency percentiles,
CPU per process and baselines is ``hpbroker-bench --json``.
"""

import argparse
import os

from hpbroker.bench import _e2e_broker as EB
from hpbroker.bench import e2e

MESSAGES = 1_000_000


def _args(**kw):
    p = argparse.ArgumentParser()
    e2e.add_arguments(p)
    a = p.parse_args(["--messages", str(MESSAGES), "--no-progress"])
    for k, v in kw.items():
        setattr(a, k, v)
    return a


class EndToEnd:
    params = (["producer", "raw"],)
    param_names = ["client"]
    timeout = 300
    number = 1
    repeat = 3

    def setup(self, client):
        self.broker = EB.LocalBroker(os.environ.get("HPBROKER_BENCH_DIR"), ["--partitions", "4"]).start()
        self.procs = self.broker.processes()

    def teardown(self, client):
        self.broker.stop()
        left = self.broker.cleanup()
        if left:
            raise RuntimeError(f"broker left shared memory behind: {left}")

    def _run(self, client, consumers=0):
        r = e2e.measure(_args(client=client, consumers=consumers, no_replay=True), self.broker.url, self.procs, self.broker)
        if not r["ok"]:
            raise RuntimeError(f"inconsistent counts: {r}")
        return r

    def track_produce_msgs_per_s(self, client):
        return self._run(client)["msgs_per_s"]

    track_produce_msgs_per_s.unit = "msgs/s"

    def track_ack_p99_ms(self, client):
        return self._run(client)["p99_ms"]

    track_ack_p99_ms.unit = "ms"

    def track_consume_msgs_per_s(self, client):
        return self._run(client, consumers=1)["consume_msgs_per_s"]

    track_consume_msgs_per_s.unit = "msgs/s"
