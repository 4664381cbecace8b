"""``outpost run``: one listening socket served by N pre-forked workers.

The GIL serialises pymilter callbacks inside a process, so Outpost scales
across cores with processes.  The master opens the milter socket once (or
takes it from systemd socket activation), then forks workers that each run
libmilter on the inherited descriptor (``fd:N``); the kernel spreads
connections between them.  All cross-message state lives in the store.

Signals to the master:
- SIGTERM/SIGINT: workers stop accepting, finish open connections (up to a
  grace period), the socket file is removed, exit 0.
- SIGHUP: the configuration is read again; if it is valid, new workers start
  with it and the old ones are stopped gracefully; if not, the error is logged
  and the old configuration keeps serving.
With ``metrics:`` the master binds the metrics listener and forks a metrics
process that serves it (:mod:`outpost.effects.metrics`); the workers record
into a private directory of prometheus-client multiprocess files that the
master creates empty at start and removes at exit.
Under a service manager (``adapter/service.py``): the socket can come from
socket activation (``LISTEN_FDS``), the master reports ``READY=1`` once every
worker serves (each writes its pid to a pipe first), ``RELOADING=1`` and
``STOPPING=1``; with ``--user`` it reads the secret and keys and binds the
socket as root, then drops root before it opens the store or forks.

A worker that dies is replaced, and the connection slots it held are freed;
workers that die soon after they started are replaced after a growing delay
(``RESPAWN_MIN`` doubling up to ``RESPAWN_MAX``), not in a tight loop.  A
store that does not answer when a worker starts does not stop it: the worker
serves (``on_store_error`` decides the answers) and its heartbeat registers
it once the store is back.
"""

from __future__ import annotations

import errno
import functools
import grp
import logging
import os
import select
import signal
import socket
import stat
import threading
import time
from dataclasses import dataclass, field, replace
from types import FrameType
from typing import Callable, Optional

from ..config import Config, ConfigError, load_config
from ..runtime import Runtime, Secrets, StartupError, load_secrets, open_configured_store
from ..store.base import StoreError
from . import service

log = logging.getLogger("outpost.server")

GRACE = 30.0              # seconds a stopping worker waits for open connections
HEARTBEAT = 10.0          # seconds between a worker's store heartbeats
RESPAWN_MIN = 0.2         # delay before replacing a worker that died young, doubling …
RESPAWN_MAX = 30.0        # … up to this
STABLE = 10.0             # a worker that lived this long resets the delay
METRICS_RESPAWN = 5.0     # delay before replacing a metrics process that failed

#: glibc malloc arenas of a worker.  libmilter runs each SMTP connection on a
#: new thread, and glibc gives a thread that meets another in malloc (SQLite
#: calls run without the GIL) an arena of its own, up to 8 per core; free
#: memory in one arena is not reused by the others and seldom returned.  In
#: the soak (bench/soak.py, sqlite store) a worker's heap kept growing that way
#: while its Python objects and SQLite's memory stayed flat; with one arena it
#: stays flat (the GIL serialises nearly all allocations anyway).  The figures:
#: docs/benchmarks.rst, the soak.
MALLOC_ARENAS = 1


class ServeError(Exception):
    pass


# -- the listening socket ------------------------------------------------------------------

def open_listener(spec: str, group: Optional[str] = None,
                  owner: Optional[service.Account] = None) -> tuple[socket.socket, Optional[str]]:
    """Bind the milter socket; returns (socket, unix path to remove at exit).

    A unix socket is mode 0660, owned by ``owner`` (the service user; else
    the user Outpost runs as) and the MTA's ``group``.  Its directory, if
    missing, is created 0755 and owned by ``owner`` (who then can remove the
    socket when it stops); every directory above the socket must let the
    group through, or the MTA cannot connect."""
    if spec.startswith("fd:"):
        fd = int(spec[3:])
        sock = socket.socket(fileno=fd)
        if sock.type != socket.SOCK_STREAM:
            raise ServeError(f"{spec} is not a stream socket")
        return sock, None
    if spec.startswith(("unix:", "local:")):
        path = os.path.abspath(spec.split(":", 1)[1])
        _clear_stale_socket(path)
        directory = os.path.dirname(path)
        if not os.path.isdir(directory):
            os.makedirs(directory, mode=0o755)
            os.chmod(directory, 0o755)                 # whatever the umask
            if owner is not None:
                os.chown(directory, owner.uid, owner.gid)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o117)
        try:
            sock.bind(path)
        finally:
            os.umask(old)
        gid = _group_id(group)
        if gid is not None or owner is not None:
            os.chown(path, owner.uid if owner else -1, gid if gid is not None else -1)
        if gid is not None:
            _check_reachable(path, gid)
        else:
            log.warning("no 'postfix' group: %s is writable by its owner and group %d only "
                        "(use --socket-group for the MTA's group)", path, os.getgid())
        sock.listen(128)
        return sock, path
    if spec.startswith(("inet:", "inet6:")):
        fam = socket.AF_INET6 if spec.startswith("inet6:") else socket.AF_INET
        port, _, host = spec.split(":", 1)[1].partition("@")
        sock = socket.socket(fam, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)   # accepted sockets inherit it
        sock.bind((host or ("::1" if fam == socket.AF_INET6 else "127.0.0.1"), int(port)))
        sock.listen(128)
        return sock, None
    raise ServeError(f"unsupported socket {spec!r}")


def _group_id(group: Optional[str]) -> Optional[int]:
    for name in ([group] if group else ["postfix"]):
        try:
            return grp.getgrnam(name).gr_gid
        except KeyError:
            if group:
                raise ServeError(f"socket group {group!r} does not exist") from None
    return None


def _check_reachable(path: str, gid: int) -> None:
    """Log an error if a member of group ``gid`` (the MTA, e.g. Postfix's
    daemons, which run with their one group) cannot traverse every directory
    above ``path``: it would get EACCES, and with ``milter_default_action =
    tempfail`` every message 451."""
    directory = os.path.dirname(path)
    while True:
        try:
            st = os.stat(directory)
        except OSError:
            return
        if not (st.st_mode & 0o001 or (st.st_gid == gid and st.st_mode & 0o010)):
            log.error("the socket group %s cannot reach %s: %s is mode %04o, owner %d, group %d "
                      "(make it traversable: chmod o+x, or chgrp %s and chmod g+x); the MTA "
                      "will get 'Permission denied' and answer 451",
                      _group_name(gid), path, directory, stat.S_IMODE(st.st_mode), st.st_uid,
                      st.st_gid, _group_name(gid))
            return
        if directory == "/":
            return
        directory = os.path.dirname(directory)


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def _clear_stale_socket(path: str) -> None:
    """Remove a socket file left by a dead Outpost; refuse if one is alive."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise ServeError(f"{path} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except OSError as exc:
        if exc.errno in (errno.ECONNREFUSED, errno.ENOENT):
            log.info("removing stale socket %s", path)
            os.unlink(path)
            return
        raise ServeError(f"cannot probe {path}: {exc}") from None
    finally:
        probe.close()
    raise ServeError(f"another process is already serving {path}")


# -- workers ----------------------------------------------------------------------------------

def limit_malloc_arenas(arenas: int = MALLOC_ARENAS) -> bool:
    """``mallopt(M_ARENA_MAX, arenas)`` (glibc; see MALLOC_ARENAS), before the
    worker starts threads.  False where the C library has no such knob."""
    m_arena_max = -8                    # glibc's malloc.h
    try:
        import ctypes
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    return bool(mallopt(m_arena_max, arenas))


def name_process(role: str) -> None:
    """Name this process ``outpost-<role>`` (``outpost-worker``…) where
    ``ps -o comm``, ``top``, ``pidstat`` and ``perf`` show it, instead of
    ``python``: the kernel's name of the calling thread (``/proc/self/comm``,
    15 bytes at most), which the threads it starts from now on inherit
    (libmilter's, one per connection).  Nothing where there is no such file."""
    try:
        with open("/proc/self/comm", "w", encoding="ascii") as f:
            f.write(f"outpost-{role}"[:15])
    except OSError:
        log.debug("cannot name the process outpost-%s", role)


def _die_with_parent(parent: int) -> None:
    """Ask Linux to send SIGTERM to this worker when the master dies (even by
    SIGKILL), so that no orphan keeps serving an old configuration.  If the
    master ``parent`` died before the request was made, exit now."""
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1            # linux/prctl.h
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the heartbeat thread checks the parent
        log.debug("prctl(PR_SET_PDEATHSIG) unavailable")
    if os.getppid() != parent:          # the master died between fork and prctl
        os._exit(1)


# -- workers (body) ----------------------------------------------------------------------------------

def _worker_main(config: Config, fd: int, parent: int, secrets: Optional[Secrets] = None,
                 ready_fd: Optional[int] = None) -> int:
    """Body of a worker process: libmilter on the inherited socket.  Just
    before it serves, the worker writes its pid to ``ready_fd`` (the
    master's readiness pipe)."""
    import Milter

    from .milter import FLAGS, Live, OutpostMilter

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)    # reloads are the master's business
    _die_with_parent(parent)
    if not limit_malloc_arenas():
        log.debug("mallopt(M_ARENA_MAX) unavailable")
    runtime = Runtime.build(config, secrets)
    metrics = None
    if config.metrics is not None and os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from ..effects.metrics import WorkerMetrics
        try:
            metrics = WorkerMetrics.for_runtime(runtime)
        except OSError as exc:           # the directory is not writable: serve mail without metrics
            log.error("worker %d: no metrics: %s", os.getpid(), exc)
    host, pid = runtime.policy.host, os.getpid()
    store = runtime.store
    stop = threading.Event()
    registered = False

    def register() -> None:
        """Drop slots of an earlier process with our pid (once), then beat."""
        nonlocal registered
        if not registered:
            store.process_gone(host, pid)
            registered = True
        store.process_alive(host, pid)

    def beat() -> None:
        while not stop.wait(HEARTBEAT):
            if os.getppid() != parent:
                log.error("worker %d: the master is gone; stopping", pid)
                os.kill(pid, signal.SIGTERM)
            try:
                register()
            except Exception:  # a failed heartbeat is retried next beat
                log.warning("store heartbeat failed", exc_info=True)
            if metrics is not None:
                metrics.sync_store(store)
                if runtime.stats is not None:
                    metrics.sync_decisions(runtime.stats)
                engine = runtime.policy.engine
                if engine is not None and engine.cache is not None:
                    metrics.sync_content_cache(engine.cache)

    try:
        register()
    except StoreError as exc:           # serve anyway: on_store_error decides each answer
        log.warning("worker %d: the store does not answer (%s); serving, and registering "
                    "with it when it is back", pid, exc)
    threading.Thread(target=beat, name="outpost-heartbeat", daemon=True).start()
    flusher = None
    if runtime.stats is not None:
        flusher = threading.Thread(target=runtime.stats.run, args=(stop,), name="outpost-stats",
                                   daemon=True)
        flusher.start()
    live = Live()
    Milter.factory = functools.partial(OutpostMilter, runtime, live=live, metrics=metrics)
    Milter.set_flags(FLAGS)
    Milter.set_exception_policy(Milter.TEMPFAIL)
    log.info("worker %d serving", pid)
    if ready_fd is not None:
        try:
            os.write(ready_fd, b"%d\n" % pid)
        except OSError as exc:
            log.warning("worker %d: cannot tell the master it serves: %s", pid, exc)
        os.close(ready_fd)
    try:
        Milter.runmilter("outpost", f"fd:{fd}", config.milter_timeout)
    except Milter.milter.error as exc:
        log.error("worker %d: libmilter failed: %s", pid, exc)
        return 1
    deadline = time.monotonic() + GRACE
    while live.count > 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    if live.count:
        log.warning("worker %d: %d connections still open after %ds; exiting", pid, live.count, GRACE)
    stop.set()
    if flusher is not None:
        flusher.join(timeout=5)            # its last flush: this worker's final counts
    try:
        store.process_gone(host, pid)
    finally:
        runtime.close()
    log.info("worker %d stopped", pid)
    return 0


def _sender_main(config: Config, parent: int) -> int:
    """Body of the report-sender process: deliver spooled abuse reports."""
    from ..effects.reports import ReportSender, Spool
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    _die_with_parent(parent)
    assert config.reports is not None
    ReportSender(Spool.from_settings(config.reports), config.reports).run_forever(stop)
    return 0


def _metrics_main(config: Config, sock: socket.socket, path: str, parent: int) -> int:
    """Body of the metrics process: the Prometheus endpoint."""
    from ..effects import metrics
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    _die_with_parent(parent)
    metrics.serve(config, sock, path, stop)
    return 0


def open_metrics_listener(config: Config) -> Optional[socket.socket]:
    """Bind ``metrics.listen`` (None without ``metrics:``); ServeError if it cannot."""
    m = config.metrics
    if m is None:
        return None
    fam = socket.AF_INET6 if ":" in m.host else socket.AF_INET
    sock = socket.socket(fam, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((m.host, m.port))
        sock.listen(16)
    except OSError as exc:
        sock.close()
        raise ServeError(f"metrics.listen {m.listen}: {exc.strerror or exc}") from None
    return sock


@dataclass
class Master:
    config_path: str
    config: Config
    sock: socket.socket
    nworkers: int
    secrets: Optional[Secrets] = None                         # read before privileges were dropped
    listen: str = ""                                          # for the service manager's status
    workers: dict[int, int] = field(default_factory=dict)     # pid → generation
    generation: int = 0
    sender: Optional[int] = None                              # pid of the report sender
    _sender_born: float = 0.0                                 # its start (monotonic)
    _sender_delay: float = 0.0                                # its restart back-off, seconds
    _sender_at: float = 0.0                                   # no new sender before this
    metrics_sock: Optional[socket.socket] = None              # the metrics listener
    metrics_dir: Optional[str] = None                         # the workers' metric files
    metrics_pid: Optional[int] = None                         # pid of the metrics process
    _metrics_at: float = 0.0                                  # no new metrics process before this
    _flags: set = field(default_factory=set)
    _born: dict = field(default_factory=dict)                 # worker pid → start (monotonic)
    _respawn_delay: float = 0.0                               # current back-off, seconds
    _respawn_at: float = 0.0                                  # no new worker before this
    _ready: set = field(default_factory=set)                  # worker pids that said they serve
    _announced: int = -1                                      # generation READY=1 was sent for
    _pipe: tuple = ()                                         # readiness pipe (read, write)

    def spawn(self, role: str = "worker") -> int:
        master = os.getpid()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                name_process(role)
                msock, self.metrics_sock = self.metrics_sock, None
                if self._pipe:
                    os.close(self._pipe[0])
                if role in ("metrics", "sender") and self._pipe:
                    os.close(self._pipe[1])             # only workers report that they serve
                if role == "metrics":
                    self.sock.close()
                    assert msock is not None and self.metrics_dir is not None
                    code = _metrics_main(self.config, msock, self.metrics_dir, master)
                elif role == "sender":
                    self.sock.close()
                    if msock is not None:
                        msock.close()
                    code = _sender_main(self.config, master)
                else:
                    if msock is not None:
                        msock.close()
                    code = _worker_main(self.config, self.sock.fileno(), master, self.secrets,
                                        self._pipe[1] if self._pipe else None)
            except StartupError as exc:
                log.error("worker cannot start: %s", exc)
            except Exception:  # report and exit the child, never return into the master loop
                log.exception("worker crashed")
            finally:
                logging.shutdown()
                os._exit(code)
        if role == "worker":
            self.workers[pid] = self.generation
            self._born[pid] = time.monotonic()
        return pid

    def fill(self) -> None:
        current = [p for p, g in self.workers.items() if g == self.generation]
        if len(current) < self.nworkers and time.monotonic() >= self._respawn_at:
            for _ in range(self.nworkers - len(current)):
                self.spawn()
        if (self.sender is None and self.config.reports is not None
                and time.monotonic() >= self._sender_at):
            self.sender = self.spawn("sender")
            self._sender_born = time.monotonic()
        if (self.metrics_pid is None and self.metrics_sock is not None
                and time.monotonic() >= self._metrics_at):
            self.metrics_pid = self.spawn("metrics")

    def _metrics_reload(self, config: Config) -> None:
        """Follow a changed ``metrics:`` block (raises ServeError if the new
        listener cannot be bound; nothing is changed then)."""
        old, new = self.config.metrics, config.metrics
        sock = None
        if new is not None and (old is None or (old.host, old.port) != (new.host, new.port)):
            sock = open_metrics_listener(config)
        if self.metrics_pid is not None:   # reaped; a new one starts with the new config (store, spool)
            _kill(self.metrics_pid, signal.SIGTERM)
        if new is None or sock is not None:
            if self.metrics_sock is not None:
                self.metrics_sock.close()
            self.metrics_sock = sock
        if new is not None and self.metrics_dir is None:
            from ..effects.metrics import prepare_dir
            self.metrics_dir = prepare_dir()

    def reload(self) -> None:
        service.notify("RELOADING=1", service.monotonic_usec(), "STATUS=reloading the configuration")
        try:
            config = load_config(self.config_path)
            secrets = load_secrets(config)         # as the service user, from now on
            Runtime.build(config, secrets).close()  # store, engines: fail here, not in workers
            self._metrics_reload(config)
        except (ConfigError, StartupError, ServeError) as exc:
            more = len(exc.errors) - 1 if isinstance(exc, ConfigError) else 0
            log.error("reload refused, keeping the running configuration: %s%s", exc,
                      f" (and {more} more: outpost check-config --strict lists them)" if more else "")
            service.notify("READY=1", f"STATUS=reload refused ({exc}); serving the previous "
                                      f"configuration on {self.listen}")
            return
        old = [p for p, g in self.workers.items() if g == self.generation]
        from ..logs import setup_logging
        setup_logging(config.log)                  # the new workers inherit it (a syslog or
                                                   # journal socket missing at start is retried)
        self.config = config
        self.secrets = secrets
        self.generation += 1
        self._respawn_delay = self._respawn_at = 0.0     # a new configuration starts at once
        self._sender_delay = self._sender_at = 0.0
        self.fill()
        for pid in old:
            _kill(pid, signal.SIGTERM)
        if self.sender is not None:
            _kill(self.sender, signal.SIGTERM)         # reaped, then restarted with the new config
        log.info("configuration reloaded (generation %d)", self.generation)

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid == self.sender:
                self.sender = None
                if "stop" not in self._flags and status != 0:
                    # died young: back off as for workers (no fork storm; reports stay spooled)
                    lived = time.monotonic() - self._sender_born
                    self._sender_delay = (min(RESPAWN_MAX, max(RESPAWN_MIN, 2 * self._sender_delay))
                                          if lived < STABLE else RESPAWN_MIN)
                    self._sender_at = time.monotonic() + self._sender_delay
                    log.error("report sender %d died (status %d) after %.1f s; starting a new one "
                              "in %.1f s", pid, status, lived, self._sender_delay)
                continue
            if pid == self.metrics_pid:
                self.metrics_pid = None
                if "stop" not in self._flags and status != 0:
                    log.error("metrics process %d died (status %d); starting a new one in %.0f s",
                              pid, status, METRICS_RESPAWN)
                    self._metrics_at = time.monotonic() + METRICS_RESPAWN
                continue
            if self.metrics_dir is not None:
                from ..effects.metrics import process_dead
                process_dead(pid, self.metrics_dir)     # its live gauges go; its counters stay
            gen = self.workers.pop(pid, None)
            born = self._born.pop(pid, None)
            self._ready.discard(pid)
            if gen == self.generation and not self._flags & {"stop"}:
                lived = time.monotonic() - born if born is not None else STABLE
                if lived < STABLE:                  # died young: back off (no fork storm)
                    self._respawn_delay = min(RESPAWN_MAX, max(RESPAWN_MIN, 2 * self._respawn_delay))
                else:
                    self._respawn_delay = RESPAWN_MIN
                self._respawn_at = time.monotonic() + self._respawn_delay
                log.error("worker %d died (status %d) after %.1f s; starting a new one in %.1f s",
                          pid, status, lived, self._respawn_delay)
                self._forget(pid)

    def _forget(self, pid: int) -> None:
        try:
            store = open_configured_store(self.config)
            try:
                store.process_gone(socket.gethostname(), pid)
            finally:
                store.close()
        except Exception:  # slots are reclaimed lazily anyway
            log.warning("could not free the slots of worker %d", pid, exc_info=True)

    def _collect_ready(self, timeout: float) -> None:
        """Wait up to ``timeout`` for workers saying they serve; once every
        worker of the current generation does, tell the service manager
        (``READY=1``, once per generation)."""
        try:
            ready, _, _ = select.select([self._pipe[0]], [], [], timeout)
        except InterruptedError:               # a signal: the loop looks at the flags
            return
        if ready:
            data = os.read(self._pipe[0], 4096)
            self._ready.update(int(p) for p in data.split() if p.isdigit())
        current = {p for p, g in self.workers.items() if g == self.generation}
        if (self._announced != self.generation and len(current) >= self.nworkers
                and current <= self._ready):
            self._announced = self.generation
            log.info("%d workers serving on %s (generation %d)", len(current), self.listen,
                     self.generation)
            service.notify("READY=1", f"STATUS=serving on {self.listen} with {len(current)} "
                                      f"workers (configuration generation {self.generation})")

    def run(self) -> int:
        def flag(name: str) -> Callable[[int, Optional[FrameType]], None]:
            return lambda signum, frame: self._flags.add(name)
        signal.signal(signal.SIGTERM, flag("stop"))
        signal.signal(signal.SIGINT, flag("stop"))
        signal.signal(signal.SIGHUP, flag("reload"))
        self._pipe = os.pipe()
        os.set_blocking(self._pipe[0], False)
        try:
            return self._run()
        finally:
            for fd in self._pipe:
                os.close(fd)
            self._pipe = ()

    def _run(self) -> int:
        self.fill()
        while True:
            if "stop" in self._flags:
                break
            if "reload" in self._flags:
                self._flags.discard("reload")
                self.reload()
            self.reap()
            self.fill()
            self._collect_ready(0.2)
        service.notify("STOPPING=1", "STATUS=stopping: finishing open connections")
        others = [p for p in (self.sender, self.metrics_pid) if p]
        for pid in list(self.workers) + others:
            _kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + GRACE + 5
        while (self.workers or self.sender or self.metrics_pid) and time.monotonic() < deadline:
            self.reap()
            time.sleep(0.1)
        for pid in list(self.workers) + [p for p in (self.sender, self.metrics_pid) if p]:
            _kill(pid, signal.SIGKILL)
        return 0


def _kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def serve(config_path: str, socket_spec: Optional[str] = None, workers: Optional[int] = None,
          socket_group: Optional[str] = None, user: Optional[str] = None,
          group: Optional[str] = None) -> int:
    """Run the master.  Order matters: the secret and DKIM keys are read and
    the socket bound (or taken from socket activation) with the privileges
    Outpost started with; with ``user`` it then creates the directories it
    writes in for that user and drops root, and only then opens the store
    and forks workers, which never run as root."""
    config = load_config(config_path)
    if socket_spec:
        config = replace(config, listen=socket_spec)
    try:
        account = service.resolve_account(user, group)
        fds = service.listen_fds()
    except service.ServiceError as exc:
        raise ServeError(str(exc)) from None
    secrets = load_secrets(config)
    if account is None:
        Runtime.build(config, secrets).close()       # fail fast, with a clear message
    n = workers or config.workers or os.cpu_count() or 1
    listen = config.listen
    if fds:                                          # systemd socket activation
        if len(fds) > 1:
            log.warning("socket activation passed %d sockets; serving the first (fd %d)",
                        len(fds), fds[0])
        listen = f"fd:{fds[0]}"
        if config.listen != listen:
            log.info("socket activation: serving %s (listen %s is not used)", listen,
                     config.listen)
    msock = open_metrics_listener(config)
    sock, path = open_listener(listen, socket_group, account)
    try:
        if account is not None:
            try:
                service.prepare_dirs(account, _writable_dirs(config))
                code = service.code_dirs()
                service.drop_privileges(account)
                service.check_readable(account, code)
            except service.ServiceError as exc:
                raise ServeError(str(exc)) from None
            Runtime.build(config, secrets).close()   # the store etc., as the service user
    except BaseException:
        sock.close()
        if msock is not None:
            msock.close()
        _unlink(path)
        raise
    os.set_inheritable(sock.fileno(), True)
    log.info("outpost listening on %s with %d workers", listen, n)
    master = Master(config_path=config_path, config=config, sock=sock, nworkers=n,
                    secrets=secrets, listen=listen, metrics_sock=msock)
    if msock is not None:                            # after the privilege drop: the service user's
        from ..effects.metrics import prepare_dir
        master.metrics_dir = prepare_dir()
        log.info("metrics on http://%s/metrics", config.metrics.listen)   # type: ignore[union-attr]
    name_process("master")
    try:
        return master.run()
    finally:
        sock.close()
        if master.metrics_sock is not None:
            master.metrics_sock.close()
        if master.metrics_dir is not None:
            from ..effects.metrics import remove_dir
            remove_dir(master.metrics_dir)
        _unlink(path)
        log.info("outpost stopped")


def _writable_dirs(config: Config) -> list[str]:
    """Directories Outpost writes in: the sqlite store's, the report spool."""
    out = []
    if config.store.startswith("sqlite:///"):
        out.append(os.path.dirname("/" + config.store[len("sqlite://"):].lstrip("/")))
    if config.reports is not None:
        out.append(config.reports.spool_dir)
    return out


def _unlink(path: Optional[str]) -> None:
    if not path:
        return
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:                           # e.g. a root-owned directory after --user
        log.info("cannot remove %s (%s); the next start removes it", path, exc.strerror)
