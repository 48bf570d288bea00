"""The supervisor: starts, watches and stops the broker's processes.

It owns lifecycle and nothing else.  Order of events:

start
    lock the data directory; unlink shared memory a killed broker of the
    same instance left behind, and that of any instance whose owner is
    dead; create the rings (each on its writer's NUMA node) and doorbells;
    start the writers and wait until each has recovered its partitions;
    start the acceptors; unlink the shared-memory names (every process has
    them open); publish the cluster view.
serve
    answer topic creation from acceptors; watch every child.  A child that
    dies stops the whole broker (exit code 1) with a log line naming it:
    a broker never goes on acknowledging without one of its writers.
stop (SIGTERM/SIGINT)
    acceptors stop taking requests and wait for their in-flight batches;
    then the writers drain their rings, fsync and exit; then the rings are
    unlinked.  Exit code 0.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
import signal
import time
from pathlib import Path

import zmq

from hpbroker import config as config_mod
from hpbroker import stats as stats_mod
from hpbroker.procutil import freeze_heap, run_child, tune_runtime
from hpbroker.broker import layout
from hpbroker.broker.control_server import ControlServer
from hpbroker.broker.replication_role import ReplicationRole
from hpbroker.broker.host import (StartupError, check_port, claim_instance, create_rings, doorbell_name, lock_data_dir,
                                  replica_ring_name, ring_name)
from hpbroker.broker import sdnotify
from hpbroker.broker import state as broker_state
from hpbroker.broker.topics import TopicError, TopicRegistry
from hpbroker.net import acceptor as acceptor_mod
from hpbroker.broker import scrubber_process, writer_process
from hpbroker.ring import cleanup_stale, reclaim_dead
from hpbroker.text import listener as text_listener
from hpbroker.sockets import make_socket

log = logging.getLogger("hpbroker.supervisor")

START_TIMEOUT_S = 60.0
#: children whose exit is logged but does not stop the broker: they check, they never serve
OPTIONAL_CHILDREN = ("scrubber",)


class Supervisor(ReplicationRole, ControlServer):
    """Lifecycle: start, watch, stop.  The role and promotion are in
    :class:`~hpbroker.broker.replication_role.ReplicationRole`, the control
    socket and the published view in
    :class:`~hpbroker.broker.control_server.ControlServer`."""

    def __init__(self, cfg: config_mod.Config):
        self.cfg = cfg
        self.instance = cfg.instance
        self.data_dir = Path(cfg.broker.data_dir).resolve()
        self.run_dir = Path(cfg.broker.run_dir or f"/tmp/hpbroker-{self.instance}")
        self.stop_requested = False
        self.exit_code = 0
        self.children: dict[str, multiprocessing.Process] = {}
        self.owned_shm: list = []
        self.ctx: zmq.Context | None = None
        self.endpoints: list[str | None] = [None] * cfg.broker.acceptors
        self._lock_fd: int | None = None
        self._instance_claim = None  # the abstract socket naming this instance (host.claim_instance)
        self._own_run_dir = False
        self.fatal = False
        self.role = cfg.replication.role
        self.promoted_from = ""  # set while a promotion holds (hpbroker.broker.role)
        self.epoch = 0
        self.leader_id = cfg.broker.broker_id if self.role != "slave" else -1
        self.replication_endpoints: list[str] | None = []  # the replicator's [fetch, ack]
        self.pub_endpoints: list[str] = [""] * cfg.broker.writers  # each writer's PUB to the slaves
        self.ack_endpoints: list[str] = [""] * cfg.broker.acceptors  # each acceptor's PULL for slaves' writers
        self.text_port = 0  # the text listeners', once they listen
        self.text_ready = 0
        # cluster mode (cluster.zookeeper): the ZooKeeper agent's side here (hpbroker/broker/cluster_mode.py)
        self.cluster = None
        self.cluster_epoch = 0  # the epoch claimed in ZooKeeper to lead with
        if cfg.cluster.zookeeper:
            from hpbroker.broker.cluster_mode import ClusterMode

            self.cluster = ClusterMode(self)

    # -- start ------------------------------------------------------------------

    def start(self) -> None:
        b = self.cfg.broker
        for port in (b.port, *b.acceptor_ports):
            check_port(b.bind, port)
        if self.cfg.http_port:
            check_port(self.cfg.http.bind or b.bind, self.cfg.http_port)
        if self.cfg.text_port:
            check_port(self.cfg.text_protocol.bind or b.bind, self.cfg.text_port)
        self._lock_fd = lock_data_dir(self.data_dir)
        self._instance_claim = claim_instance(self.instance)
        try:
            self.topics = TopicRegistry(self.data_dir)
        except TopicError as e:
            raise StartupError(str(e)) from None
        if self.cluster is not None:
            self.cluster.choose_role()  # ZooKeeper decides: follow its master, or claim an epoch and lead
        else:
            self._choose_role()
        self.epoch = broker_state.load_epoch(self.data_dir)
        self.reigns = broker_state.load_reigns(self.data_dir)  # epochs this broker led or followed
        if self.role == "master":
            # a new reign: batches of different masters never share an epoch
            self.epoch = self.cluster_epoch or broker_state.next_epoch(
                max(self.epoch, broker_state.max_partition_epoch(self.data_dir)), self.cfg.broker.broker_id)
            self.reigns.add(self.epoch)
            broker_state.save_epoch(self.data_dir, self.epoch, self.reigns)
        removed = cleanup_stale(self.instance, dead_after_ms=self.cfg.ring.dead_after_ms)
        if removed:
            log.info("unlinked %d shared-memory objects left by a killed broker: %s", len(removed), ", ".join(removed))
        removed = reclaim_dead(skip=self.instance) + stats_mod.reclaim_dead(skip=self.instance)
        if removed:
            log.info("unlinked %d shared-memory objects of other broker instances whose owner is dead: %s",
                     len(removed), ", ".join(removed))
        shutil.rmtree(self.run_dir, ignore_errors=True)
        self.run_dir.mkdir(mode=0o700, parents=True)  # its ipc:// sockets are for this broker's processes only
        self._own_run_dir = True
        if self.cluster is not None:
            self.cluster.open_lease()  # before the acceptors, which map it
        self.plan = layout.plan(b)
        self.ctx = zmq.Context()
        self.control = make_socket(self.ctx, zmq.ROUTER, bind=self._ipc("control"))
        self.view_pub = make_socket(self.ctx, zmq.PUB, bind=self._ipc("view"))
        self.owned_shm += create_rings(self.instance, self.plan, self.cfg, replicated=self.role != "standalone")
        # counters, histograms and log tails of every process (hpbroker/stats), read by the HTTP process
        self.stats = stats_mod.StatsBlock.create(self.instance, stats_mod.layout.slot_names(
            b.acceptors, b.writers, self.role != "standalone"), self.cfg.http.stats_rows)
        self.owned_shm.append(self.stats)
        stats_mod.capture_logs(self.stats.slot("supervisor")).setLevel(logging.INFO)
        self.mp = mp = multiprocessing.get_context("spawn")
        self.cfg_bytes = cfg_bytes = config_mod.dumps(self._child_config())
        replicated = self.role != "standalone"
        for w in range(b.writers):
            pl = self.plan.placement("writer", w)
            rings = [ring_name(a, w) for a in range(b.acceptors)] + ([replica_ring_name(w)] if replicated else [])
            pushes = [self._ipc(f"acc{a}") for a in range(b.acceptors)] + ([self._ipc("repl-comp")] if replicated else [])
            self._spawn(mp, f"writer{w}", writer_process.main,
                        (w, cfg_bytes, self.instance, rings, doorbell_name(w), pushes, self._ipc("control"), pl.cpus,
                         self._ipc("repl-feed") if replicated else None, self.role == "master", self._pub_bind(w)))
        self._await(lambda: sum(1 for n in self._ready if n.startswith("writer")) == b.writers, "writers to recover their partitions")
        if self.cfg.scrub.enabled:  # re-reads closed segments at scrub.rate_bytes (docs/reliability.md)
            self._spawn(mp, "scrubber", scrubber_process.main, (cfg_bytes,))
        if replicated:
            self._start_replicator(self.role)
        for a in range(b.acceptors):
            pl = self.plan.placement("acceptor", a)
            port = b.port if a == 0 else (b.acceptor_ports[a - 1] if a - 1 < len(b.acceptor_ports) else 0)
            endpoint = f"tcp://{b.bind}:{port or '*'}"
            self._spawn(mp, f"acceptor{a}", acceptor_mod.main,
                        (a, cfg_bytes, self.instance, [ring_name(a, w) for w in range(b.writers)], endpoint,
                         self._ipc(f"acc{a}"), self._ipc("control"), self._ipc("view"), self._ipc("repl-state"), pl.cpus))
        self._await(lambda: all(self.endpoints), "acceptors to bind their endpoints")
        self._unlink_shm_names()
        self.publish_view()
        self._start_http()
        if self.cfg.text_port:
            n = self.cfg.text_protocol.processes
            for k in range(n):
                self._spawn(mp, f"text{k}", text_listener.main,
                            (cfg_bytes, self.instance, self.endpoints[0], self._ipc("control"),
                             self.plan.placement("acceptor", 0).cpus, k, str(self.run_dir)))
            self._await(lambda: self.text_ready == n, "the text listeners to listen")
        if self.cluster is not None:
            self.cluster.started()  # registered in ZooKeeper only once it serves
        log.info("hpbroker %s serving on %s (data %s, %d acceptor(s), %d writer(s), flush_mode=%s, role=%s, epoch=%d%s)",
                 self.instance, ", ".join(self.endpoints), self.data_dir, b.acceptors, b.writers, self.cfg.log.flush_mode,
                 self.role, self.epoch, f", MetaQ text port {self.text_port}" if self.text_port else "")

    def _unlink_shm_names(self) -> None:
        """Every process has its rings and semaphores open now (writers,
        the replicator and acceptors attach before they report ready, and
        none attaches later, a promotion included): remove their names, so
        that a kill -9 of the whole broker leaves nothing in /dev/shm.  The
        objects live on while mapped; the supervisor keeps each segment's
        fd, through which ``hpbroker ring stat`` still finds them."""
        for obj in self.owned_shm:
            obj.unlink()
        log.info("unlinked the names of %d shared-memory objects (all processes have them open)", len(self.owned_shm))


    _ready: set[str]

    def _start_http(self) -> None:
        """The HTTP process (metrics, health, gateway, dashboard): a client
        of the acceptors and a reader of the stats block, never in the data
        path.  Not started when http.port is 0."""
        if not self.cfg.http_port:
            return
        from hpbroker.http import process as http_process  # aiohttp is imported in the child only

        self._http_started = time.monotonic()
        self._spawn(self.mp, "http", http_process.main,
                    (self.cfg_bytes, self.instance, [e for e in self.endpoints if e], os.getpid()))

    def _child_config(self) -> config_mod.Config:
        import msgspec

        return msgspec.structs.replace(self.cfg, broker=msgspec.structs.replace(self.cfg.broker, data_dir=str(self.data_dir)))

    def _ipc(self, name: str) -> str:
        return f"ipc://{self.run_dir}/{name}.sock"

    def _spawn(self, mp, name: str, target, args) -> None:
        p = mp.Process(target=run_child, args=(name, self.instance, target, *args), name=f"hpbroker-{name}",
                       daemon=False)
        p.start()
        self.children[name] = p
        if getattr(self, "stats", None) is not None:
            self.stats.set_pid(name, p.pid)
        log.info("started %s (pid %d)", name, p.pid)

    def _await(self, done, what: str) -> None:
        if not hasattr(self, "_ready"):
            self._ready = set()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not done():
            if self.stop_requested:
                raise StartupError("stopped while starting")
            self._check_children()
            if time.monotonic() > deadline:
                raise StartupError(f"timed out waiting for {what}")
            self._serve_control(100)

    # -- serve ------------------------------------------------------------------

    def _check_children(self) -> None:
        http = self.children.get("http")
        if http is not None and http.exitcode is not None and not self.stop_requested:
            # the HTTP process is no part of the data path: restarted, never a reason to stop the broker
            if time.monotonic() - self._http_started > 5.0:
                log.error("http (pid %d) died with exit code %s; starting it again", http.pid, http.exitcode)
                del self.children["http"]
                self._start_http()
        for name, p in list(self.children.items()):
            if name == "http":
                continue
            if p.exitcode is not None and name in OPTIONAL_CHILDREN:
                log.error("%s (pid %d) exited with %s; the broker goes on without it", name, p.pid, p.exitcode)
                del self.children[name]
                continue
            if p.exitcode is not None:
                how = f"signal {-p.exitcode}" if p.exitcode < 0 else f"exit code {p.exitcode}"
                raise ChildDied(f"{name} (pid {p.pid}) died with {how}; stopping the broker")

    def serve(self) -> None:
        while not self.stop_requested:
            self._check_children()
            self._serve_control(100)
            if self.cluster is not None:
                self.cluster.tick()  # raises cluster_mode.Restart to rejoin as a slave

    # -- stop ---------------------------------------------------------------------

    def stop(self) -> None:
        """Ordered shutdown; safe to call after a partial start."""
        if self.cluster is not None:
            self.cluster.close()  # lease revoked, session closed: nothing more is acknowledged as master
        timeout = self.cfg.broker.shutdown_timeout_ms / 1000.0 + 5.0
        acceptors = [p for n, p in self.children.items() if n.startswith("acceptor")]
        writers = [p for n, p in self.children.items() if n.startswith("writer")]
        others = [p for n, p in self.children.items() if n in ("replicator", *OPTIONAL_CHILDREN)]
        http = [p for n, p in self.children.items() if n == "http"]  # first: /readyz fails, the gateway drains
        # the text listeners next: clients of the acceptors, they answer their in-flight puts while those still run
        text = [p for n, p in self.children.items() if n.startswith("text")]
        for group in (http, text, acceptors, others, writers):
            for p in group:
                if p.exitcode is None:
                    # SIGTERM: drain, answer, exit.  After a child died there is
                    # nothing to wait for: SIGUSR1 fails in-flight requests at once.
                    os.kill(p.pid, signal.SIGUSR1 if self.fatal and group is acceptors else signal.SIGTERM)
            deadline = time.monotonic() + timeout
            for p in group:
                while p.exitcode is None and time.monotonic() < deadline:
                    if self.ctx is not None:
                        self._serve_control(50)
                    else:
                        p.join(0.05)
                if p.exitcode is None:
                    log.error("%s (pid %d) did not stop in %.0f s; killing it", p.name, p.pid, timeout)
                    p.kill()
                    p.join(5)
        for obj in self.owned_shm:
            obj.close()
            obj.unlink()
        self.owned_shm.clear()
        if self.ctx is not None:
            self.ctx.destroy(linger=0)
            self.ctx = None
        if self._own_run_dir:
            shutil.rmtree(self.run_dir, ignore_errors=True)
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
        if self._instance_claim is not None:
            self._instance_claim.close()
            self._instance_claim = None


class ChildDied(RuntimeError):
    pass


def run(cfg: config_mod.Config) -> int:
    """Run a broker in the foreground until SIGTERM/SIGINT; the exit code.
    In cluster mode a broker that must rejoin as a slave (it lost its epoch,
    or another broker became its set's master) stops and starts again here,
    in the same process, and ZooKeeper decides its role anew."""
    tune_runtime(cfg.broker.malloc_mmap_threshold_bytes, cfg.broker.gil_switch_interval_us)
    stop = [False]
    sups: list[Supervisor] = []

    def on_signal(signum, frame):
        if not stop[0]:
            log.info("received %s; stopping", signal.Signals(signum).name)
        stop[0] = True
        for s in sups:
            s.stop_requested = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    while True:
        sup = Supervisor(cfg)
        sup.stop_requested = stop[0]
        sups[:] = [sup]
        code, again = 0, False
        try:
            sup.start()
            freeze_heap()
            sdnotify.notify(f"READY=1\nMAINPID={os.getpid()}")
            sup.serve()
        except (StartupError, ChildDied) as e:
            log.error("%s", e)
            sup.fatal = True
            code = 1
        except Exception as e:
            from hpbroker.broker.cluster_mode import Restart

            if not isinstance(e, Restart):
                raise
            log.warning("cluster: %s", e)
            again = True
        finally:
            sdnotify.notify("STOPPING=1")
            sup.stop()
        if not again or stop[0]:
            break
    if code == 0:
        log.info("stopped cleanly")
    return code
