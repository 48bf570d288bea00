#!/usr/bin/env python3
"""One global transaction over PostgreSQL and hpbroker: an order row and its
event message are committed both, or neither (two-phase commit, XA).

Both resources speak PEP 249's two-phase-commit interface - psycopg's
connection and hpbroker's Producer - so the transaction manager here is a
few lines: begin a branch on each (same global id, its own branch
qualifier), do the work, prepare both, write the decision to a log and
fsync it, then commit both.  A failure before the decision rolls both
back.  If this process dies after preparing, both branches wait, in doubt,
across restarts of either server; ``recover`` finishes them from the
decision log (commit if the decision was written, else roll back: presumed
abort).

Run it (hpbroker installed - ``pip install -e .`` in its checkout - a
broker, a PostgreSQL with max_prepared_transactions > 0, and ``pip
install "psycopg[binary]"``)::

    hpbroker serve &
    python3 examples/xa_postgres.py --dsn "dbname=shop" order 42 "two coffees"
    python3 examples/xa_postgres.py --dsn "dbname=shop" order 42 "again"   # duplicate id: both roll back
    hpbroker consume orders --from-beginning --max-messages 1            # order 42: two coffees

    # a coordinator that dies between prepare and commit, and its recovery:
    python3 examples/xa_postgres.py --dsn "dbname=shop" order 43 tea --pause-after prepare &
    kill -9 %2
    hpbroker tx list                                                     # the branch, prepared
    python3 examples/xa_postgres.py --dsn "dbname=shop" recover          # rolled back on both

``order`` prints ``committed ...`` (exit 0) or ``rolled back ...`` (exit 1);
``--pause-after prepare|decision`` prints ``paused ...`` there and waits to
be killed (for trying out recovery).  ``recover`` prints one line per
global transaction it finished.  The table ``xa_orders (id, item)`` is
created when missing; messages go to ``--topic`` (default ``orders``), key
the order id.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import uuid

import psycopg

from hpbroker import Producer

FORMAT_ID = 4242  # this application's XIDs (a server may hold other applications' too)


class DecisionLog:
    """The coordinator's durable record of commit decisions (one gtrid a line)."""

    def __init__(self, path: str):
        self.path = path

    def commit(self, gtrid: str) -> None:
        with open(self.path, "a") as f:
            f.write(gtrid + "\n")
            f.flush()
            os.fsync(f.fileno())

    def committed(self) -> set[str]:
        try:
            with open(self.path) as f:
                return {line.strip() for line in f if line.strip()}
        except FileNotFoundError:
            return set()


def connect(dsn: str) -> psycopg.Connection:
    conn = psycopg.connect(dsn)
    with conn.transaction():
        conn.execute("CREATE TABLE IF NOT EXISTS xa_orders (id integer PRIMARY KEY, item text NOT NULL)")
    return conn


def pause(what: str, gtrid: str) -> None:
    print(f"paused after {what}: {gtrid}", flush=True)
    while True:
        time.sleep(3600)


def order(args, conn: psycopg.Connection, producer: Producer, log: DecisionLog) -> int:
    gtrid = f"order-{args.id}-{uuid.uuid4().hex[:16]}"
    db, mq = conn.xid(FORMAT_ID, gtrid, "postgres"), producer.xid(FORMAT_ID, gtrid, "hpbroker")
    conn.tpc_begin(db)
    producer.tpc_begin(mq)
    try:
        producer.send(args.topic, f"order {args.id}: {args.item}".encode(), key=str(args.id).encode())
        conn.execute("INSERT INTO xa_orders (id, item) VALUES (%s, %s)", (args.id, args.item))
        conn.tpc_prepare()
        producer.tpc_prepare()
    except Exception as e:  # nothing decided: both roll back
        for rollback in (conn.tpc_rollback, producer.tpc_rollback):
            try:
                rollback()
            except Exception:  # noqa: BLE001 - not prepared there: it is gone anyway
                pass
        print(f"rolled back {gtrid}: {type(e).__name__}: {str(e).strip()}", flush=True)
        return 1
    if args.pause_after == "prepare":
        pause("prepare", gtrid)
    log.commit(gtrid)  # the point of no return
    if args.pause_after == "decision":
        pause("decision", gtrid)
    conn.tpc_commit()
    producer.tpc_commit()
    print(f"committed {gtrid}: order {args.id} ({args.item}) in PostgreSQL and on {args.topic}", flush=True)
    return 0


def recover(args, conn: psycopg.Connection, producer: Producer, log: DecisionLog) -> int:
    """Finish every in-doubt branch of ours: commit what the log says was
    decided, roll back the rest (presumed abort)."""
    decided = log.committed()
    conn.autocommit = True  # tpc_commit(xid) / tpc_rollback(xid) outside a transaction
    branches = [(x.gtrid, "postgres", conn, x) for x in conn.tpc_recover() if x.format_id == FORMAT_ID]
    branches += [(x.gtrid, "hpbroker", producer, x) for x in producer.tpc_recover() if x.format_id == FORMAT_ID]
    done: dict[str, list[str]] = {}
    for gtrid, where, resource, xid in sorted(branches, key=lambda b: b[:2]):
        if gtrid in decided:
            resource.tpc_commit(xid)
        else:
            resource.tpc_rollback(xid)
        done.setdefault(gtrid, []).append(where)
    for gtrid, where in done.items():
        outcome = "committed" if gtrid in decided else "rolled back"
        print(f"{outcome} {gtrid} ({' and '.join(where)})", flush=True)
    if not done:
        print("nothing in doubt", flush=True)
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--broker", default="tcp://127.0.0.1:7600", help="hpbroker URL (default %(default)s)")
    ap.add_argument("--dsn", default="dbname=postgres", help="psycopg connection string (default %(default)s)")
    ap.add_argument("--topic", default="orders")
    ap.add_argument("--log", default="xa-decisions.log", help="the coordinator's decision log (default %(default)s)")
    sub = ap.add_subparsers(dest="command", required=True)
    o = sub.add_parser("order", help="insert an order and send its event, in one global transaction")
    o.add_argument("id", type=int)
    o.add_argument("item")
    o.add_argument("--pause-after", choices=["prepare", "decision"],
                   help="stop there and wait to be killed (to try recovery)")
    sub.add_parser("recover", help="finish the in-doubt global transactions from the decision log")
    args = ap.parse_args()
    try:
        conn = connect(args.dsn)
    except psycopg.Error as e:
        print(f"xa_postgres: cannot connect to PostgreSQL ({args.dsn}): {e}".strip(), file=sys.stderr)
        return 2
    with conn, Producer(args.broker, acks="all") as producer:
        log = DecisionLog(args.log)
        return (order if args.command == "order" else recover)(args, conn, producer, log)


if __name__ == "__main__":
    sys.exit(main())
