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
import signal
import socket
import stat
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Optional

from ..config import Config, ConfigError, load_config
from ..runtime import Runtime, StartupError, open_configured_store
from ..store.base import StoreError

log = logging.getLogger("outpost.server")

GRACE = 30.0              # seconds a stopping worker waits for open connections
HEARTBEAT = 10.0          # seconds between a worker's store heartbeats
RESPAWN_MIN = 0.2         # delay before replacing a worker that died young, doubling …
RESPAWN_MAX = 30.0        # … up to this
STABLE = 10.0             # a worker that lived this long resets the delay

#: glibc malloc arenas of a worker.  libmilter runs each SMTP connection on a
#: new thread, and glibc gives a thread that meets another in malloc (SQLite
#: calls run without the GIL) an arena of its own, up to 8 per core; free
#: memory in one arena is not reused by the others and seldom returned.  In
#: the soak (bench/soak.py, sqlite store) a worker's heap grew ~2 MB a minute
#: that way while its Python objects and SQLite's memory stayed flat; with one
#: arena it stays flat (the GIL serialises nearly all allocations anyway).
MALLOC_ARENAS = 1


class ServeError(Exception):
    pass


# -- the listening socket ------------------------------------------------------------------

def open_listener(spec: str, group: Optional[str] = None) -> tuple[socket.socket, Optional[str]]:
    """Bind the milter socket; returns (socket, unix path to remove at exit)."""
    if spec.startswith("fd:"):
        fd = int(spec[3:])
        sock = socket.socket(fileno=fd)
        return sock, None
    if spec.startswith(("unix:", "local:")):
        path = spec.split(":", 1)[1]
        _clear_stale_socket(path)
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o117)
        try:
            sock.bind(path)
        finally:
            os.umask(old)
        gid = _group_id(group)
        if gid is not None:
            os.chown(path, -1, gid)
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
    M_ARENA_MAX = -8
    try:
        import ctypes
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    return bool(mallopt(M_ARENA_MAX, arenas))


def _die_with_parent(parent: int) -> None:
    """Ask Linux to send SIGTERM to this worker when the master dies (even by
    SIGKILL), so that no orphan keeps serving an old configuration.  If the
    master ``parent`` died before the request was made, exit now."""
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the heartbeat thread checks the parent
        log.debug("prctl(PR_SET_PDEATHSIG) unavailable")
    if os.getppid() != parent:          # the master died between fork and prctl
        os._exit(1)


# -- workers (body) ----------------------------------------------------------------------------------

def _worker_main(config: Config, fd: int, parent: int) -> int:
    """Body of a worker process: libmilter on the inherited socket."""
    import Milter
    from .milter import FLAGS, Live, OutpostMilter

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)    # reloads are the master's business
    _die_with_parent(parent)
    if not limit_malloc_arenas():
        log.debug("mallopt(M_ARENA_MAX) unavailable")
    runtime = Runtime.build(config)
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
            except Exception:  # noqa: BLE001 - a failed heartbeat is retried next beat
                log.warning("store heartbeat failed", exc_info=True)

    try:
        register()
    except StoreError as exc:           # serve anyway: on_store_error decides each answer
        log.warning("worker %d: the store does not answer (%s); serving, and registering "
                    "with it when it is back", pid, exc)
    threading.Thread(target=beat, name="outpost-heartbeat", daemon=True).start()
    live = Live()
    Milter.factory = functools.partial(OutpostMilter, runtime, live=live)
    Milter.set_flags(FLAGS)
    Milter.set_exception_policy(Milter.TEMPFAIL)
    log.info("worker %d serving", pid)
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


@dataclass
class Master:
    config_path: str
    config: Config
    sock: socket.socket
    nworkers: int
    workers: dict[int, int] = field(default_factory=dict)     # pid → generation
    generation: int = 0
    sender: Optional[int] = None                              # pid of the report sender
    _flags: set = field(default_factory=set)
    _born: dict = field(default_factory=dict)                 # worker pid → start (monotonic)
    _respawn_delay: float = 0.0                               # current back-off, seconds
    _respawn_at: float = 0.0                                  # no new worker before this

    def spawn(self, role: str = "worker") -> int:
        master = os.getpid()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                if role == "sender":
                    self.sock.close()
                    code = _sender_main(self.config, master)
                else:
                    code = _worker_main(self.config, self.sock.fileno(), master)
            except StartupError as exc:
                log.error("worker cannot start: %s", exc)
            except Exception:  # noqa: BLE001 - report and exit the child, never return into the master loop
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
        if self.sender is None and self.config.reports is not None:
            self.sender = self.spawn("sender")

    def reload(self) -> None:
        try:
            config = load_config(self.config_path)
            Runtime.build(config).close()          # secret, store: fail here, not in workers
        except (ConfigError, StartupError) as exc:
            log.error("reload refused, keeping the running configuration: %s", exc)
            return
        old = [p for p, g in self.workers.items() if g == self.generation]
        self.config = config
        self.generation += 1
        self._respawn_delay = self._respawn_at = 0.0     # a new configuration starts at once
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
                    log.error("report sender %d died (status %d); starting a new one", pid, status)
                continue
            gen = self.workers.pop(pid, None)
            born = self._born.pop(pid, None)
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
        except Exception:  # noqa: BLE001 - slots are reclaimed lazily anyway
            log.warning("could not free the slots of worker %d", pid, exc_info=True)

    def run(self) -> int:
        def flag(name: str):
            return lambda signum, frame: self._flags.add(name)
        signal.signal(signal.SIGTERM, flag("stop"))
        signal.signal(signal.SIGINT, flag("stop"))
        signal.signal(signal.SIGHUP, flag("reload"))
        self.fill()
        while True:
            if "stop" in self._flags:
                break
            if "reload" in self._flags:
                self._flags.discard("reload")
                self.reload()
            self.reap()
            self.fill()
            time.sleep(0.2)
        for pid in list(self.workers) + ([self.sender] if self.sender else []):
            _kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + GRACE + 5
        while (self.workers or self.sender) and time.monotonic() < deadline:
            self.reap()
            time.sleep(0.1)
        for pid in list(self.workers) + ([self.sender] if self.sender else []):
            _kill(pid, signal.SIGKILL)
        return 0


def _kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def serve(config_path: str, socket_spec: Optional[str] = None, workers: Optional[int] = None,
          socket_group: Optional[str] = None) -> int:
    config = load_config(config_path)
    if socket_spec:
        config = replace(config, listen=socket_spec)
    Runtime.build(config).close()                    # fail fast, with a clear message
    n = workers or config.workers or os.cpu_count() or 1
    listen = config.listen
    if os.environ.get("LISTEN_FDS") and os.environ.get("LISTEN_PID") == str(os.getpid()):
        listen = "fd:3"                              # systemd socket activation
    sock, path = open_listener(listen, socket_group)
    os.set_inheritable(sock.fileno(), True)
    log.info("outpost listening on %s with %d workers", listen, n)
    master = Master(config_path=config_path, config=config, sock=sock, nworkers=n)
    try:
        return master.run()
    finally:
        sock.close()
        if path:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        log.info("outpost stopped")
