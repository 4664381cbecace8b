"""Launcher for a real rspamd (Debian package ``rspamd``) on loopback.

``Rspamd()`` writes a private top-level config into a temporary directory.
It reuses the packaged rules (``/etc/rspamd/common.conf``: metrics, actions,
regexp rules, lua plugins) but keeps every writable path (database, pid,
log, hyperscan cache) in the temporary directory and cuts rspamd off the
network:

* modules that query remote services or download maps (fuzzy_check, rbl,
  surbl, phishing, multimap, whitelist, mime_types, mid, rspamd_update,
  url_redirector, spf, dkim, dmarc, arc, asn, emails, mx_check, dcc, …) are
  disabled in a private ``local.d``;
* the resolver is pointed at a loopback port where nothing listens, so any
  remaining DNS query fails at once instead of leaving the host;
* no Redis is configured (modules that need it disable themselves).

Only the ``normal`` worker (the ``/checkv2`` scanner) and the ``controller``
are started, bound to ``127.0.0.1`` free ports (and the normal worker also
to ``<tmp>/normal.sock`` with ``unix_socket=True``); ``rspamd -f`` runs in the
foreground in its own process group so that stopping kills every worker.
Readiness is a real ``/checkv2`` request answered with JSON (bounded wait).
"""

from __future__ import annotations

import http.client
import json
import os
import pwd
import shutil
import subprocess
import tempfile
from typing import Optional

from tests.services._daemon import DaemonError, ManagedDaemon, free_tcp_port, start_with_retries, wait_until

RSPAMD = shutil.which("rspamd") or "/usr/bin/rspamd"
CONFDIR = "/etc/rspamd"
START_TIMEOUT = 60.0

#: Modules that would talk to the network (DNS lists, HTTP maps, fuzzy
#: servers, update server) or need external services.
OFFLINE_DISABLED = (
    "fuzzy_check", "rbl", "surbl", "phishing", "multimap", "whitelist",
    "mime_types", "mid", "rspamd_update", "url_redirector", "spf", "dkim",
    "dmarc", "arc", "asn", "emails", "mx_check", "dcc", "external_services",
    "antivirus", "reputation", "bimi", "hfilter", "dkim_signing",
    "metadata_exporter", "clickhouse", "elastic", "neural", "ratelimit",
    "greylist", "replies", "history_redis", "maillist", "p0f", "spamtrap",
    "external_relay", "aws_s3", "metric_exporter", "known_senders",
)

#: Public suffixes rspamd recognises in URLs (see ``url_tld`` below).
TLDS = ("com", "net", "org", "info", "biz", "io", "co", "me", "de", "fr", "nl",
        "eu", "uk", "co.uk", "ru", "su", "cn", "jp", "br", "in", "us", "xyz",
        "top", "online", "site", "club", "example", "test", "invalid")


def _dead_udp_port() -> int:
    """A loopback port with nothing bound (queries sent there get ICMP
    port-unreachable, so the resolver fails immediately)."""
    return free_tcp_port()


class Rspamd(ManagedDaemon):
    """A running rspamd; use as a context manager or call start()/stop()."""

    def __init__(self, unix_socket: bool = False,
                 start_timeout: float = START_TIMEOUT) -> None:
        self.want_unix = unix_socket
        self.start_timeout = start_timeout
        self.socket_path: Optional[str] = None
        self.dir: Optional[str] = None
        self.port = 0
        self.controller_port = 0
        self.proc: Optional[subprocess.Popen] = None
        self.start_seconds = 0.0

    # -- paths -----------------------------------------------------------
    @property
    def log_path(self) -> str:
        assert self.dir
        return os.path.join(self.dir, "rspamd.log")

    def _write_config(self) -> str:
        assert self.dir
        local = os.path.join(self.dir, "local")
        os.makedirs(os.path.join(local, "local.d"))
        os.makedirs(os.path.join(local, "override.d"))
        db = os.path.join(self.dir, "db")
        os.makedirs(db)
        for mod in OFFLINE_DISABLED:
            with open(os.path.join(local, "override.d", f"{mod}.conf"), "w") as fh:
                fh.write("enabled = false;\n")
        dns_port = _dead_udp_port()
        # The packaged public-suffix list (9 600 entries) takes rspamd ~20 s
        # of CPU to compile at every start; a short list keeps start-up fast.
        tld = os.path.join(self.dir, "tld.dat")
        with open(tld, "w") as fh:
            fh.write("\n".join(TLDS) + "\n")
        with open(os.path.join(local, "override.d", "options.inc"), "w") as fh:
            fh.write(f"""
filters = "chartable,regexp";
disable_hyperscan = true;
url_tld = "{tld}";
control_socket = "{db}/rspamd.sock mode=0600";
local_addrs = [];
dns {{
    nameserver = ["127.0.0.1:{dns_port}"];
    timeout = 0.2s;
    retransmits = 1;
}}
""")
        extra_bind = ""
        if self.want_unix:
            self.socket_path = os.path.join(self.dir, "normal.sock")
            extra_bind = f'bind_socket = "{self.socket_path} mode=0666";'
        conf = os.path.join(self.dir, "rspamd.conf")
        with open(conf, "w") as fh:
            fh.write(f"""
.include "$CONFDIR/common.conf"

options {{
    pidfile = "{self.dir}/rspamd.pid";
    .include "$CONFDIR/options.inc"
    .include(try=true; priority=10) "$LOCAL_CONFDIR/override.d/options.inc"
}}

logging {{
    type = "file";
    filename = "{self.log_path}";
    level = "info";
}}

worker "normal" {{
    bind_socket = "127.0.0.1:{self.port}";
    {extra_bind}
    .include "$CONFDIR/worker-normal.inc"
    count = 1;
}}

worker "controller" {{
    bind_socket = "127.0.0.1:{self.controller_port}";
    .include "$CONFDIR/worker-controller.inc"
    count = 1;
}}
""")
        return conf

    # -- life cycle --------------------------------------------------------
    def start(self) -> "Rspamd":
        """Start the daemon and wait until it answers (bounded)."""
        start_with_retries(self._start_once)
        return self

    def _start_once(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="outpost-rspamd-")
        self.port = free_tcp_port()
        self.controller_port = free_tcp_port()
        while self.controller_port == self.port:
            self.controller_port = free_tcp_port()
        conf = self._write_config()
        args = [RSPAMD, "-f", "-c", conf,
                "--var", f"CONFDIR={CONFDIR}",
                "--var", f"LOCAL_CONFDIR={self.dir}/local",
                "--var", f"DBDIR={self.dir}/db",
                "--var", f"RUNDIR={self.dir}",
                "--var", f"LOGDIR={self.dir}"]
        if os.geteuid() == 0:
            try:
                pw = pwd.getpwnam("_rspamd")
            except KeyError:
                args.append("--insecure")
            else:
                for root, dirs, files in os.walk(self.dir):
                    for name in dirs + files + [""]:
                        os.chown(os.path.join(root, name), pw.pw_uid, pw.pw_gid)
                args += ["-u", "_rspamd", "-g", "_rspamd"]
        with open(os.path.join(self.dir, "stdout.log"), "wb") as out:
            self.proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL,
                                         start_new_session=True)
        try:
            self.start_seconds = wait_until(self._ready, self.proc, self.start_timeout,
                                            "rspamd", self.log_path)
        except DaemonError:
            self.stop()
            raise

    def _ready(self) -> bool:
        try:
            reply = self.checkv2(b"From: a@example.com\r\nSubject: ping\r\n\r\nping\r\n",
                                 timeout=2.0)
        except (OSError, http.client.HTTPException, ValueError):
            return False
        if "action" not in reply:
            return False
        return self.socket_path is None or os.path.exists(self.socket_path)

    def checkv2(self, raw: bytes, timeout: float = 5.0, **headers: str) -> dict:
        """Scan ``raw`` with a plain HTTP client (test helper, not the
        product's client)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request("POST", "/checkv2", body=raw, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
        finally:
            conn.close()
        if resp.status != 200:
            raise ValueError(f"HTTP {resp.status}")
        return json.loads(data)
