"""Bootstrap lists, leader choice and metadata (hpbroker/client/cluster.py), without sockets."""

from __future__ import annotations

import pytest

from hpbroker.client.cluster import choose_leader, parse_bootstrap, reachable, topic_partitions
from hpbroker.protocol.errors import BrokerError, ErrorCode
from hpbroker.protocol.messages import MetadataReply, PartitionMetadata, TopicMetadata

A, B, C = "tcp://a:1", "tcp://b:2", "tcp://c:3"


def md(role: str, epoch: int = 0, topics=()) -> MetadataReply:
    return MetadataReply(id=1, role=role, leader_epoch=epoch, topics=list(topics))


def test_parse_bootstrap_takes_a_comma_list_or_a_list():
    assert parse_bootstrap(f" {A}, {B} ,") == [A, B]
    assert parse_bootstrap([A, "ipc:///tmp/x"]) == [A, "ipc:///tmp/x"]
    with pytest.raises(ValueError, match="no broker"):
        parse_bootstrap(" , ")
    with pytest.raises(ValueError, match="a:1"):
        parse_bootstrap("a:1")


def test_the_master_with_the_highest_epoch_leads():
    answers = {A: md("master", 1024), B: md("master", 2049), C: md("slave", 5000)}
    assert choose_leader(answers, [A, B, C], readers=False) == B


def test_equal_epochs_go_by_the_order_given():
    answers = {B: md("standalone"), A: md("standalone")}
    assert choose_leader(answers, [A, B], readers=False) == A
    assert choose_leader(answers, [B, A], readers=False) == B


def test_with_no_leader_only_readers_take_a_slave_the_first_given():
    answers = {C: md("slave", 7), B: md("slave", 9)}
    assert choose_leader(answers, [A, B, C], readers=False) is None
    assert choose_leader(answers, [A, B, C], readers=True) == B
    assert choose_leader({}, [A], readers=True) is None


def test_a_wildcard_endpoint_is_reached_through_the_bootstrap_host():
    assert reachable("tcp://0.0.0.0:7601", "tcp://10.0.0.5:7600") == "tcp://10.0.0.5:7601"
    assert reachable("tcp://*:7601", "tcp://h:7600") == "tcp://h:7601"
    assert reachable("tcp://10.0.0.6:7601", "tcp://h:7600") == "tcp://10.0.0.6:7601"
    assert reachable("ipc:///tmp/s", "tcp://h:7600") == "ipc:///tmp/s"


def test_topic_partitions_counts_or_raises_the_topics_error():
    parts = [PartitionMetadata(partition=i, leader=0) for i in range(3)]
    rep = md("standalone", topics=[TopicMetadata(name="t", partitions=parts),
                                   TopicMetadata(name="bad", code=int(ErrorCode.UNKNOWN_TOPIC_OR_PARTITION)),
                                   TopicMetadata(name="empty")])
    assert topic_partitions(rep, "t") == 3
    for topic in ("bad", "empty", "missing"):
        with pytest.raises(BrokerError) as e:
            topic_partitions(rep, topic)
        assert e.value.code == ErrorCode.UNKNOWN_TOPIC_OR_PARTITION
