"""asv suite: the shared-memory ring (hpbroker.ring) against pyzmq ipc:// PUSH/PULL.

``track_*`` run one producer process and this process as the consumer
(see hpbroker/bench/_ring_workers.py) and report throughput or latency;
each ring figure has its pyzmq counterpart measured in the same run of the
suite.  ``time_*`` are in-process costs over a bytearray (no processes).
Importable without a running broker.  Full runs: ``hpbroker-bench ring``.
"""

from hpbroker.ring import Ring, layout


def _w():
    from hpbroker.bench import _ring_workers

    return _ring_workers


class RingThroughput:
    timeout = 300
    number = 1
    repeat = 1

    def track_ring_64k_gb_per_s(self):
        n = 20_000
        return n * 65536 / _w().ring_throughput(65536, n) / 1e9

    track_ring_64k_gb_per_s.unit = "GB/s"

    def track_zmq_64k_gb_per_s(self):
        n = 8_000
        return n * 65536 / _w().zmq_throughput(65536, n) / 1e9

    track_zmq_64k_gb_per_s.unit = "GB/s"

    def track_ring_128b_records_per_s(self):
        n = 1_000_000
        return n / _w().ring_throughput(128, n, batch=1024)

    track_ring_128b_records_per_s.unit = "records/s"

    def track_zmq_128b_records_per_s(self):
        n = 300_000
        return n / _w().zmq_throughput(128, n)

    track_zmq_128b_records_per_s.unit = "records/s"


class RingLatency:
    timeout = 300
    number = 1
    repeat = 1

    def track_ring_p50_us(self):
        import numpy as np

        return float(np.percentile(_w().ring_latency(128, 10_000), 50))

    track_ring_p50_us.unit = "us"

    def track_zmq_p50_us(self):
        import numpy as np

        return float(np.percentile(_w().zmq_latency(128, 10_000), 50))

    track_zmq_p50_us.unit = "us"


class RingInProcess:
    """Per-call Python cost of the ring API over a bytearray."""

    def setup(self):
        cap = 1 << 20
        self.ring = Ring(bytearray(layout.segment_bytes(cap)), init=True, capacity=cap)
        self.w = self.ring.writer(full_timeout=0)
        self.r = self.ring.reader()
        self.small = [b"x" * 128] * 1024
        self.big = b"y" * 65536

    def time_write_many_1024x128b_and_drain(self):
        self.w.write_many(self.small)
        self.r.drain(lambda t, v: None)

    def time_write_64k_and_drain(self):
        self.w.write(self.big)
        self.r.drain(lambda t, v: None)
