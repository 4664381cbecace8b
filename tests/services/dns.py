"""Launcher for a real authoritative DNS server (NSD) on loopback.

``DnsServer(zones)`` writes an NSD config and one zone file per zone into a
private temporary directory, starts ``nsd -d`` on ``127.0.0.1:<free port>``
and waits (bounded) until every zone answers its SOA query.  Zones are given
as zone-file text (``$ORIGIN`` and ``$TTL`` are added when missing).

Fault injection uses NSD's own behaviour, nothing simulated:

* ``broken_zones``: zones configured in NSD whose zone file is invalid.  NSD
  does not load them and answers **SERVFAIL** for every name inside them.
* :func:`silent_udp_port` gives a loopback UDP port bound by a socket that
  never answers: a resolver pointed there sees **timeouts**.

``extra_ip`` makes NSD also listen on ``<extra_ip>:53`` so that tools that
can only use ``/etc/resolv.conf`` (libresolv, e.g. OpenDKIM's
``opendkim-testmsg``) can be run against it inside a private mount
namespace (see :func:`run_with_resolver`).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from contextlib import contextmanager
from typing import Iterator, Mapping, Optional, Sequence

import dns.message
import dns.query
import dns.rcode

NSD = shutil.which("nsd") or "/usr/sbin/nsd"
START_TIMEOUT = 15.0


class DnsServerError(RuntimeError):
    """NSD could not be started or did not become ready."""


def free_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1 (best effort)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.bind(("127.0.0.1", 0))
            port = u.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
                try:
                    t.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    raise DnsServerError("no free port found")


@contextmanager
def silent_udp_port() -> Iterator[int]:
    """Yield a UDP (and TCP) port on 127.0.0.1 where nothing ever answers."""
    for _ in range(50):
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            u.bind(("127.0.0.1", 0))
            port = u.getsockname()[1]
            t.bind(("127.0.0.1", port))  # bound, not listening: TCP gets refused
        except OSError:              # the TCP port of that number is taken: another one
            u.close()
            t.close()
            continue
        try:
            yield port
        finally:
            u.close()
            t.close()
        return
    raise DnsServerError("no free port found")


def _zone_text(origin: str, text: str) -> str:
    head = ""
    if "$ORIGIN" not in text:
        head += f"$ORIGIN {origin.rstrip('.')}.\n"
    if "$TTL" not in text:
        head += "$TTL 300\n"
    if " SOA " not in text and "\tSOA\t" not in text:
        head += ("@ IN SOA ns.invalid. hostmaster.invalid. "
                 "1 3600 600 86400 60\n@ IN NS ns.invalid.\n")
    return head + text + "\n"


class DnsServer:
    """A running NSD instance serving the given zones."""

    def __init__(self, zones: Mapping[str, str], broken_zones: Sequence[str] = (),
                 extra_ip: Optional[str] = None) -> None:
        self.zones = dict(zones)
        self.broken_zones = tuple(broken_zones)
        self.extra_ip = extra_ip
        self.host = "127.0.0.1"
        self.port = 0
        self.dir = ""
        self.proc: Optional[subprocess.Popen] = None

    # -- lifecycle -------------------------------------------------------
    def start(self) -> "DnsServer":
        last = ""
        for _ in range(3):  # a port can be taken between probe and bind
            self.port = free_port()
            self.dir = tempfile.mkdtemp(prefix="outpost-nsd-")
            self._write_config()
            log = open(os.path.join(self.dir, "stderr.log"), "wb")
            self.proc = subprocess.Popen(
                [NSD, "-d", "-c", os.path.join(self.dir, "nsd.conf")],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            log.close()
            try:
                self._wait_ready()
                return self
            except DnsServerError as exc:
                last = str(exc)
                self.stop()
        raise DnsServerError(last)

    def stop(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(timeout=5)
            self.proc = None
        if self.dir:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = ""

    def __enter__(self) -> "DnsServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def nameservers(self) -> tuple[str, ...]:
        return (self.host,)

    # -- internals -------------------------------------------------------
    def _write_config(self) -> None:
        d = self.dir
        ips = [f"{self.host}@{self.port}"]
        if self.extra_ip:
            ips.append(f"{self.extra_ip}@53")
        lines = ["server:"]
        lines += [f"    ip-address: {ip}" for ip in ips]
        lines += [
            f"    port: {self.port}",
            "    do-ip6: no",
            '    username: ""',
            '    chroot: ""',
            f"    zonesdir: \"{d}\"",
            f"    pidfile: \"{d}/nsd.pid\"",
            f"    xfrdfile: \"{d}/xfrd.state\"",
            f"    zonelistfile: \"{d}/zone.list\"",
            '    database: ""',
            f"    logfile: \"{d}/nsd.log\"",
            "    server-count: 1",
            "    verbosity: 1",
            "    hide-version: yes",
            "    zonefiles-write: 0",
            "remote-control:",
            "    control-enable: no",
        ]
        for i, (origin, text) in enumerate(sorted(self.zones.items())):
            fname = f"z{i}.zone"
            with open(os.path.join(d, fname), "w") as fh:
                fh.write(_zone_text(origin, text))
            lines += ["zone:", f"    name: \"{origin}\"", f"    zonefile: \"{fname}\""]
        for i, origin in enumerate(self.broken_zones):
            fname = f"broken{i}.zone"
            with open(os.path.join(d, fname), "w") as fh:
                fh.write("this is not a zone file\n")
            lines += ["zone:", f"    name: \"{origin}\"", f"    zonefile: \"{fname}\""]
        with open(os.path.join(d, "nsd.conf"), "w") as fh:
            fh.write("\n".join(lines) + "\n")

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        pending = list(self.zones)
        while pending:
            if self.proc is None or self.proc.poll() is not None:
                raise DnsServerError("nsd exited: " + self.log_text())
            bad = self._zones_with_errors()
            if bad:
                raise DnsServerError(f"zones {bad} failed to load: " + self.log_text())
            q = dns.message.make_query(pending[0], "SOA")
            try:
                r = dns.query.udp(q, self.host, port=self.port, timeout=0.3)
                if r.rcode() == dns.rcode.NOERROR and r.answer:
                    pending.pop(0)
                    continue
            except (OSError, dns.exception.Timeout):
                pass
            if time.monotonic() > deadline:
                raise DnsServerError("nsd not ready in time: " + self.log_text())
            time.sleep(0.05)

    def _zones_with_errors(self) -> list[str]:
        """Configured (not deliberately broken) zones NSD reported errors for."""
        p = os.path.join(self.dir, "nsd.log")
        if not os.path.exists(p):
            return []
        with open(p, errors="replace") as fh:
            text = fh.read()
        return [z for z in self.zones
                if re.search(rf"zone {re.escape(z.rstrip('.') or '.')} file \S+ read with "
                             r"\d+ errors", text)]

    def log_text(self) -> str:
        out = []
        for name in ("stderr.log", "nsd.log"):
            p = os.path.join(self.dir, name)
            if self.dir and os.path.exists(p):
                with open(p, "rb") as fh:
                    out.append(fh.read()[-2000:].decode("utf-8", "replace"))
        return "\n".join(out)


def run_with_resolver(nameserver_ip: str, argv: Sequence[str], *, input: bytes,
                      timeout: float = 20.0) -> subprocess.CompletedProcess:
    """Run ``argv`` with ``/etc/resolv.conf`` replaced by one naming only
    ``nameserver_ip`` (port 53), inside a private mount namespace
    (``unshare -m``, needs root) so that nothing else on the host sees it."""
    with tempfile.NamedTemporaryFile("w", suffix=".resolv.conf", delete=False) as fh:
        fh.write(f"nameserver {nameserver_ip}\noptions timeout:2 attempts:1\n")
        rc = fh.name
    try:
        script = 'mount --bind "$0" /etc/resolv.conf && exec "$@"'
        return subprocess.run(
            ["unshare", "-m", "--propagation", "private", "sh", "-c", script, rc, *argv],
            input=input, capture_output=True, timeout=timeout)
    finally:
        os.unlink(rc)


def dkimpy_verify(server: "DnsServer", message: bytes) -> list[bool]:
    """Verify every DKIM-Signature of ``message`` with dkimpy, fetching the
    keys from ``server`` (one result per signature, in header order)."""
    import dkim as dkimpy
    import dns.message
    import dns.query

    def dnsfunc(name, timeout=5):
        r = dns.query.udp(dns.message.make_query(name.decode(), "TXT"), "127.0.0.1",
                          port=server.port, timeout=2)
        return b"".join(r.answer[0][0].strings) if r.answer else None
    d = dkimpy.DKIM(message)
    n = sum(1 for h, _ in d.headers if h.lower() == b"dkim-signature")
    out = []
    for i in range(n):
        try:
            out.append(d.verify(i, dnsfunc=dnsfunc))
        except dkimpy.ValidationError:   # dkimpy raises on a body hash mismatch
            out.append(False)
    return out
