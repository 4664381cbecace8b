"""A Redis master, one replica and three Redis Sentinels on 127.0.0.1 (free
ports, no persistence), for tests of the ``redis+sentinel://`` store.

Every process runs in the foreground as a child of the test process (a
Sentinel is ``redis-server CONF --sentinel``: Debian's redis-server carries
Sentinel; the ``redis-sentinel`` package only adds a service unit).  The
Sentinels are tuned to fail over within a few seconds:
``down-after-milliseconds`` 1000, ``failover-timeout`` 5000::

    with SentinelCluster() as cluster:
        url = cluster.url                   # redis+sentinel://127.0.0.1:P1,.../mymaster/0
        cluster.kill_master()               # SIGKILL
        cluster.wait_for_failover()         # the Sentinels name the replica
"""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Optional

import redis

from tests.services.poll import wait_until
from tests.services.redis import RedisServer, free_port

SERVICE = "mymaster"


class TlsRedisServer(RedisServer):
    """A ``redis-server`` that speaks only TLS on its port (certificate
    ``cert``, clients not asked for one; replication over TLS too)."""

    def __init__(self, cert: Path, key: Path, extra_args: tuple[str, ...] = ()) -> None:
        port = free_port()
        super().__init__(port, extra_args=(
            "--port", "0", "--tls-port", str(port), "--tls-cert-file", str(cert),
            "--tls-key-file", str(key), "--tls-ca-cert-file", str(cert),
            "--tls-auth-clients", "no", "--tls-replication", "yes", *extra_args))
        self.cert = cert

    @property
    def url(self) -> str:
        return f"rediss://127.0.0.1:{self.port}/0?ssl_ca_certs={self.cert}"

    def _ping(self) -> bool:
        context = ssl.create_default_context(cafile=str(self.cert))
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as raw, \
                    context.wrap_socket(raw, server_hostname="127.0.0.1") as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith((b"+PONG", b"-NOAUTH"))
        except OSError:
            return False


class Sentinel:
    """One Sentinel process (``redis-server CONF --sentinel``)."""

    def __init__(self, exe: str, directory: Path, master_port: int, *,
                 down_after_ms: int, failover_timeout_ms: int, quorum: int,
                 tls: tuple[Path, Path] | None = None, password: str | None = None,
                 own_password: str | None = None) -> None:
        self.exe = exe
        self.port = free_port()
        self.dir = directory
        self.conf = directory / "sentinel.conf"
        # Sentinel rewrites its configuration file (it must be writable).
        self.conf.write_text(
            f"port {self.port}\nbind 127.0.0.1\ndaemonize no\ndir {directory}\n"
            f"loglevel notice\nlogfile {directory / 'sentinel.log'}\n"
            f"sentinel monitor {SERVICE} 127.0.0.1 {master_port} {quorum}\n"
            f"sentinel down-after-milliseconds {SERVICE} {down_after_ms}\n"
            f"sentinel failover-timeout {SERVICE} {failover_timeout_ms}\n"
            f"sentinel parallel-syncs {SERVICE} 1\n")
        self.own_password = own_password
        with self.conf.open("a") as fh:
            if password:              # the Redis servers' requirepass
                fh.write(f"sentinel auth-pass {SERVICE} {password}\n")
            if own_password:          # the Sentinel's own
                fh.write(f"requirepass {own_password}\n")
        if tls:                       # plain port for clients, TLS to the Redis servers
            cert, key = tls
            with self.conf.open("a") as fh:
                fh.write(f"tls-replication yes\ntls-cert-file {cert}\ntls-key-file {key}\n"
                         f"tls-ca-cert-file {cert}\n")
        self.proc: Optional[subprocess.Popen[bytes]] = None

    def start(self) -> "Sentinel":
        self.proc = subprocess.Popen([self.exe, str(self.conf), "--sentinel"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return self

    def client(self) -> redis.Redis:
        return redis.Redis("127.0.0.1", self.port, socket_timeout=2, socket_connect_timeout=2,
                           password=self.own_password)

    def master_state(self) -> dict:
        """``SENTINEL MASTER mymaster`` as a dict ({} while it does not answer)."""
        if self.proc is None or self.proc.poll() is not None:
            raise RuntimeError(f"Sentinel on port {self.port} exited; see "
                               f"{self.dir / 'sentinel.log'}")
        c = self.client()
        try:
            state = c.sentinel_master(SERVICE)
        except redis.RedisError:
            return {}
        finally:
            c.close()
        return state if isinstance(state, dict) else {}

    def log(self) -> str:
        path = self.dir / "sentinel.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait(timeout=10)
            self.proc = None


class SentinelCluster:
    """Master + replica + ``sentinels`` Sentinels (quorum: a majority).
    ``tls=True``: master and replica speak only TLS (a self-signed
    certificate for 127.0.0.1, ``self.cert``); the Sentinels listen in plain
    text and reach them over TLS.  ``password``: the Redis servers'
    ``requirepass`` (and ``masterauth``, ``sentinel auth-pass``);
    ``sentinel_password``: the Sentinels' own ``requirepass``."""

    def __init__(self, *, sentinels: int = 3, down_after_ms: int = 1000,
                 failover_timeout_ms: int = 5000, start_timeout: float = 30.0,
                 tls: bool = False, password: str | None = None,
                 sentinel_password: str | None = None) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            raise RuntimeError("redis-server not found (apt-get install redis-server)")
        self.exe = exe
        self.dir = Path(tempfile.mkdtemp(prefix="outpost-sentinel-"))
        self.start_timeout = start_timeout
        self.tls = tls
        self.password, self.sentinel_password = password, sentinel_password
        auth = ("--requirepass", password, "--masterauth", password) if password else ()
        self.cert, key = self.dir / "cert.pem", self.dir / "key.pem"
        self.master: RedisServer
        self.replica: RedisServer
        if tls:
            subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                            "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2",
                            "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                            "-keyout", str(key), "-out", str(self.cert)],
                           check=True, capture_output=True, timeout=30)
            self.master = TlsRedisServer(self.cert, key, extra_args=auth)
            self.replica = TlsRedisServer(self.cert, key, extra_args=(
                *auth, "--replicaof", "127.0.0.1", str(self.master.port)))
        else:
            self.master = RedisServer(extra_args=auth)
            self.replica = RedisServer(extra_args=(*auth, "--replicaof", "127.0.0.1",
                                                   str(self.master.port)))
        self.sentinels = []
        for i in range(sentinels):
            d = self.dir / f"s{i}"
            d.mkdir()
            self.sentinels.append(Sentinel(exe, d, self.master.port, down_after_ms=down_after_ms,
                                           failover_timeout_ms=failover_timeout_ms,
                                           quorum=sentinels // 2 + 1,
                                           tls=(self.cert, key) if tls else None,
                                           password=password, own_password=sentinel_password))

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        auth = f":{self.password}@" if self.password else ""
        query = [f"ssl_ca_certs={self.cert}"] if self.tls else []
        if self.sentinel_password:
            query.append(f"sentinel_password={self.sentinel_password}")
        scheme = "rediss+sentinel" if self.tls else "redis+sentinel"
        return f"{scheme}://{auth}{hosts}/{SERVICE}/0" + ("?" + "&".join(query) if query else "")

    def _client(self, server: RedisServer) -> redis.Redis:
        return redis.Redis.from_url(server.url, socket_timeout=2, password=self.password)

    def start(self) -> "SentinelCluster":
        """Start everything; return once the replica is in sync and every
        Sentinel sees the replica and the other Sentinels (only then can
        they agree on a failover)."""
        try:
            self.master.start()
            self.replica.start()
            for s in self.sentinels:
                s.start()
            others = len(self.sentinels) - 1
            wait_until(lambda: self.replica_in_sync(),
                       timeout=self.start_timeout, what="the replica in sync with the master")
            wait_until(lambda: all(
                (st := s.master_state()) and int(st.get("num-slaves", 0)) >= 1
                and int(st.get("num-other-sentinels", 0)) >= others
                for s in self.sentinels),
                timeout=self.start_timeout, what="every Sentinel seeing the replica and the others")
        except BaseException:
            self.close()
            raise
        return self

    def master_port(self) -> Optional[int]:
        """The master's port as the first Sentinel that answers names it."""
        for s in self.sentinels:
            c = s.client()
            try:
                addr = c.sentinel_get_master_addr_by_name(SERVICE)
            except redis.RedisError:
                continue
            finally:
                c.close()
            if isinstance(addr, (list, tuple)) and addr:
                return int(addr[1])
        return None

    def replica_in_sync(self) -> bool:
        """The replica's link is up and it has every write the master made."""
        m, r = self._client(self.master), self._client(self.replica)
        try:
            mi, ri = m.info("replication"), r.info("replication")
        except redis.RedisError:
            return False
        finally:
            m.close()
            r.close()
        return (ri.get("master_link_status") == "up"
                and ri.get("slave_repl_offset") == mi.get("master_repl_offset"))

    def kill_master(self) -> float:
        """SIGKILL the master (no shutdown, no save); return the monotonic time."""
        assert self.master.proc is not None
        self.master.proc.kill()
        at = time.monotonic()
        self.master.stop()
        return at

    def wait_for_failover(self, timeout: float = 30.0) -> float:
        """Wait until every Sentinel names the replica as master and the
        replica says it is one; return the monotonic time."""
        def promoted() -> bool:
            for s in self.sentinels:
                c = s.client()
                try:
                    addr = c.sentinel_get_master_addr_by_name(SERVICE)
                except redis.RedisError:
                    return False
                finally:
                    c.close()
                if not isinstance(addr, (list, tuple)) or int(addr[1]) != self.replica.port:
                    return False
            r = self._client(self.replica)
            try:
                return r.info("replication").get("role") == "master"
            except redis.RedisError:
                return False
            finally:
                r.close()
        try:
            wait_until(promoted, timeout=timeout, what="the Sentinels promoting the replica")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n--- sentinel log ---\n"
                                 f"{self.sentinels[0].log()[-3000:]}") from None
        return time.monotonic()

    def close(self) -> None:
        for s in self.sentinels:
            s.stop()
        self.replica.close()
        self.master.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> "SentinelCluster":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
