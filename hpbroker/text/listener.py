"""The text listener process: MetaQ's text protocol on a TCP port.

One thread, one ``zmq.Poller`` over the listening socket, the client
connections (plain non-blocking TCP sockets, polled by fd) and the DEALER
sockets to the broker's acceptors (:mod:`.link`).  Each turn of the loop
(:meth:`Listener.step`):

1. reads up to ``text_protocol.read_bytes`` from each readable connection
   and parses it (:mod:`.parser`); the commands go to :mod:`.service`;
2. sends the turn's puts as one Produce request per partition;
3. takes the broker's replies, which fill in answers;
4. sends every connection its answers that are ready, in request order.

A connection that has too much in flight or unsent is not read until it
drains (:mod:`.connection`); one idle for ``idle_timeout_ms`` is closed.
On SIGTERM the listener stops accepting and reading, waits up to
``broker.shutdown_timeout_ms`` for the answers still owed, sends them and
exits; the supervisor stops it before the acceptors, so those answers can
still come.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import socket
import time

import zmq

from hpbroker import config as config_mod
from hpbroker.ipc import control
from hpbroker.procutil import child_setup, freeze_heap
from hpbroker.protocol import messages as m
from hpbroker.sockets import make_socket
from hpbroker.text.connection import Connection
from hpbroker.text.link import BrokerLink
from hpbroker.text.parser import Parser
from hpbroker.text.service import TextService
from hpbroker.text.shared_counters import SharedCounters, path_of
from hpbroker.text.stats_service import StatsService

log = logging.getLogger("hpbroker.text")

POLLIN, POLLOUT, POLLERR = zmq.POLLIN, zmq.POLLOUT, zmq.POLLERR


class Listener:
    #: the listener's own counters, besides TextService.counters, that stats adds up over processes
    OWN_COUNTERS = ("curr_connections", "total_connections", "bytes_read", "bytes_written")

    def __init__(self, cfg: config_mod.Config, lsock: socket.socket, link: BrokerLink, instance: str, *,
                 clock=time.monotonic, lane: int = 0, lanes: int = 1, run_dir: str | None = None):
        self.cfg = cfg
        self.t = cfg.text_protocol
        self.lsock = lsock
        self.lfd = lsock.fileno()
        self.port = lsock.getsockname()[1]
        self.link = link
        self.clock = clock
        self.svc = TextService(cfg, link, clock, broker_id=cfg.broker.broker_id, lane=lane, lanes=lanes)
        self.lane, self.lanes = lane, lanes
        self.counter_names = [*self.svc.counters, *self.OWN_COUNTERS]
        self.counter_paths = [path_of(run_dir, k) for k in range(lanes)] if run_dir else []
        self.shared = SharedCounters(self.counter_paths[lane], self.counter_names) if run_dir else None
        self.stats = StatsService(self.svc, cfg, self, instance)
        self.svc.stats_handler = self.stats.handle
        self.conns: dict[int, Connection] = {}
        self._flags: dict[int, int] = {}
        self.poller = zmq.Poller()
        self.poller.register(self.lfd, POLLIN)
        self._link_socks = set()
        for s in link.socks:
            self._add_link_sock(s)
        self.total_connections = 0
        self.bytes_read = 0
        self.bytes_written = 0
        self.stopping = False
        self._next_idle_check = clock() + 1.0

    def _add_link_sock(self, s) -> None:
        self.poller.register(s, POLLIN)
        self._link_socks.add(s)

    def set_acceptors(self, endpoints: list[str]) -> None:
        for s in self.link.set_acceptors(endpoints):
            self._add_link_sock(s)

    @property
    def curr_connections(self) -> int:
        return len(self.conns)

    # -- the loop ---------------------------------------------------------------------

    def run(self) -> None:
        while not self.stopping:
            self.step(100)
        self._drain_and_close()

    def step(self, timeout_ms: int) -> None:
        svc = self.svc
        events = self.poller.poll(0 if svc.has_deferred else timeout_ms)
        now = self.clock()
        accept = False
        for s, ev in events:
            if s in self._link_socks:
                self.link.on_readable(s)
            elif s == self.lfd:
                accept = True  # after the reads: a client that closed in this turn frees its place first
            else:
                conn = self.conns.get(s)
                if conn is None:
                    continue
                if ev & POLLIN:
                    self._read(conn, now)
                if ev & POLLERR and not ev & POLLIN:
                    self._close(conn)
        svc.flush()
        if svc.has_deferred:
            svc.resume()
        self.link.expire(now)
        self._write_touched(now)
        if accept:
            self._accept(now)
        if now >= self._next_idle_check:
            self._next_idle_check = now + 1.0
            self._check_idle(now)
        if self.shared is not None:
            self.shared.publish([*self.svc.counters.values(), len(self.conns), self.total_connections,
                                 self.bytes_read, self.bytes_written])

    def counters(self) -> dict[str, int]:
        """Every text listener process's counters, added up (this one's alone without a run dir)."""
        if self.shared is None:
            return {**self.svc.counters, "curr_connections": len(self.conns), "total_connections": self.total_connections,
                    "bytes_read": self.bytes_read, "bytes_written": self.bytes_written}
        self.shared.publish([*self.svc.counters.values(), len(self.conns), self.total_connections,
                             self.bytes_read, self.bytes_written])
        from hpbroker.text.shared_counters import read_sum

        return read_sum(self.counter_paths, self.counter_names)

    def _accept(self, now: float) -> None:
        for _ in range(64):
            try:
                sock, peer = self.lsock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    log.warning("cannot accept a text connection: %s", e)
                return
            self.total_connections += 1
            if len(self.conns) >= self.t.max_connections:
                try:
                    sock.send(b"SERVER_ERROR too many open connections\r\n")
                except OSError:
                    pass
                sock.close()
                continue
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = Connection(sock, peer, Parser(self.t.max_line_bytes, self.cfg.text_max_body),
                              self.t.max_pending_bytes, now)
            self.conns[conn.fd] = conn
            self._set_flags(conn, POLLIN)

    def _read(self, conn: Connection, now: float) -> None:
        if conn.quitting:  # quit, EOF, a fatal refusal or shutdown: nothing more is read
            return
        try:
            data = conn.sock.recv(self.t.read_bytes)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(conn)
            return
        if not data:  # the client closed its side: answer what it asked, then close
            conn.quitting = True
            self.svc.touched.add(conn)
            return
        self.bytes_read += len(data)
        conn.last_in = now
        events = conn.parser.feed(data)
        if events:
            self.svc.on_commands(conn, events)
        if conn.paused:
            self.svc.touched.add(conn)  # re-evaluated (and its reading stopped) after this turn

    def _write_touched(self, now: float) -> None:
        touched = self.svc.touched
        if not touched:
            return
        self.svc.touched = set()
        for conn in touched:
            if conn.closed:
                continue
            conn.ready_output()
            if conn.out:
                before = conn.out_bytes
                if not conn.send(now):
                    self._close(conn)
                    continue
                self.bytes_written += before - conn.out_bytes
            if conn.quitting and not conn.busy:
                self._close(conn)
                continue
            want = (0 if conn.paused or self.stopping else POLLIN) | (POLLOUT if conn.out else 0)
            self._set_flags(conn, want)

    def _set_flags(self, conn: Connection, flags: int) -> None:
        if self._flags.get(conn.fd) == flags:
            return
        self._flags[conn.fd] = flags
        if flags:
            self.poller.register(conn.fd, flags)
        else:
            self.poller.unregister(conn.fd)

    def _close(self, conn: Connection) -> None:
        if conn.closed:
            return
        conn.closed = True
        if self._flags.pop(conn.fd, 0):
            self.poller.unregister(conn.fd)
        self.conns.pop(conn.fd, None)
        try:
            conn.sock.close()
        except OSError:
            pass
        self.svc.closed(conn)  # MetaQ rolls back a closed connection's local transactions

    def _check_idle(self, now: float) -> None:
        idle = self.t.idle_timeout_ms / 1000.0
        for conn in list(self.conns.values()):
            if idle and conn.out and now - conn.last_out > idle:
                log.info("closing text connection %s: its answers could not be sent for %.0f s", conn.peer, idle)
                self._close(conn)
            elif idle and not conn.busy and now - conn.last_in > idle:
                self._close(conn)
            elif conn.out or conn.slots:
                self.svc.touched.add(conn)  # POLLOUT may have fired meanwhile: try again

    # -- shutdown -------------------------------------------------------------------------

    def _drain_and_close(self) -> None:
        """Stop taking requests; answer those in flight (or give up after the
        broker's shutdown timeout); close every connection."""
        self.poller.unregister(self.lfd)
        self.lsock.close()
        for conn in list(self.conns.values()):
            conn.quitting = True
            self.svc.touched.add(conn)
        deadline = self.clock() + self.cfg.broker.shutdown_timeout_ms / 1000.0
        while self.conns and self.clock() < deadline:
            self.step(50)
        for conn in list(self.conns.values()):
            self._close(conn)


def listen(bind: str, port: int, shared: bool = False) -> socket.socket:
    """The listening socket; ``shared``: with SO_REUSEPORT, so that several
    listener processes take the port's connections in turn (the kernel
    spreads them)."""
    s = socket.socket(socket.AF_INET6 if ":" in bind else socket.AF_INET)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if shared:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.bind((bind, port))
    s.listen(1024)
    s.setblocking(False)
    return s


def main(cfg_bytes: bytes, instance: str, bootstrap: str, control_ep: str, cpus: list[int] | None, lane: int = 0,
         run_dir: str | None = None) -> None:
    """Entry point of text listener process ``lane`` (spawned by the supervisor)."""
    cfg = child_setup(f"text{lane}", cfg_bytes, cpus)
    ctx = zmq.Context()
    t = cfg.text_protocol
    lsock = listen(t.bind or cfg.broker.bind, cfg.text_port, shared=t.processes > 1)
    link = BrokerLink(ctx, bootstrap, time.monotonic)
    try:
        lst = Listener(cfg, lsock, link, instance, lane=lane, lanes=t.processes, run_dir=run_dir)
        rep, _ = link.call(lambda i: m.Metadata(id=i, topics=None), 30.0)
        lst.set_acceptors(list(rep.acceptors))
        lst.svc.partitions.update({tp.name: len(tp.partitions) for tp in rep.topics if tp.code == 0})

        def on_term(signum, frame):
            lst.stopping = True

        signal.signal(signal.SIGTERM, on_term)
        ctl = make_socket(ctx, zmq.DEALER, connect=control_ep)
        ctl.send(control.encoder.encode(control.TextListenerReady(pid=os.getpid(), port=lst.port)))
        log.info("MetaQ text protocol on %s:%d (process %d of %d)", t.bind or cfg.broker.bind, lst.port, lane + 1,
                 t.processes)
        freeze_heap()
        lst.run()
    finally:
        link.close()
        ctx.destroy(linger=0)
