"""asv: record-batch encode, check and decode (the per-batch work of
producers, acceptors and consumers)."""

from hpbroker import batch


class BatchCodec:
    params = [100, 1024]
    param_names = ["value_bytes"]

    def setup(self, value_bytes):
        n = max(1, (64 * 1024) // (value_bytes + batch.ENTRY_SIZE))
        self.values = [b"v" * value_bytes] * n
        self.encoded = batch.encode_batch(self.values)

    def time_encode_64k_batch(self, value_bytes):
        batch.encode_batch(self.values)

    def time_check_64k_batch(self, value_bytes):
        batch.check_batch(self.encoded, 0, len(self.encoded))

    def time_values_of_64k_batch(self, value_bytes):
        batch.values_of(self.encoded)

    def track_encode_records_per_s(self, value_bytes):
        import time

        reps = 200
        t = time.perf_counter()
        for _ in range(reps):
            batch.encode_batch(self.values)
        return reps * len(self.values) / (time.perf_counter() - t)

    track_encode_records_per_s.unit = "records/s"
