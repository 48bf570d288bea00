"""asv suite: the log append + group commit path (hpbroker.io).

Pre-encoded batches go through GroupCommit into one partition (durable mode:
write + fdatasync before the ack); ``pipelined`` flushes with
``start_flush()`` (I/O thread) instead of the blocking ``flush()``.  ``track_*`` report MB/s and records/s
of one 128 MiB run; ``track_disk_baseline_mb_per_s`` is a raw sequential
O_DIRECT write of the same bytes in the same run, to read the others against.
The CLI equivalent with medians and ratios is ``hpbroker-bench log --json``.
"""

import os
import shutil
import tempfile

from hpbroker.bench.log import disk_baseline, make_batches, run_case

TOTAL = 128 << 20


class LogAppend:
    params = (["100B_in_64KiB", "1MiB"], [True, False], [False, True])
    param_names = ["batches", "direct_io", "pipelined"]
    timeout = 300

    def setup(self, batches, direct, pipelined):
        self.root = tempfile.mkdtemp(prefix="asv-log-", dir=os.environ.get("HPBROKER_BENCH_DIR", os.getcwd()))
        rec, size = (100, 64 << 10) if batches == "100B_in_64KiB" else (1000, 1 << 20)
        self.bufs = make_batches(rec, size)

    def teardown(self, batches, direct, pipelined):
        shutil.rmtree(self.root, ignore_errors=True)

    def track_mb_per_s(self, batches, direct, pipelined):
        return run_case(self.root, self.bufs, TOTAL, direct, pipelined=pipelined)["mb_per_s"]

    track_mb_per_s.unit = "MB/s"

    def track_records_per_s(self, batches, direct, pipelined):
        return run_case(self.root, self.bufs, TOTAL, direct, pipelined=pipelined)["records_per_s"]

    track_records_per_s.unit = "records/s"


class DiskBaseline:
    timeout = 120

    def setup(self):
        self.root = tempfile.mkdtemp(prefix="asv-disk-", dir=os.environ.get("HPBROKER_BENCH_DIR", os.getcwd()))

    def teardown(self):
        shutil.rmtree(self.root, ignore_errors=True)

    def track_disk_baseline_mb_per_s(self):
        return disk_baseline(self.root, TOTAL)["mb_per_s"]

    track_disk_baseline_mb_per_s.unit = "MB/s"
