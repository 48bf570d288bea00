"""The text port's small parts, without sockets: msgIds, batches, answers,
stats formats, configuration."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from hpbroker import batch as B
from hpbroker import config
from hpbroker.text import records as R
from hpbroker.text import replies
from hpbroker.text import stats as S
from hpbroker.text.msgids import EPOCH_MS, MsgIds, timestamp_ms


class Clock:
    def __init__(self, t: float):
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_msgid_blocks_are_consecutive_within_a_millisecond_and_never_repeat():
    clock = Clock(1_800_000_000.0)
    ids = MsgIds(1023, wall=clock)
    seen = []
    for n in (1, 4096, 3000, 2000, 4096, 7):  # 3000 + 2000 > 4096: the second starts in the next millisecond
        first = ids.block(n)
        block = list(range(first, first + n))
        assert {i >> 22 for i in block} == {first >> 22}  # one millisecond
        assert {(i >> 12) & 1023 for i in block} == {1023}  # the broker id never carried into
        seen += block
    assert len(set(seen)) == len(seen) and seen == sorted(seen)
    clock.t -= 5  # the clock steps back: still no repeat
    more = ids.block(10)
    assert more > seen[-1]
    assert timestamp_ms(seen[0]) == int(clock.t * 1000) + 5000 and EPOCH_MS < timestamp_ms(seen[0])
    with pytest.raises(ValueError):
        ids.block(4097)


def test_two_brokers_never_share_an_id():
    clock = Clock(1_800_000_000.0)
    a, b = MsgIds(1, wall=clock), MsgIds(2, wall=clock)
    xs = {i for _ in range(5) for first in [a.block(4000)] for i in range(first, first + 4000)}
    ys = {i for _ in range(5) for first in [b.block(4000)] for i in range(first, first + 4000)}
    assert not xs & ys


def test_a_text_batch_is_a_valid_hpbroker_batch_with_one_id_header_and_the_attributes():
    bodies = [b"plain", struct.pack(">i", 3) + b"k=v" + b"with attr", b"", b"x" * 300]
    flags = [0, 1, 0, 6]
    buf = R.build_batch(bodies, flags, 12345, 1_700_000_000_000)
    h = B.check_batch(buf)
    B.check_headers(buf, 0, h)
    recs = B.records_of(buf)
    assert [r.value for r in recs] == [b"plain", b"with attr", b"", b"x" * 300]
    assert [B.decode_headers(r.headers) for r in recs] == [
        [("metaq.id", struct.pack(">q", 12345))], [("metaq.attribute", b"k=v")], [], [("metaq.flag", struct.pack(">i", 6))]]
    batch = R.Batch(buf, 0, h)
    assert batch.sizes.tolist() == R.put_sizes(bodies).tolist() and batch.first_id == 12345
    plain = R.build_batch([b"a", b"bb"], None, 7, 1)
    assert B.check_batch(plain).record_count == 2 and R.Batch(plain, 0, B.read_header(plain)).plain


def test_a_put_body_whose_attribute_does_not_fit_is_refused():
    with pytest.raises(R.BadMessage):
        R.split_attribute(b"\x00\x00\x00\x09abc", 1)
    with pytest.raises(R.BadMessage):
        R.split_attribute(b"ab", 1)
    assert R.split_attribute(b"\x00\x00\x00\x01xyz", 1) == (b"x", b"yz")


def test_put_answers_carry_the_right_lengths():
    offsets = np.array([0, 9, 10, 10 ** 15 - 1, 10 ** 15, 2 ** 62], dtype=np.int64)
    ids = [5, 2065358124490948608, 10 ** 18 - 1, 10 ** 18, 123, 9]
    out = replies.put_ok([b"1", b"-2", b"3", b"4", b"5", b"6"], ids, 17, offsets)
    pos = 0
    for i, off in zip(ids, offsets.tolist()):
        head_end = out.index(b"\r\n", pos)
        _, code, length, _ = out[pos:head_end].split(b" ")
        body = out[head_end + 2:head_end + 2 + int(length)]
        assert code == b"200" and body == b"%d 17 %d" % (i, off)
        pos = head_end + 2 + int(length)
    assert pos == len(out)


def test_stats_lines_in_memcacheds_format():
    body = S.memcached_body([("cmd_put", 5), ("logs", "partitions", 4, "message_count", 9),
                             ("logs", "part", 0, "min_offset", 0, "max_offset", 99), ("old", "*Empty*")])
    assert body == (b"STAT cmd_put 5\r\nSTAT logs:partitions 4\r\nSTAT logs:message_count 9\r\n"
                    b"STAT logs:0:min_offset 0\r\nSTAT logs:0:max_offset 99\r\nSTAT old *Empty*\r\nEND\r\n")
    assert S.metaq_body([("cmd_put", 5)]) == b"STATS\r\ncmd_put 5\r\nEND\r\n"
    assert S.memcached_body([]) == b"END\r\n"


def test_realtime_counters_in_metaqs_format_restart_every_30_minutes():
    clock = Clock(0.0)
    rt = S.Realtime(clock)
    rt.add("put", "logs", 3, 3)
    clock.t = 10.0
    assert rt.line("put") == "Count=3,Value=3,Value/Count=1,Count/Duration=0,Duration=10"
    assert rt.line("put", "logs") == rt.line("put") and rt.line("put", "other").startswith("Count=0,")
    clock.t = 30 * 60 + 1
    assert rt.line("put").startswith("Count=0,")


def test_text_protocol_config():
    cfg = config.load()
    assert cfg.text_port == 8123 and config.load(broker__port=7700).text_port == 8223
    assert config.load(text_protocol__port=0).text_port == 0
    with pytest.raises(config.ConfigError, match="past 65535"):
        config.load(broker__port=65100)
    assert config.load(broker__port=65100, text_protocol__port=0).text_port == 0
    with pytest.raises(config.ConfigError, match="max_body_bytes"):
        config.load(text_protocol__max_body_bytes=4 << 20)  # past what a MetaQ offset gives a record
    assert config.load(broker__max_batch_bytes=64 << 10, broker__max_request_bytes=64 << 10).text_max_body == (63 << 10)
    assert cfg.text_max_body == 1 << 20


# -- transaction keys (hpbroker/text/txkeys.py) ----------------------------------------------------


def test_transaction_keys_are_read_and_normalised_as_metaq_prints_them():
    from hpbroker.client.xa import Xid
    from hpbroker.text import txkeys as K

    assert K.parse("TX:sess:007") == K.TxKey(K.LOCAL, "TX:sess:7")
    assert K.parse("XID:1:4142:ff:rm-1") == K.TxKey(K.XA, "XID:1:4142:ff:rm-1", "rm-1")
    assert K.parse("XID:1:4142:FF") == K.TxKey(K.XA, "XID:1:4142:ff")  # hpbroker's XID form: no qualifier
    assert K.parse("XID:7:61:62").txid == Xid(7, "a", "b").txid  # the ZeroMQ client's txid for the same XID
    assert K.parse("null").kind == K.NULL
    assert K.qualifier_of("XID:1:41:42:rm") == "rm" and K.qualifier_of("XID:1:41:42") is None
    for bad in ("", "TX", "TX:s", "TX::1", "TX:s:x", "TX:s:1:2", "TX:s:99999999999", "XID:1:41", "XID:x:41:42:q",
                "XID:1:4:42:q", "XID:1:zz:42:q", "XID:1:41:42:", "XID:1:41:42:q:r", "XID:1:" + "41" * 65 + ":42:q",
                "NULL", "tx:s:1"):
        with pytest.raises(K.BadKey, match="Illegal transaction key"):
            K.parse(bad)


def test_hpbroker_errors_become_the_xa_codes_metaqs_client_reads():
    from hpbroker.protocol.errors import ErrorCode as E
    from hpbroker.text import txkeys as K

    assert K.xa_error(-4, "gone") == "XAException:code=-4,msg=gone"
    assert K.xa_code(E.UNKNOWN_TRANSACTION, "", "commit") == K.XAER_NOTA
    assert K.xa_code(E.INVALID_TXN_STATE, "XA branch x is open: prepare it first", "commit") == K.XAER_PROTO
    assert K.xa_code(E.INVALID_TXN_STATE, "transaction x is already committed", "rollback") == K.XA_HEURCOM
    assert K.xa_code(E.INVALID_TXN_STATE, "transaction x is already rolled back", "commit") == K.XA_HEURRB
    assert K.xa_code(E.TRANSACTION_TIMED_OUT, "", "commit") == K.XA_RBTIMEOUT
    assert K.xa_code(E.NOT_ENOUGH_REPLICAS, "", "prepare") == K.XAER_RMFAIL
    assert K.xa_code(E.UNKNOWN_TOPIC_OR_PARTITION, "", "commit") == K.XAER_RMERR
    assert K.coordinator("TX:s:1", 8, 2) == __import__("zlib").crc32(b"TX:s:1") % 8 % 2
