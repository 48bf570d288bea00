"""/metrics' series stay bounded: 10 000 partitions fold into per-topic series (no broker needed)."""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from hpbroker import config
from hpbroker.http.metrics import BrokerCollector
from hpbroker.http.view import BrokerView
from hpbroker.protocol import messages as m
from hpbroker.stats import StatsBlock, layout as L


def _scrape(partitions_per_topic: int, topics: int, cap: int):
    cfg = config.load(http__metrics_max_partitions=cap)
    block = StatsBlock.over(L.slot_names(1, 2, False), rows=20_000)
    w0, w1 = block.slot("writer0"), block.slot("writer1")
    for t in range(topics):
        for p in range(partitions_per_topic):
            (w0 if p % 2 else w1).row_add(f"t{t}", p, L.ROW["messages_in"], 3)
    view = BrokerView(cfg, "cardtest", ["tcp://127.0.0.1:1"], block)
    view.metadata = m.MetadataReply(id=1, topics=[
        m.TopicMetadata(name=f"t{t}", partitions=[m.PartitionMetadata(partition=p, leader=0)
                                                   for p in range(partitions_per_topic)]) for t in range(topics)])
    reg = CollectorRegistry(auto_describe=False)
    reg.register(BrokerCollector(view, os.getpid()))
    fams = {f.name: f for f in text_string_to_metric_families(generate_latest(reg).decode())}
    return fams, sum(len(f.samples) for f in fams.values())


def test_partitions_up_to_the_cap_get_a_series_each():
    fams, _ = _scrape(50, 2, cap=2000)
    got = {(s.labels["topic"], s.labels["partition"]): s.value for s in fams["hpbroker_messages_in"].samples}
    assert len(got) == 100 and got[("t1", "49")] == 3
    assert fams["hpbroker_metrics_partitions_folded"].samples[0].value == 0


def test_ten_thousand_partitions_fold_into_per_topic_sums():
    fams, total = _scrape(1000, 10, cap=2000)
    got = {(s.labels["topic"], s.labels["partition"]): s.value for s in fams["hpbroker_messages_in"].samples}
    assert got == {(f"t{t}", "all"): 3000.0 for t in range(10)}  # the sum over each topic's partitions
    assert fams["hpbroker_metrics_partitions_folded"].samples[0].value == 10_000
    assert fams["hpbroker_partitions"].samples[0].value == 10_000
    assert total < 400, total  # bounded, whatever the partition count
