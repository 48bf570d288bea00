"""A topic the master creates while its slave follows: the slave registers
it before it appends (and so acknowledges) any batch of it, so an acks=all
record of a brand-new topic survives a kill -9 of the master and a
promotion of the slave at once.

Found by tools/sweep-kill-ingest --failover (docs/reliability.md): the
slave's writers appended the first batches of a new topic, and reported
them durable, before the slave's next keep-alive told it the topic
existed; killed in that second, the master left a promoted slave that
answered UNKNOWN_TOPIC_OR_PARTITION for records acknowledged with
acks=all (they were on its disk, but not in its topic registry)."""

from __future__ import annotations

from hpbroker import batch
from hpbroker.protocol import messages as m
from rawclient import RawClient
from test_replication import master, promote, slave, stats, wait_until


def test_acks_all_records_of_a_new_topic_survive_a_failover_the_moment_they_are_acknowledged(tmp_path):
    a = master(tmp_path, "a")
    b = slave(tmp_path, "b", a)
    try:
        wait_until(lambda: stats(a).get("slave_2_insync") == 1, 30, "the slave to be in sync")
        c = RawClient(a.url)
        acked = {}
        for i in range(3):  # topics the slave has never heard of, each acknowledged and then...
            topic = f"fresh{i}"
            rep = c.call(m.Produce(id=c.next_id(), topic=topic, partition=1, acks=-1),
                         [batch.encode_batch([b"%s-%d" % (topic.encode(), j) for j in range(5)])])[0]
            assert rep.code == 0, rep
            acked[topic] = rep.base_offsets[0]
        c.close()
        a.kill()  # ...the master killed the moment the last one was acknowledged
        promote(b)
        s = RawClient(b.url)
        for topic, base in acked.items():
            rep = s.call(m.ListOffsets(id=s.next_id(), topic=topic, partition=1, spec=m.LATEST))[0]
            assert rep.code == 0, f"{topic}: {rep.code} {rep.message}"
            assert [r.value for r in s.fetch_all(topic, 1)] == [b"%s-%d" % (topic.encode(), j) for j in range(5)]
        s.close()
    finally:
        b.stop()
        a.stop()
