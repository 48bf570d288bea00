"""Worker processes of ``hpbroker-bench groups``.

Every worker is its own process (multiprocessing ``spawn``) and talks to
the parent through a command queue of its own, one shared result queue and
a few shared arrays (one slot per worker):

* ``masks[i]``: the partitions worker i consumes now, as a bit mask (the
  parent reads them to tell when a group is stable);
* ``counts[i]``: records read so far in the current run;
* ``stamps[i]``: a ``time.monotonic()`` stamp the worker sets (the moment
  its ``on_assign`` saw every partition; see :func:`member_main`).

``time.monotonic()`` is CLOCK_MONOTONIC, one clock for every process on
the machine, so stamps taken in different processes can be subtracted.

* :func:`reader_main`: reads the pre-filled topic, as a group member or
  with a fixed list of partitions (the same process does both, round after
  round), with ``poll_batches`` or ``poll``;
* :func:`member_main`: a group member that only keeps its membership
  (rebalance timings): joins a group, closes on request, and stamps when
  its ``on_assign`` has given it every partition;
* :func:`commit_main`: commit latency of a lone member, beside acks=all
  produce latency, in one process.
"""

from __future__ import annotations

import queue
import time
import traceback

import numpy as np


def mask_of(partitions) -> int:
    m = 0
    for p in partitions:
        m |= 1 << int(p)
    return m


def _parts(c) -> list[int]:
    return sorted(tp.partition for tp in c.assignment())


def _wait_command(cmd_q, c, api: str, masks, idx):
    """Keep polling ``c`` (a group member must, to apply what its
    heartbeat thread learns) until a command arrives; -> the command."""
    while True:
        if c is not None:
            (c.poll_batches if api == "batches" else c.poll)(timeout_ms=5)
            masks[idx] = mask_of(_parts(c))
        try:
            return cmd_q.get(timeout=0 if c is not None else 1.0)
        except queue.Empty:
            continue


def _consumer(url, topic, cfg, group=None, partitions=None, **kw):
    from hpbroker.client import Consumer

    common = dict(auto_offset_reset="latest", fetch_max_wait_ms=50, fetch_max_bytes=cfg["fetch_max_bytes"],
                  request_timeout_ms=30_000)
    common.update(kw)
    if group is not None:
        return Consumer(url, topic, group_id=group, session_timeout_ms=cfg["session_timeout_ms"], **common)
    return Consumer(url, topic, partitions=partitions, **common)


# -- throughput --------------------------------------------------------------------------------


def reader_main(idx, url, topic, cfg, cmd_q, result_q, masks, counts, go) -> None:
    """Runs commands until ``None``.  A command (dict):

    ``{"run": r, "group": name or None, "parts": [...] (without a group), "api": "batches"|"poll",
    "ends": [end offset per partition]}``: join the group (or take ``parts``), positions at the end
    of the log; poll until ``go.value == r``; then seek every partition held to 0 and read up to
    ``ends``; put the result; poll on until the command ``"close"``, then close (leave the group).
    """
    from hpbroker.procutil import die_with_parent, name_process

    die_with_parent()  # a bench killed with SIGKILL leaves no member polling on its own

    name_process(f"hpbroker-bench: groups reader{idx}", f"hpb-bench-g{idx}")
    try:
        while True:
            cmd = cmd_q.get()
            if cmd is None:
                return
            if _read_run(idx, url, topic, cfg, cmd, cmd_q, result_q, masks, counts, go) is None:
                return  # told to exit while waiting for "close"
    except BaseException as e:  # report, never hang the parent
        result_q.put({"kind": "reader", "idx": idx, "error": f"{e!r}\n{traceback.format_exc()}"})


def _read_run(idx, url, topic, cfg, cmd, cmd_q, result_q, masks, counts, go) -> str | None:
    """One run; -> the command that ended it ("close", or None: exit)."""
    run, api, ends = cmd["run"], cmd["api"], cmd["ends"]
    counts[idx] = 0
    extra = {}
    if cmd["group"] is not None:
        extra = dict(enable_auto_commit=True, auto_commit_interval_ms=cfg["auto_commit_interval_ms"])
    moved = []
    c = _consumer(url, topic, cfg, group=cmd["group"], partitions=cmd.get("parts"),
                  on_assign=lambda tps: moved.append(("assign", time.monotonic())),
                  on_revoke=lambda tps: moved.append(("revoke", time.monotonic())), **extra)
    read = c.poll_batches if api == "batches" else c.poll
    try:
        while go.value != run:  # join, get the assignment, positions at the end: nothing to read yet
            read(timeout_ms=5)
            masks[idx] = mask_of(_parts(c))
        t0 = time.monotonic()
        cpu0 = time.process_time()
        moved_before = len(moved)
        parts = _parts(c)
        for p in parts:
            c.seek(p, 0)
        want = sum(ends[p] for p in parts)
        n = 0
        if api == "batches":
            while True:
                for rb in c.poll_batches(timeout_ms=50):
                    n += rb.record_count - (rb.start_offset - rb.base_offset)
                counts[idx] = n
                if n >= want and all(c.position(p) >= ends[p] for p in _parts(c)):
                    break
        else:
            max_records = cfg["max_records"]
            while True:
                n += len(c.poll(timeout_ms=50, max_records=max_records))
                counts[idx] = n
                if n >= want and all(c.position(p) >= ends[p] for p in _parts(c)):
                    break
        t1 = time.monotonic()
        cpu = time.process_time() - cpu0
        offsets = getattr(c, "_offsets", None)
        result_q.put({"kind": "reader", "idx": idx, "run": run, "messages": n, "expected": want, "t0": t0,
                      "t1": t1, "cpu_s": cpu, "partitions": parts, "final_partitions": _parts(c),
                      "rebalanced_while_reading": len(moved) > moved_before,
                      "commits": getattr(offsets, "commits", None)})
        # stay in the group (and keep polling) until every member is done, so
        # that nobody's leave moves partitions under a member still reading
        return _wait_command(cmd_q, c, api, masks, idx)
    finally:
        c.close()
        masks[idx] = 0


# -- rebalances --------------------------------------------------------------------------------


def member_main(idx, url, topic, nparts, cfg, cmd_q, result_q, masks, stamps, armed) -> None:
    """A group member for the rebalance timings.  Commands:

    * ``("join", group)``: a Consumer in ``group`` (auto-commit on); from
      now on poll every few ms.  Its ``on_assign`` stamps ``stamps[idx]``
      when ``armed[idx]`` is set and the member then holds all ``nparts``
      partitions (and disarms);
    * ``"close"``: ``Consumer.close()`` (final commit, leave the group);
      puts ``{"t_close": monotonic before close(), "t_closed": after}``;
    * ``None``: exit.
    """
    from hpbroker.procutil import die_with_parent, name_process

    die_with_parent()  # a bench killed with SIGKILL leaves no member polling on its own

    name_process(f"hpbroker-bench: groups member{idx}", f"hpb-bench-m{idx}")
    c = None
    try:
        while True:
            cmd = _wait_command(cmd_q, c, "batches", masks, idx)
            if cmd is None:
                return
            if cmd == "close":
                t = time.monotonic()
                if c is not None:
                    c.close()
                c = None
                masks[idx] = 0
                result_q.put({"kind": "member", "idx": idx, "t_close": t, "t_closed": time.monotonic()})
                continue
            _, group = cmd
            if c is not None:
                c.close()
            holder: list = []

            def on_assign(tps, holder=holder):
                if armed[idx] and len(holder[0].assignment()) == nparts:
                    stamps[idx] = time.monotonic()
                    armed[idx] = 0

            c = _consumer(url, topic, cfg, group=group, on_assign=on_assign, enable_auto_commit=True,
                          auto_commit_interval_ms=cfg["auto_commit_interval_ms"])
            holder.append(c)
            result_q.put({"kind": "member", "idx": idx, "joined": group})
    except BaseException as e:
        result_q.put({"kind": "member", "idx": idx, "error": f"{e!r}\n{traceback.format_exc()}"})
    finally:
        if c is not None:
            try:
                c.close()
            except Exception:  # noqa: BLE001 - exiting anyway
                pass


# -- commits -----------------------------------------------------------------------------------


def commit_main(url, topic, produce_topic, nparts, cfg, result_q) -> None:
    """One member alone in a fresh group (so it owns every partition),
    auto-commit off, commits in a tight loop; beside it, in the same
    process and interleaved, single-message acks=all produce requests.

    Cases (each ``cfg["seconds"]`` in all, split over ``cfg["rounds"]``
    interleaved rounds, the order rotating):

    * ``commit_1``: ``Consumer.commit({0: o})``, o changing every call;
    * ``commit_12``: ``Consumer.commit`` of all 12 partitions, changed;
    * ``produce_call``: one Produce request (acks=all, one 100-byte record)
      through ``Transport.call``: the synchronous client path a commit
      takes (``GroupOffsets._call`` -> ``Transport.call``);
    * ``produce_send``: ``Producer(acks="all", linger_ms=0).send(...).get()``.
    """
    from hpbroker.procutil import die_with_parent, name_process

    die_with_parent()  # a bench killed with SIGKILL leaves no member polling on its own

    name_process("hpbroker-bench: groups committer", "hpb-bench-cm")
    try:
        result_q.put(_commit_cases(url, topic, produce_topic, nparts, cfg))
    except BaseException as e:
        result_q.put({"kind": "commit", "error": f"{e!r}\n{traceback.format_exc()}"})


def _commit_cases(url, topic, produce_topic, nparts, cfg) -> dict:
    from hpbroker import batch as B
    from hpbroker.client import Producer
    from hpbroker.client.transport import Transport
    from hpbroker.protocol.messages import Produce

    c = _consumer(url, topic, cfg, group=cfg["group"], enable_auto_commit=False)
    deadline = time.monotonic() + 30
    while len(c.assignment()) < nparts:
        c.poll_batches(timeout_ms=20)
        if time.monotonic() > deadline:
            raise RuntimeError(f"the lone member got {len(c.assignment())} of {nparts} partitions in 30 s")
    ends = c.end_offsets()
    span = min(ends.values())
    if span < 2:
        raise RuntimeError("the topic needs at least 2 messages per partition to commit changing offsets")
    value = b"v" * cfg["size"]
    prod = Producer(url, acks="all", linger_ms=0)
    prod.partitions_for(produce_topic)
    t = Transport(url)
    t.metadata([produce_topic], timeout_ms=10_000)
    endpoint = t.endpoint_for(0)
    state = {"i": 0}

    def commit_1():
        state["i"] += 1
        c.commit({0: 1 + state["i"] % (span - 1)})

    def commit_12():
        state["i"] += 1
        o = 1 + state["i"] % (span - 1)
        c.commit({p: o for p in range(nparts)})

    def produce_call():
        payload = B.encode_batch([value])
        t0 = time.perf_counter()
        t.call(endpoint, Produce(id=t.next_id(), topic=produce_topic, partition=0, acks=-1, timeout_ms=30_000),
               [payload])
        return time.perf_counter() - t0

    def produce_send():
        prod.send(produce_topic, value, partition=0).get(30)

    cases = {"commit_1": commit_1, "commit_12": commit_12, "produce_call": produce_call, "produce_send": produce_send}
    lat = {k: [] for k in cases}
    busy = {k: 0.0 for k in cases}
    rounds = cfg["rounds"]
    per = cfg["seconds"] / rounds
    names = list(cases)
    perf = time.perf_counter
    for r in range(rounds):
        for k in names[r % len(names):] + names[: r % len(names)]:
            fn = cases[k]
            out = lat[k]
            start = perf()
            end = start + per
            while True:
                t0 = perf()
                if t0 >= end:
                    break
                got = fn()
                out.append(got if got is not None else perf() - t0)
            busy[k] += perf() - start
    prod.close(10)
    t.close()
    c.close(autocommit=False)
    res = {}
    for k in cases:
        a = np.array(lat[k], dtype=np.float64) * 1000.0
        res[k] = {"count": int(len(a)), "seconds": busy[k], "per_s": len(a) / busy[k] if busy[k] else None,
                  "p50_ms": float(np.percentile(a, 50)) if len(a) else None,
                  "p99_ms": float(np.percentile(a, 99)) if len(a) else None,
                  "max_ms": float(a.max()) if len(a) else None}
    return {"kind": "commit", "cases": res, "partitions_span": span}
