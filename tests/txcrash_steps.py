"""The steps at which tests/test_tx_crash.py and tools/tx-crash-sweep kill
the broker, and one kill-restart-check cycle (:func:`cycle`).

Each step sets up its transactions beside :class:`txcrash.Committer`
threads (local transactions and plain batches that keep going through
the kill), kills the broker with SIGKILL of its process group, and
returns a function to run after the restart (or None):

==================  ==========================================================
step                killed when
==================  ==========================================================
after_begin         local and XA transactions are begun, some with messages
                    still in the client (nothing of them journalled)
mid_sends           a local and an XA transaction larger than the flush size
                    are being sent: some TxProduce requests are journalled,
                    one is in flight
after_prepare       XA branches are prepared: one whose messages were
                    journalled before the prepare, one whose messages rode
                    with it, one with none (and one more with none was
                    prepared and committed before)
commit_partial      between the journal's COMMIT and the appends: the writer
                    of half the transaction's partitions is held with
                    SIGSTOP, so the other half is appended and durable, this
                    half is not (the journal's own writer runs)
commit_unapplied    every append is durable but APPLIED is not: the data
                    writer held until COMMIT is durable, then the journal's
                    writer held, the data writer let go and its appends seen
commit_race         many committers at once, and the kill at a random moment:
                    the window is hit when it is hit (the broker's recovery
                    log line says so; the sweep counts them)
==================  ==========================================================

After the restart every cycle checks (:func:`txcrash.check`) the whole
ledger, resolves the prepared XA branches (half committed, half rolled
back; some through the producer that prepared them, some by XID from a
new one) and checks again.
"""

from __future__ import annotations

import os
import re
import signal
import threading
import time

from hpbroker.client import Producer
from hpbroker.protocol.errors import BrokerError, ErrorCode
from hpbroker.tx import journal
from txcrash import (COMMIT_IN_DOUBT, COMMITTED, FLUSH_BYTES, OPEN, PREPARE_IN_DOUBT, PREPARED, ROLLED_BACK,
                     CrashBroker, Ledger, add, all_partitions, check, close_quietly, journal_kinds, journal_writer, read_values,
                     settled, start_committers, stop_committers, tx_list, wait_committed, writer_of)

#: unflushed: a transaction keeps its messages in the client until commit
BIG_FLUSH = 64 << 20


class Ctx:
    """What one cycle holds: its producers (closed at the end), its rng."""

    def __init__(self, cb: CrashBroker, ledger: Ledger, rng, n: int):
        self.cb, self.ledger, self.rng, self.n = cb, ledger, rng, n
        self.producers: list[Producer] = []

    def producer(self, flush_bytes: int = FLUSH_BYTES) -> Producer:
        p = Producer(self.cb.url, acks="all", request_timeout_ms=20_000, transaction_flush_bytes=flush_bytes)
        self.producers.append(p)
        return p

    def xid_for(self, p: Producer, tag: str, journal_on: int | None = None):
        """A fresh XID (journalled by writer ``journal_on`` if given)."""
        for k in range(1000):
            x = p.xid(7, f"g-{self.cb.kills}-{self.n}-{tag}-{k}", "b1")
            if journal_on is None or journal_writer(x.txid) == journal_on:
                return x
        raise AssertionError("no such XID")

    def close(self) -> None:
        for p in self.producers:
            close_quietly(p)


def _expect_error(fn, *codes) -> BrokerError:
    try:
        fn()
    except BrokerError as e:
        assert e.code in codes, f"{e!r}, expected one of {codes}"
        return e
    raise AssertionError(f"no error, expected one of {codes}")


# -- the steps ------------------------------------------------------------------------------


def after_begin(ctx: Ctx):
    led, rng = ctx.ledger, ctx.rng
    cs = start_committers(ctx.cb.url, led, 2, rng.randrange(1 << 30))
    wait_committed(cs)
    p = ctx.producer(BIG_FLUSH)
    locals_ = []
    for with_messages in (False, True):
        tx = p.transaction()
        rec = led.new(tx.txid, False)
        rec.handle = tx
        if with_messages:
            add(rec, tx, rng.choice(all_partitions()), 20)
        locals_.append(rec)
    xas = []
    for with_messages in (False, True):
        px = ctx.producer(BIG_FLUSH)
        x = ctx.xid_for(px, f"begun{int(with_messages)}")
        px.tpc_begin(x)
        rec = led.new(x.txid, True)
        rec.producer = px
        if with_messages:
            add(rec, px, rng.choice(all_partitions()), 20)
        xas.append(rec)
    ctx.cb.kill()
    stop_committers(cs)

    def after():
        # never journalled: the broker does not know them, and their commit fails
        for rec in locals_:
            _expect_error(rec.handle.commit, ErrorCode.UNKNOWN_TRANSACTION)
        for rec in xas:
            _expect_error(rec.producer.tpc_commit, ErrorCode.UNKNOWN_TRANSACTION)
        # and those producers go on: a new transaction commits
        with p.transaction() as tx:
            rec = led.new(tx.txid, False)
            add(rec, tx, ("txa", 0), 3)
        rec.state = COMMITTED
    return after


def mid_sends(ctx: Ctx):
    led, rng = ctx.ledger, ctx.rng
    cs = start_committers(ctx.cb.url, led, 2, rng.randrange(1 << 30))
    wait_committed(cs)
    reached = threading.Event()
    kill_at = rng.randint(80, 1200)  # > 2 flushes of FLUSH_BYTES: TxProduce requests journalled
    big: list = []
    errors: list = []

    def sender(xa: bool):
        p = ctx.producer()
        try:
            if xa:
                x = ctx.xid_for(p, "big")
                p.tpc_begin(x)
                rec, target = led.new(x.txid, True), p
                rec.producer = p
            else:
                tx = p.transaction()
                rec, target = led.new(tx.txid, False), tx
                rec.handle = tx
            big.append(rec)
            sent = 0
            while sent < 3000:
                add(rec, target, all_partitions()[(sent // 10) % 8], 10)
                sent += 10
                if sent >= kill_at:
                    reached.set()
            reached.set()
        except BrokerError:
            pass  # the kill
        except BaseException as e:  # noqa: BLE001
            errors.append(e)
            reached.set()

    ts = [threading.Thread(target=sender, args=(xa,), daemon=True) for xa in (False, True)]
    for t in ts:
        t.start()
    assert reached.wait(120), "the big transactions never got going"
    ctx.cb.kill()
    for t in ts:
        t.join(60)
    stop_committers(cs)
    assert not errors, errors

    def after():
        for rec in big:
            assert sum(map(len, rec.values.values())) < 3000 + 10, "the sender finished before the kill"
            # journalled, never prepared: recovery rolled it back, and says so to a late commit
            fn = rec.handle.commit if not rec.xa else rec.producer.tpc_commit
            e = _expect_error(fn, ErrorCode.INVALID_TXN_STATE, ErrorCode.UNKNOWN_TRANSACTION)
            assert e.code == ErrorCode.UNKNOWN_TRANSACTION or "rolled back" in e.message, e
    return after


def after_prepare(ctx: Ctx):
    led, rng = ctx.ledger, ctx.rng
    cs = start_committers(ctx.cb.url, led, 2, rng.randrange(1 << 30))
    wait_committed(cs)
    # prepared and committed at once though there is nothing to append: answered
    p = ctx.producer()
    x = ctx.xid_for(p, "empty-now")
    p.tpc_begin(x)
    rec = led.new(x.txid, True)
    p.tpc_prepare()
    rec.state = COMMIT_IN_DOUBT
    p.tpc_commit()
    rec.state = COMMITTED
    for tag, n, flush in (("journalled", 200, FLUSH_BYTES), ("riding", 10, BIG_FLUSH), ("empty", 0, BIG_FLUSH)):
        p = ctx.producer(flush)
        x = ctx.xid_for(p, tag)
        p.tpc_begin(x)
        rec = led.new(x.txid, True)
        rec.producer = p
        for k in range(0, n, 50):
            add(rec, p, rng.choice(all_partitions()), min(50, n - k))
        rec.state = PREPARE_IN_DOUBT
        p.tpc_prepare()
        rec.state = PREPARED
    ctx.cb.kill()
    stop_committers(cs)
    return None


def _commit_window(ctx: Ctx, unapplied: bool):
    """Hold the writer of half the transaction's partitions (SIGSTOP) across
    its commit; see the module docstring."""
    cb, led, rng = ctx.cb, ctx.ledger, ctx.rng
    xa = ctx.n % 2 == 1
    p = ctx.producer()
    wj = rng.randrange(2)
    if xa:
        x = ctx.xid_for(p, "window", journal_on=wj)
        p.tpc_begin(x)
        rec, target = led.new(x.txid, True), p
        rec.producer = p
    else:
        while True:  # a local txid is the client's: take one journalled by writer wj
            tx = p.transaction()
            if journal_writer(tx.txid) == wj:
                break
            tx.rollback()
        rec, target = led.new(tx.txid, False), tx
        rec.handle = tx
    wd = 1 - wj
    on_j = [tp for tp in all_partitions() if writer_of(*tp) == wj][:2]
    on_d = [tp for tp in all_partitions() if writer_of(*tp) == wd][:2]
    for tp in on_j + on_d:
        add(rec, target, tp, 100)  # several batches per partition (FLUSH_BYTES)
    if xa:
        rec.state = PREPARE_IN_DOUBT
        p.tpc_prepare()
        rec.state = PREPARED
    # other committers meanwhile, on every partition
    cs = start_committers(cb.url, led, 2, rng.randrange(1 << 30))
    wait_committed(cs)
    os.kill(cb.writer_pid(wd), signal.SIGSTOP)
    rec.state = COMMIT_IN_DOUBT
    outcome: list = []

    def commit():
        try:
            p.tpc_commit() if xa else tx.commit()
            outcome.append("committed")
        except BrokerError as e:
            outcome.append(e)

    t = threading.Thread(target=commit, daemon=True)
    t.start()

    def wait(pred, what):
        deadline = time.monotonic() + 30
        while not pred():
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            assert not outcome, f"the commit returned while a writer was held: {outcome}"
            time.sleep(0.05)

    def holds(tps):
        return all([v for _, v in read_values(cb.url, tp) if v in set(rec.values[tp])] == rec.values[tp]
                   for tp in tps)

    wait(lambda: journal.COMMIT in journal_kinds(cb.url, rec.txid), "the COMMIT record")
    wait(lambda: holds(on_j), "the appends on the running writer")
    assert not any(v in set(rec.values[tp]) for tp in on_d for _, v in read_values(cb.url, tp)), \
        "appended by a stopped writer?"
    if unapplied:
        os.kill(cb.writer_pid(wj), signal.SIGSTOP)
        os.kill(cb.writer_pid(wd), signal.SIGCONT)
        wait(lambda: holds(on_d), "the appends of the writer let go")
        assert journal.APPLIED not in journal_kinds(cb.url, rec.txid)
    cb.kill()
    t.join(60)
    stop_committers(cs)
    # partial: the reply waits for every append; unapplied: every append is
    # durable, so it may have come before the kill (APPLIED is not waited for)
    assert outcome and (unapplied or outcome[0] != "committed"), outcome
    # its COMMIT record is durable: recovery must finish it, every message once
    rec.state = COMMITTED
    return None


def commit_partial(ctx: Ctx):
    return _commit_window(ctx, unapplied=False)


def commit_unapplied(ctx: Ctx):
    return _commit_window(ctx, unapplied=True)


def commit_race(ctx: Ctx):
    cs = start_committers(ctx.cb.url, ctx.ledger, 6, ctx.rng.randrange(1 << 30))
    wait_committed(cs)
    time.sleep(ctx.rng.uniform(0.0, 1.0))
    ctx.cb.kill()
    stop_committers(cs)
    return None


STEPS = {f.__name__: f for f in (after_begin, mid_sends, after_prepare, commit_partial, commit_unapplied,
                                 commit_race)}

_REPLAYED = re.compile(r"committed before the restart; (\d+) of its (\d+) batches to append again")


# -- one cycle ------------------------------------------------------------------------------


def resolve_prepared(ctx: Ctx) -> dict:
    """tpc_recover() lists every prepared branch; commit half, roll back the
    rest.  -> {"xa_committed": n, "xa_rolled_back": n}."""
    led = ctx.ledger
    p = ctx.producer()
    listed = {x.txid: x for x in p.tpc_recover()}
    prepared = {r.txid for r in led.in_state(PREPARED)}
    maybe = {r.txid for r in led.in_state(PREPARE_IN_DOUBT)}
    assert prepared <= set(listed), f"prepared but not listed by tpc_recover(): {prepared - set(listed)}"
    assert set(listed) <= prepared | maybe, f"listed, never prepared: {set(listed) - prepared - maybe}"
    out = {"xa_" + COMMITTED: 0, "xa_" + ROLLED_BACK: 0}
    # each outcome, and each way of asking for it, in turn: over two cycles
    # a step's every branch is committed once and rolled back once
    for i, (txid, x) in enumerate(sorted(listed.items())):
        rec = led.txs[txid]
        commit = (i + ctx.n) % 2 == 0
        own = rec.producer if rec.producer is not None and rec.producer._xa is not None else None
        if own is not None and (i // 2 + ctx.n) % 2 == 0:  # the producer that prepared it, which kept its state
            own.tpc_commit() if commit else own.tpc_rollback()
        else:
            p.tpc_commit(x) if commit else p.tpc_rollback(x)
        rec.state = COMMITTED if commit else ROLLED_BACK
        out["xa_" + rec.state] += 1
    for rec in led.in_state(PREPARE_IN_DOUBT):
        rec.state = ROLLED_BACK  # not prepared: rolled back at the restart
    assert p.tpc_recover() == []
    return out


def cycle(cb: CrashBroker, ledger: Ledger, step: str, rng, n: int) -> dict:
    """Run ``step`` (which kills the broker), restart, check, resolve, check."""
    ctx = Ctx(cb, ledger, rng, n)
    t0 = time.monotonic()
    times = {}
    try:
        log_before = len(cb.log_text())
        after = STEPS[step](ctx)
        times["step"] = time.monotonic() - t0
        cb.restart()
        times["restart"] = time.monotonic() - t0 - times["step"]
        txs = settled(cb.url)
        assert not [t for t in txs if t.state == "open"], f"open transactions survived the restart: {txs}"
        if after is not None:
            after()
        for r in ledger.in_state(OPEN):
            r.state = ROLLED_BACK  # never decided: the restart rolled it back (check: absent)
        counts = check(cb.url, ledger)
        counts.update(resolve_prepared(ctx))
        check(cb.url, ledger)
        assert tx_list(cb.url) == [], "transactions left after the resolution"
        hits = [(int(a), int(b)) for a, b in _REPLAYED.findall(cb.log_text()[log_before:])]
        counts["recovered_commits"] = len(hits)
        counts["batches_appended_again"] = sum(a for a, _ in hits)
        times["check"] = time.monotonic() - t0 - times["step"] - times["restart"]
        counts["seconds"] = {k: round(v, 1) for k, v in times.items()}
        return counts
    finally:
        ctx.close()
