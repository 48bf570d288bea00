"""kill -9 of a broker in the middle of transactions, and what must come back.

Shared by tests/test_tx_crash.py (a few cycles per step) and
tools/tx-crash-sweep (many).  A :class:`CrashBroker` is a real broker
(2 acceptors on fixed ports, 2 writers) whose data survives its kills; a
:class:`Ledger` holds what the clients were told about every transaction
and plain produce; :func:`check` reads every partition back and compares.

Every message value names its transaction: ``<txid>#<i>#`` padded to
``VALUE_SIZE`` bytes, so a record read back says which transaction it
belongs to and which of its messages it is.  Outcomes the ledger knows:

==================  =========================================================
state               after the restart, its messages must be
==================  =========================================================
committed           the commit's reply said so: present exactly once each
rolled_back         the rollback's reply said so, or it never reached the
                    broker: absent
open                begun, never decided (maybe journalled): absent
commit_in_doubt     commit sent, no reply before the kill: all present
                    exactly once, or none (the check records which)
prepared            tpc_prepare returned: absent until resolved, and listed
                    by tpc_recover()
prepare_in_doubt    prepare sent, no reply: absent; listed or not
==================  =========================================================

Plain (non-transactional) batches sent with acks=all beside them: an acked
one present exactly once, an unacked one at most once.  And in every
partition the offsets run from 0 without a gap.
"""

from __future__ import annotations

import itertools
import random
import re
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

from brokerproc import BrokerProcess, free_port
from hpbroker.client import Producer
from hpbroker.client.transaction import TxChannel
from hpbroker.ipc.handoff import owner_of
from hpbroker.protocol import messages as m
from hpbroker.protocol.errors import BrokerError
from hpbroker.tx import journal
from rawclient import RawClient

TOPICS = ("txa", "txb")
PARTITIONS = 4
WRITERS = 2
LOG_PARTITIONS = 4
VALUE_SIZE = 100
#: small, so that a transaction of a few hundred messages is journalled in several TxProduce requests
FLUSH_BYTES = 4096

COMMITTED, ROLLED_BACK, OPEN = "committed", "rolled_back", "open"
COMMIT_IN_DOUBT, PREPARED, PREPARE_IN_DOUBT = "commit_in_doubt", "prepared", "prepare_in_doubt"


def value(txid: str, i: int) -> bytes:
    return f"{txid}#{i}#".encode().ljust(VALUE_SIZE, b".")


def owner(v: bytes) -> tuple[str, int]:
    txid, i, _ = v.split(b"#", 2)
    return txid.decode(), int(i)


def writer_of(topic: str, partition: int) -> int:
    return owner_of(topic, partition, WRITERS)


def journal_writer(txid: str) -> int:
    return writer_of(journal.TOPIC, journal.partition_for(txid, LOG_PARTITIONS))


class CrashBroker:
    """A broker whose data and ports survive kill -9 and restart."""

    def __init__(self, root: Path, extra_config: str = ""):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        cfg = self.root / "broker.toml"
        cfg.write_text(f"[broker]\nacceptor_ports = [{free_port()}]\n"
                       # a writer held with SIGSTOP must not be declared dead
                       "[ring]\ndead_after_ms = 120000\n"
                       f"[transactions]\nlog_partitions = {LOG_PARTITIONS}\n{extra_config}")
        self.b = BrokerProcess(self.root / "data", args=(
            "--config", str(cfg), "--acceptors", "2", "--writers", str(WRITERS), "--partitions", str(PARTITIONS)))
        self.url = self.b.url
        self.kills = 0

    def start(self) -> "CrashBroker":
        self.b.start()
        return self

    def kill(self) -> None:
        self.kills += 1
        self.b.kill()

    def restart(self) -> None:
        self.b._log.close()
        self.b.start()

    def stop(self) -> None:
        self.b.stop()

    def log_text(self) -> str:
        return self.b.log_path.read_text(errors="replace")

    def writer_pid(self, i: int) -> int:
        found = re.findall(rf"started writer{i} \(pid (\d+)\)", self.log_text())
        assert found, f"no writer{i} in the broker log"
        return int(found[-1])


class Rec:
    __slots__ = ("txid", "xa", "state", "values", "producer", "handle")

    def __init__(self, txid: str, xa: bool):
        self.txid = txid
        self.xa = xa
        self.state = OPEN
        self.values: dict[tuple[str, int], list[bytes]] = defaultdict(list)
        self.producer = None  # an XA branch's producer (tpc_commit() with no argument)
        self.handle = None  # the client's Transaction object


class Ledger:
    def __init__(self):
        self.lock = threading.Lock()
        self.txs: dict[str, Rec] = {}
        self.plain_acked: list[bytes] = []
        self.plain_sent: list[bytes] = []
        self.in_doubt_outcomes = Counter()  # committed / absent

    def new(self, txid: str, xa: bool) -> Rec:
        with self.lock:
            assert txid not in self.txs, txid
            r = self.txs[txid] = Rec(txid, xa)
            return r

    def in_state(self, *states: str) -> list[Rec]:
        with self.lock:
            return [r for r in self.txs.values() if r.state in states]


def add(rec: Rec, tx_or_producer, tp: tuple[str, int], n: int) -> None:
    """Send ``n`` more messages of ``rec`` to ``tp`` through a Transaction
    (or, for an XA branch, its Producer), noting them first."""
    vals = [value(rec.txid, sum(map(len, rec.values.values())) + i) for i in range(n)]
    rec.values[tp].extend(vals)
    tx_or_producer.send_batch(tp[0], vals, partition=tp[1])


def all_partitions() -> list[tuple[str, int]]:
    return [(t, p) for t in TOPICS for p in range(PARTITIONS)]


# -- load running beside the step that is killed ----------------------------------------


class Committer(threading.Thread):
    """Small local transactions over random partitions, one after another
    (some rolled back), and plain acks=all batches between them, until
    stopped or the broker goes."""

    def __init__(self, url: str, ledger: Ledger, name: str, seed: int, partitions=None):
        super().__init__(daemon=True, name=name)
        self.url, self.ledger, self.rng = url, ledger, random.Random(seed)
        self.partitions = partitions or all_partitions()
        self.stop_flag = threading.Event()
        self.done = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        p = Producer(self.url, acks="all", request_timeout_ms=20_000, transaction_flush_bytes=FLUSH_BYTES)
        try:
            while not self.stop_flag.is_set() and self._one(p):
                self.done += 1
        except BaseException as e:  # noqa: BLE001 - reported by the test
            self.error = e
        finally:
            close_quietly(p)

    def _one(self, p: Producer) -> bool:
        rng = self.rng
        try:
            tx = p.transaction()
        except BrokerError:
            return False
        rec = self.ledger.new(tx.txid, False)
        rec.handle = tx
        try:
            for tp in rng.sample(self.partitions, rng.randint(1, 3)):
                add(rec, tx, tp, rng.randint(1, 60))
        except BrokerError:
            return False  # a flush failed: the transaction stays open (never decided)
        if rng.random() < 0.2:
            try:
                tx.rollback()
                rec.state = ROLLED_BACK
            except BrokerError:
                return False
        else:
            rec.state = COMMIT_IN_DOUBT
            try:
                tx.commit()
            except BrokerError:
                return False
            rec.state = COMMITTED
        tp = rng.choice(self.partitions)
        vals = [value(f"plain-{self.name}-{self.done}", i) for i in range(rng.randint(1, 20))]
        with self.ledger.lock:
            self.ledger.plain_sent.extend(vals)
        try:
            # the producer retries a batch through a broker restart: wait only so long
            p.send_batch(tp[0], vals, partition=tp[1]).result(3)
        except Exception:  # noqa: BLE001 - not acked: at most once
            return False
        with self.ledger.lock:
            self.ledger.plain_acked.extend(vals)
        return True


def close_quietly(p: Producer) -> None:
    """Close ``p``; what it could not deliver in a moment is dropped (unacked)."""
    try:
        p.close(0.5)
    except BrokerError:
        pass


_names = itertools.count()


def start_committers(url: str, ledger: Ledger, n: int, seed: int, partitions=None) -> list[Committer]:
    cs = [Committer(url, ledger, f"c{next(_names)}", seed * 100 + i, partitions) for i in range(n)]
    for c in cs:
        c.start()
    return cs


def stop_committers(cs: list[Committer]) -> None:
    for c in cs:
        c.stop_flag.set()
    for c in cs:
        c.join(60)
        if c.is_alive():
            import sys
            import traceback
            stack = "".join(traceback.format_stack(sys._current_frames()[c.ident]))
            raise AssertionError(f"committer {c.name} hangs:\n{stack}")
        assert c.error is None, f"committer {c.name}: {c.error!r}"


def wait_committed(cs: list[Committer], n: int = 1, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while any(c.done < n for c in cs):
        assert time.monotonic() < deadline, "the committers got nothing through"
        time.sleep(0.02)


# -- reading back -----------------------------------------------------------------


def tx_list(url: str) -> list[m.TxInfo]:
    ch = TxChannel(url, request_timeout_ms=10_000, connect_timeout_ms=10_000)
    try:
        return [t for r in ch.on_every_acceptor(lambda i: m.TxList(id=i)) for t in r.transactions]
    finally:
        ch.close()


def settled(url: str, timeout: float = 60.0) -> list[m.TxInfo]:
    """Wait until recovery is done: no transaction committing or rolling
    back (TxList itself makes each acceptor read its journal back)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            txs = tx_list(url)
        except BrokerError:
            txs = None
        if txs is not None and not any(t.state in ("committing", "rolling_back", "preparing") for t in txs):
            return txs
        assert time.monotonic() < deadline, f"recovery not finished: {txs}"
        time.sleep(0.1)


def read_values(url: str, tp: tuple[str, int]) -> list[tuple[int, bytes]]:
    c = RawClient(url)
    try:
        rep = c.call(m.Metadata(id=c.next_id(), topics=[tp[0]]))[0]
        if not any(t.name == tp[0] for t in rep.topics):
            return []
        return [(r.offset, r.value) for r in c.fetch_all(*tp)]
    finally:
        c.close()


def journal_kinds(url: str, txid: str) -> list[int]:
    """The kinds of ``txid``'s records in its journal partition, in order."""
    c = RawClient(url)
    try:
        out, offset = [], 0
        p = journal.partition_for(txid, LOG_PARTITIONS)
        while True:
            rep, data = c.fetch(journal.TOPIC, p, offset, max_bytes=4 << 20)
            assert rep.code == 0, rep
            if not data:
                return out
            out += [e.kind for e in journal.decode(data) if e.txid == txid and e.offset >= offset]
            offset = journal.last_offset(data)
    finally:
        c.close()


def check(url: str, ledger: Ledger) -> dict:
    """Read every partition and compare with ``ledger`` (see the module
    docstring); commit_in_doubt transactions become committed or
    rolled_back by what was found.  -> counts of what was checked."""
    found: Counter = Counter()
    where: dict[bytes, tuple[str, int]] = {}
    for tp in all_partitions():
        recs = read_values(url, tp)
        offsets = [o for o, _ in recs]
        assert offsets == list(range(len(recs))), f"{tp}: offsets not contiguous from 0: {offsets[:20]}..."
        last_index: dict[str, int] = {}
        for _, v in recs:
            found[v] += 1
            where[v] = tp
            txid, i = owner(v)
            assert i > last_index.get(txid, -1), f"{tp}: {txid}'s messages out of order"
            last_index[txid] = i
    with ledger.lock:
        recs = list(ledger.txs.values())
        plain_acked, plain_sent = list(ledger.plain_acked), set(ledger.plain_sent)
    known = set(plain_sent)
    counts = Counter()
    for r in recs:
        vals = [v for vs in r.values.values() for v in vs]
        known.update(vals)
        n = [found[v] for v in vals]
        for tp, vs in r.values.items():
            for v in vs:
                assert found[v] == 0 or where[v] == tp, f"{r.txid}: {v[:40]!r} in {where[v]}, sent to {tp}"
        if r.state == COMMITTED:
            assert all(x == 1 for x in n), f"committed {r.txid}: counts {Counter(n)} (want each once)"
        elif r.state == COMMIT_IN_DOUBT:
            assert all(x == 1 for x in n) or not any(n), f"in-doubt {r.txid} half there: counts {Counter(n)}"
            r.state = COMMITTED if vals and all(x == 1 for x in n) else ROLLED_BACK
            ledger.in_doubt_outcomes[r.state] += 1
        else:
            assert not any(n), f"{r.state} {r.txid}: {sum(n)} of its {len(vals)} messages visible"
        counts[r.state] += 1
    for v in plain_acked:
        assert found[v] == 1, f"acked plain {v[:40]!r} found {found[v]} times"
    for v in plain_sent:
        assert found[v] <= 1, f"plain {v[:40]!r} found {found[v]} times"
    stray = [v for v in found if v not in known]
    assert not stray, f"{len(stray)} records nobody sent, e.g. {stray[0][:60]!r}"
    counts["records"] = sum(found.values())
    return dict(counts)
