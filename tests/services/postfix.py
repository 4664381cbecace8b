"""A throw-away Postfix instance on loopback, built from ``contrib/postfix/``.

The instance lives entirely under one directory (config, queue, data, log,
SASL database, TLS key) and runs unchrooted as root's Postfix (daemons drop
to the ``postfix`` user as usual).  Its listeners are the shipped master.cf
fragments, each rebound to a free ``127.0.0.1`` port; its milter settings
are the shipped main.cf fragment with only the socket swapped.

Typical use (see ``tests/services/fixtures.py`` for ready-made fixtures)::

    sink = SmtpSink(); sink.start()
    pf = PostfixInstance(sink_port=sink.port)   # under /tmp/outpost-postfix-*
    pf.start()
    ...  # start a milter on pf.milter_socket, send to pf.submission_port
    pf.cleanup()                                # stop + remove the directory

Requires (Debian 12): postfix, sasl2-bin, libsasl2-modules, openssl; root.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from tests.services.mta import MtaInstance

REPO_ROOT = Path(__file__).resolve().parents[2]
CONTRIB_DIR = REPO_ROOT / "contrib" / "postfix"

#: Networks the IP-relay listener accepts: loopback plus the three
#: documentation networks, so tests can pose as a customer server with
#: ``XCLIENT ADDR=192.0.2.x / 198.51.100.x / 203.0.113.x``.
DEFAULT_MYNETWORKS = ("127.0.0.0/8", "192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24")

#: Socket the shipped fragments name; the harness replaces it.
SHIPPED_MILTER = "unix:/run/outpost/outpost.sock"


#: Shipped service name -> attribute of PostfixInstance holding its port.
SERVICE_PORTS = {
    ("master.cf", "submission"): "submission_port",
    ("master.cf", "smtps"): "smtps_port",
    ("master.cf", "127.0.0.1:10587"): "reports_port",
    ("master-ip-relay.cf", "smtp"): "relay_port",
}

# Internal services every instance needs; chroot "n" everywhere, a postlog
# service because there is no syslog socket on test machines.
_BASE_MASTER_CF = """\
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


class PostfixError(RuntimeError):
    """A Postfix command failed or the instance did not reach the wanted state."""


# --------------------------------------------------------------------------
# Reading and rendering the shipped fragments
# --------------------------------------------------------------------------

def parse_main_cf(text: str) -> dict[str, str]:
    """Parse main.cf text into ``{name: value}`` (continuation lines joined,
    comments dropped, later definitions win as in Postfix)."""
    params: dict[str, str] = {}
    name = None
    for raw in text.splitlines():
        if not raw.strip() or raw.lstrip().startswith("#"):
            continue
        if raw[0].isspace():
            if name is None:
                raise ValueError(f"continuation line without a parameter: {raw!r}")
            params[name] = f"{params[name]} {raw.strip()}".strip()
            continue
        key, sep, value = raw.partition("=")
        if not sep:
            raise ValueError(f"not a 'name = value' line: {raw!r}")
        name = key.strip()
        params[name] = value.strip()
    return params


def render_main_cf(params: Mapping[str, str]) -> str:
    """Render ``{name: value}`` as main.cf text."""
    return "".join(f"{k} = {v}\n" for k, v in params.items())


@dataclass(frozen=True)
class MasterService:
    """One master.cf entry: the eight columns and its ``-o`` overrides."""

    name: str
    type: str
    private: str
    unpriv: str
    chroot: str
    wakeup: str
    maxproc: str
    command: str
    args: tuple[str, ...] = ()

    def with_name(self, name: str) -> "MasterService":
        return MasterService(name, self.type, self.private, self.unpriv, "n",
                             self.wakeup, self.maxproc, self.command, self.args)

    def with_overrides(self, overrides: Mapping[str, str]) -> "MasterService":
        """Append ``-o name=value`` options (the last one given wins)."""
        extra: list[str] = []
        for key, value in overrides.items():
            extra += ["-o", f"{key}={value}"]
        return MasterService(self.name, self.type, self.private, self.unpriv, self.chroot,
                             self.wakeup, self.maxproc, self.command, self.args + tuple(extra))

    def option(self, key: str) -> str | None:
        """Value of the last ``-o key=...`` of this entry, or None."""
        found = None
        for i, arg in enumerate(self.args[:-1]):
            if arg == "-o" and self.args[i + 1].startswith(key + "="):
                found = self.args[i + 1].split("=", 1)[1]
        return found

    def render(self) -> str:
        head = (f"{self.name} {self.type} {self.private} {self.unpriv} {self.chroot} "
                f"{self.wakeup} {self.maxproc} {self.command}")
        lines = [head]
        args = list(self.args)
        while args:
            if args[0] == "-o" and len(args) > 1:
                lines.append(f"  -o {args[1]}")
                args = args[2:]
            else:
                lines.append(f"  {args[0]}")
                args = args[1:]
        return "\n".join(lines) + "\n"


def parse_master_cf(text: str) -> list[MasterService]:
    """Parse master.cf text into entries (comments dropped)."""
    entries: list[list[str]] = []
    for raw in text.splitlines():
        if not raw.strip() or raw.lstrip().startswith("#"):
            continue
        if raw[0].isspace():
            if not entries:
                raise ValueError(f"continuation line without a service: {raw!r}")
            entries[-1] += raw.split()
        else:
            entries.append(raw.split())
    services = []
    for words in entries:
        if len(words) < 8:
            raise ValueError(f"master.cf entry needs 8 columns: {' '.join(words)!r}")
        services.append(MasterService(*words[:8], args=tuple(words[8:])))
    return services


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago on ``host``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def port_open(port: int, host: str = "127.0.0.1", timeout: float = 0.5) -> bool:
    """True if something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _run(cmd: Sequence[str], *, check: bool = True, timeout: float = 30,
         input: str | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout,
                          input=input)
    if check and proc.returncode != 0:
        raise PostfixError(f"{' '.join(cmd)} exited {proc.returncode}: "
                           f"{(proc.stderr or proc.stdout).strip()}")
    return proc


# --------------------------------------------------------------------------
# The instance
# --------------------------------------------------------------------------

@dataclass
class QueueEntry:
    """One message of ``postqueue -j`` (the fields tests use)."""

    queue_id: str
    queue_name: str
    sender: str
    recipients: list[str]
    raw: dict = field(repr=False)


class PostfixInstance(MtaInstance):
    """A private Postfix under ``base_dir`` relaying everything to a sink.

    :param base_dir: created if missing; holds ``etc/``, ``queue/``, ``data/``,
        ``maillog``, ``sasldb2``, ``tls/`` and (by default) ``milter/outpost.sock``.
        Every parent must be searchable by the ``postfix`` user (pytest's
        ``tmp_path`` is not).  Default: a fresh ``/tmp/outpost-postfix-*``
        directory, removed by :meth:`cleanup`.
    :param sink_port: port of the SMTP sink on 127.0.0.1 (``relayhost``).
    :param milter: milter spec for ``smtpd_milters``: ``unix:/path``,
        ``inet:PORT@127.0.0.1``, ``""`` for none.  Default:
        ``unix:<base_dir>/milter/outpost.sock``.  The socket must be writable
        by the ``postfix`` user: ``outpost run`` makes it group ``postfix``;
        other root-run milters need umask 0 (``tests/services/milter.py``).
    :param mynetworks: networks allowed on the IP-relay listener.
    :param require_tls: keep the shipped ``smtpd_tls_security_level=encrypt``
        on submission; default False lets tests AUTH/XCLIENT without STARTTLS
        (``smtpd_tls_security_level=may``, ``smtpd_tls_auth_only=no``).
    :param main_overrides: extra main.cf parameters (applied last).
    :param contrib_dir: where the shipped fragments are read from.
    """

    error = PostfixError

    def __init__(self, base_dir: str | os.PathLike | None = None, *, sink_port: int,
                 milter: str | None = None,
                 mynetworks: Iterable[str] = DEFAULT_MYNETWORKS,
                 require_tls: bool = False,
                 main_overrides: Mapping[str, str] | None = None,
                 contrib_dir: str | os.PathLike = CONTRIB_DIR,
                 hostname: str = "outpost-test.localdomain") -> None:
        self._layout(base_dir, "outpost-postfix-", sink_port=sink_port, milter=milter,
                     mynetworks=mynetworks, hostname=hostname, require_tls=require_tls)
        self.data_dir = self.base_dir / "data"
        self.contrib_dir = Path(contrib_dir)
        self._main_overrides = dict(main_overrides or {})
        self.submission_port = free_port()
        self.smtps_port = free_port()
        self.relay_port = free_port()
        self.reports_port = free_port()
        self._built = False
        self._daemon_dir: str | None = None

    # ---------------------------------------------------------------- info

    @property
    def ports(self) -> dict[str, int]:
        """``{attribute name: port}`` of every listener."""
        return {attr: getattr(self, attr) for attr in SERVICE_PORTS.values()}

    # ------------------------------------------------------------- config

    def main_cf(self) -> dict[str, str]:
        """The main.cf parameters this instance runs with."""
        shipped = parse_main_cf((self.contrib_dir / "main.cf").read_text())
        if shipped.get("smtpd_milters") != SHIPPED_MILTER:
            raise PostfixError(f"contrib main.cf no longer names {SHIPPED_MILTER}; "
                               "update SHIPPED_MILTER in the harness")
        params = {
            "compatibility_level": "3.6",
            "queue_directory": str(self.queue_dir),
            "data_directory": str(self.data_dir),
            "maillog_file": str(self.maillog_path),
            "maillog_file_prefixes": str(self.base_dir),
            "myhostname": self.hostname,
            "mydomain": "localdomain",
            "myorigin": "$myhostname",
            "mydestination": "",
            "local_recipient_maps": "",
            "local_transport": "error:local delivery is disabled",
            "alias_maps": "",
            "alias_database": "",
            "biff": "no",
            "append_dot_mydomain": "no",
            "readme_directory": "no",
            "inet_interfaces": "127.0.0.1",
            "inet_protocols": "ipv4",
            "mynetworks": " ".join(self.mynetworks),
            "relayhost": f"[127.0.0.1]:{self.sink_port}",
            "smtp_dns_support_level": "disabled",
            "smtp_connect_timeout": "5s",
            "smtp_tls_security_level": "none",
            "smtpd_relay_restrictions": "permit_mynetworks, permit_sasl_authenticated, "
                                        "reject_unauth_destination",
            "smtpd_authorized_xclient_hosts": "127.0.0.0/8",
            "smtpd_sasl_type": "cyrus",
            "smtpd_sasl_path": "smtpd",
            "smtpd_sasl_local_domain": "",
            "smtpd_tls_cert_file": str(self.tls_dir / "cert.pem"),
            "smtpd_tls_key_file": str(self.tls_dir / "key.pem"),
            "smtpd_tls_session_cache_database": "",
            "smtpd_error_sleep_time": "0",
            "smtpd_soft_error_limit": "100",
            "smtpd_hard_error_limit": "1000",
            "in_flow_delay": "0",
            "queue_run_delay": "1s",
            "minimal_backoff_time": "1s",
            "maximal_backoff_time": "5s",
        }
        params.update(shipped)
        params["smtpd_milters"] = self.milter
        params.update(self._main_overrides)
        return params

    def master_cf(self) -> list[MasterService]:
        """The master.cf entries: base services plus the shipped listeners."""
        services = parse_master_cf(_BASE_MASTER_CF)
        for fragment in ("master.cf", "master-ip-relay.cf"):
            for svc in parse_master_cf((self.contrib_dir / fragment).read_text()):
                attr = SERVICE_PORTS.get((fragment, svc.name))
                if attr is None:
                    raise PostfixError(f"unknown service {svc.name!r} in {fragment}; "
                                       "map it in SERVICE_PORTS")
                svc = svc.with_name(f"127.0.0.1:{getattr(self, attr)}")
                if attr == "submission_port" and not self.require_tls:
                    svc = svc.with_overrides({"smtpd_tls_security_level": "may",
                                              "smtpd_tls_auth_only": "no"})
                services.append(svc)
        return services

    def set_main(self, **params: str) -> None:
        """Change main.cf parameters; ``milter="unix:/other.sock"`` (or ``""``)
        swaps the milter.  A running instance is restarted (stop + start,
        ~0.3 s) so that no smtpd of the old configuration answers later."""
        if "milter" in params:
            self.milter = params.pop("milter")
        self._main_overrides.update(params)
        if self._built:
            self._write_config()
            if self.running:
                self.stop()
                self.start()

    def _write_config(self) -> None:
        (self.config_dir / "main.cf").write_text(render_main_cf(self.main_cf()))
        (self.config_dir / "master.cf").write_text(
            "".join(svc.render() for svc in self.master_cf()))

    def build(self) -> None:
        """Create directories, config, TLS key and SASL config (idempotent)."""
        for d in (self.base_dir, self.config_dir, self.queue_dir, self.data_dir,
                  self.tls_dir, self.config_dir / "sasl"):
            d.mkdir(parents=True, exist_ok=True)
        # The postfix user must traverse to the queue, SASL db and socket.
        self.base_dir.chmod(0o755)
        for parent in self.base_dir.parents:
            if not parent.stat().st_mode & 0o001:
                raise PostfixError(f"{parent} is not searchable by the postfix user; "
                                   "put the instance elsewhere (default: under /tmp)")
        self.milter_dir.mkdir(exist_ok=True)
        self.milter_dir.chmod(0o755)
        shutil.chown(self.data_dir, "postfix", "postfix")
        self._write_config()
        # Lookup tables the shipped main.cf names under $config_directory.
        for table in self.contrib_dir.glob("*.regexp"):
            shutil.copyfile(table, self.config_dir / table.name)
        (self.config_dir / "sasl" / "smtpd.conf").write_text(
            "pwcheck_method: auxprop\nauxprop_plugin: sasldb\n"
            f"mech_list: PLAIN LOGIN\nsasldb_path: {self.sasldb_path}\n")
        if not (self.tls_dir / "cert.pem").exists():
            _run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                  "ec_paramgen_curve:prime256v1", "-nodes", "-days", "7",
                  "-subj", f"/CN={self.hostname}",
                  "-keyout", str(self.tls_dir / "key.pem"),
                  "-out", str(self.tls_dir / "cert.pem")])
        self._built = True
        self._make_report_credential()          # reports_yaml(): Outpost's side of it

    # ------------------------------------------------------------ control

    def postfix(self, *args: str, check: bool = True,
                timeout: float = 30) -> subprocess.CompletedProcess:
        """Run ``postfix -c CONFIG_DIR ARGS``."""
        return _run(["postfix", "-c", str(self.config_dir), *args], check=check, timeout=timeout)

    @property
    def master_pid(self) -> int | None:
        """PID of the running master process, or None (a zombie counts as gone)."""
        try:
            pid = int((self.queue_dir / "pid" / "master.pid").read_text().split()[0])
        except (FileNotFoundError, ValueError, IndexError):
            return None
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, IndexError):
            return None
        return None if state in ("Z", "X") else pid

    @property
    def running(self) -> bool:
        return self.master_pid is not None

    def start(self, timeout: float = 15.0) -> None:
        """Build if needed, start, and wait until every listener answers."""
        if not self._built:
            self.build()
        if self.running:
            return
        proc = self.postfix("start", check=False)
        if proc.returncode != 0:
            raise PostfixError(f"postfix start failed ({proc.returncode}): "
                               f"{(proc.stderr or proc.stdout).strip()}\n{self.maillog()[-2000:]}")
        deadline = time.monotonic() + timeout
        pending = set(self.ports.values())
        while pending:
            pending = {p for p in pending if not port_open(p)}
            if pending and time.monotonic() > deadline:
                raise PostfixError(f"Postfix ports {sorted(pending)} not listening after "
                                   f"{timeout}s\n{self.maillog()[-2000:]}")
            if pending:
                time.sleep(0.05)

    def _master_locked(self) -> bool:
        """True while a master (or its lock) is alive: ``master -t`` fails."""
        if self._daemon_dir is None:
            self._daemon_dir = _run(["postconf", "-c", str(self.config_dir), "-h",
                                     "daemon_directory"]).stdout.strip()
        return _run([f"{self._daemon_dir}/master", "-c", str(self.config_dir), "-t"],
                    check=False).returncode != 0

    #: Queues whose messages are on their way: submitted, not yet picked up
    #: by the queue manager, or being delivered right now.
    IN_FLIGHT_QUEUES = ("maildrop", "incoming", "active")

    def in_flight(self) -> list[str]:
        """Queue ids in the maildrop, incoming and active queues (read from
        the queue directory: no Postfix command, works while stopped)."""
        ids = []
        for name in self.IN_FLIGHT_QUEUES:
            for dirpath, _dirs, files in os.walk(self.queue_dir / name):
                for qid in files:
                    # pickup takes a maildrop file only once postdrop has
                    # finished it (owner-execute bit); one a refused
                    # submission left behind is never picked up
                    if name == "maildrop" and not self._finished(Path(dirpath) / qid):
                        continue
                    ids.append(qid)
        return ids

    @staticmethod
    def _finished(path: Path) -> bool:
        try:
            return bool(path.stat().st_mode & 0o100)
        except FileNotFoundError:
            return False

    def drain(self, timeout: float = 30.0) -> None:
        """Wait until no message is in flight: each one queued so far has been
        delivered, deferred or held.  A sink that recorded a message has not
        yet answered Postfix; stopping Postfix (or forgetting what the sink
        got) before the delivery agent has reported it leaves the message in
        the active queue, and the next Postfix delivers it again."""
        deadline = time.monotonic() + timeout
        while self.running and (ids := self.in_flight()):
            if time.monotonic() > deadline:
                raise PostfixError(f"messages {sorted(ids)} still in flight after {timeout}s\n"
                                   f"{self.maillog()[-2000:]}")
            time.sleep(0.02)

    @staticmethod
    def _stat(pid: int) -> list[str] | None:
        """Fields of /proc/PID/stat after the command name (state first), or None."""
        try:
            return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            return None

    def _group_alive(self, pgid: int) -> bool:
        """True while a live (non-zombie) process is in process group ``pgid``."""
        for entry in os.scandir("/proc"):
            if entry.name.isdigit():
                fields = self._stat(int(entry.name))
                if fields and fields[2] == str(pgid) and fields[0] not in ("Z", "X"):
                    return True
        return False

    def stop(self, timeout: float = 15.0) -> None:
        """Stop as ``postfix stop`` does, without its 1 s polling: first let
        the messages in flight be delivered (:meth:`drain`: the master's
        SIGTERM kills a delivery agent that has sent a message but not yet
        reported it, and the next start delivers it a second time), then
        SIGTERM to the master, and wait until the master, its lock and every
        process of its process group (the master kills them on SIGTERM) are
        gone, so that no old daemon still answers or delivers."""
        pid = self.master_pid
        if pid is None:
            return
        try:
            self.drain()
        except PostfixError as exc:          # stop all the same, then say why
            stuck: PostfixError | None = exc
        else:
            stuck = None
        fields = self._stat(pid)
        group = pid if fields and fields[2] == str(pid) else None   # the master calls setsid()
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while (self.master_pid is not None or self._master_locked()
               or (group is not None and self._group_alive(group))):
            if time.monotonic() > deadline:
                raise PostfixError(f"Postfix master {pid} or its daemons still running "
                                   f"{timeout}s after SIGTERM")
            time.sleep(0.02)
        if stuck is not None:
            raise stuck

    def cleanup(self) -> None:
        """Stop, and remove the directory if this instance created it."""
        self.stop()
        if self._owns_dir:
            shutil.rmtree(self.base_dir)

    def reload(self) -> None:
        """``postfix reload`` (new smtpd processes use the new config)."""
        self.postfix("reload")

    # ---------------------------------------------------------------- SASL

    def add_sasl_user(self, login: str, password: str) -> None:
        """Create or update a SASL user (``{auth_authen}`` will be exactly ``login``)."""
        if not self._built:
            self.build()
        _run(["saslpasswd2", "-p", "-c", "-f", str(self.sasldb_path), "-u", self.hostname, login],
             input=password)
        shutil.chown(self.sasldb_path, "root", "postfix")
        self.sasldb_path.chmod(0o640)

    # --------------------------------------------------------------- queue

    def postqueue(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """Run ``postqueue -c CONFIG_DIR ARGS``."""
        return _run(["postqueue", "-c", str(self.config_dir), *args], check=check)

    def postsuper(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """Run ``postsuper -c CONFIG_DIR ARGS`` (e.g. ``"-H", qid`` to release)."""
        return _run(["postsuper", "-c", str(self.config_dir), *args], check=check)

    def postcat(self, queue_id: str, *args: str) -> str:
        """Output of ``postcat -c CONFIG_DIR ARGS -q QUEUE_ID`` (e.g. ``"-h"``
        for headers only, ``"-b"`` for the body)."""
        return _run(["postcat", "-c", str(self.config_dir), *args, "-q", queue_id]).stdout

    def queue(self) -> list[QueueEntry]:
        """Every queued message (all queues), from ``postqueue -j``."""
        entries = []
        for line in self.postqueue("-j").stdout.splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            entries.append(QueueEntry(item["queue_id"], item["queue_name"], item["sender"],
                                      [r["address"] for r in item.get("recipients", [])], item))
        return entries

    def hold_queue(self) -> list[str]:
        """Queue ids of messages in the hold queue (quarantined)."""
        return [e.queue_id for e in self.queue() if e.queue_name == "hold"]

    def flush(self) -> None:
        """Retry deferred mail now (``postqueue -f``)."""
        self.postqueue("-f")
