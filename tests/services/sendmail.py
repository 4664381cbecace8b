"""A throw-away real Sendmail on loopback, built around ``contrib/sendmail/outpost.mc``.

Sendmail and Postfix cannot both be installed on Debian (``apt-get install
sendmail-bin`` removes Postfix), so the harness runs Sendmail from the
unpacked Debian packages: ``apt-get download sendmail-bin sendmail-cf`` into
a cache directory, ``dpkg-deb -x``.  Their libraries (``m4 libwrap0
liblockfile1 libdb5.3 libsasl2-2``; ``sasl2-bin libsasl2-modules`` for SASL)
must be installed.

The instance lives under one directory (``sendmail.cf`` built with m4 from a
minimal ``.mc`` that includes the shipped fragment, queue, access db, SASL
config and database, ``maillog``).  Every ``sendmail`` command runs in its own
UTS + mount namespace (``unshare -u -m``), which gives it, without touching
the host:

* a fully qualified host name (``hostname``) and a private ``/etc/hosts``
  naming it -- otherwise Sendmail sleeps 60 s on an unqualified name;
* a private copy of libsasl2's plugin directory ``/usr/lib/<arch>/sasl2``
  with ``Sendmail.conf`` added (Debian's libsasl2 looks for
  ``Sendmail.conf`` in ``/etc/sasl2:/etc/sasl:/usr/lib/<arch>/sasl2``);
* a private ``/dev`` whose ``/dev/log`` is a datagram socket the harness
  reads into ``maillog`` (test machines have no syslog).

Listeners: the shipped MSA (``Port=submission ... M=Ea``) rebound to
``127.0.0.1:submission_port`` and a port-25 style listener ``Name=MTA`` on
``127.0.0.1:relay_port`` that relays for ``mynetworks`` (access db
``Connect:`` entries).  Everything is relayed to the sink on
``127.0.0.1:sink_port``.  Sendmail has no XCLIENT: pose as a customer's
server by binding the client socket to a 127.0.0.X source address, and log
in with real SMTP AUTH (:meth:`SendmailInstance.add_sasl_user`).

Typical use::

    sink = SmtpSink().start()
    sm = SendmailInstance(sink_port=sink.port)
    sm.start()            # ~0.1 s after the first build
    ...                   # milter on sm.milter_socket, send to sm.relay_port
    sm.cleanup()

Requires root (namespaces, bind mounts).
"""

from __future__ import annotations

import fcntl
import ipaddress
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from tests.services.mta import MtaInstance
from tests.services.postfix import DEFAULT_MYNETWORKS, QueueEntry, free_port, port_open

__all__ = ["SendmailInstance", "SendmailError", "SendmailDist", "QueueEntry",
           "DEFAULT_MYNETWORKS", "SHIPPED_MILTER"]

REPO_ROOT = Path(__file__).resolve().parents[2]
CONTRIB_FRAGMENT = REPO_ROOT / "contrib" / "sendmail" / "outpost.mc"

#: Socket the shipped fragment names; the harness replaces it.
SHIPPED_MILTER = "unix:/run/outpost/outpost.sock"

#: Where the downloaded and unpacked Debian packages are kept.
DEFAULT_CACHE_DIR = Path(os.environ.get(
    "OUTPOST_SENDMAIL_CACHE",
    Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "outpost-tests" / "sendmail"))

DEBIAN_PACKAGES = ("sendmail-bin", "sendmail-cf")

#: Devices the private /dev of the namespace carries over from the host.
_DEVICES = ("null", "zero", "full", "random", "urandom", "tty")

# Run "$@" in the new namespaces.  $1..$5: hostname, instance dir, syslog
# socket ("" for none), private SASL dir, the SASL plugin dir it replaces.
_NS_SCRIPT = r"""
set -e
host=$1 base=$2 logsock=$3 sasldir=$4 plugindir=$5; shift 5
hostname "$host"
mount --bind "$base/etc/hosts" /etc/hosts
mount --bind "$sasldir" "$plugindir"
mkdir -p "$base/ns/hostdev"
mount --bind /dev "$base/ns/hostdev"
mount -t tmpfs -o mode=755 tmpfs /dev
for n in """ + " ".join(_DEVICES) + r"""; do
    touch "/dev/$n"; mount --bind "$base/ns/hostdev/$n" "/dev/$n"
done
ln -s /proc/self/fd /dev/fd
ln -s /proc/self/fd/0 /dev/stdin; ln -s /proc/self/fd/1 /dev/stdout; ln -s /proc/self/fd/2 /dev/stderr
if [ -n "$logsock" ]; then touch /dev/log; mount --bind "$logsock" /dev/log; fi
umount "$base/ns/hostdev"
exec "$@"
"""

_QID_RE = re.compile(r"^[0-9A-Za-z]{8,20}$")


class SendmailError(RuntimeError):
    """A Sendmail command failed or the instance did not reach the wanted state."""


def _run(cmd: Sequence[str], *, check: bool = True, timeout: float = 60,
         input: str | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout,
                          input=input)
    if check and proc.returncode != 0:
        raise SendmailError(f"{' '.join(cmd)} exited {proc.returncode}: "
                            f"{(proc.stderr or proc.stdout).strip()}")
    return proc


# --------------------------------------------------------------------------
# The unpacked Debian packages
# --------------------------------------------------------------------------

@dataclass(frozen=True)
class SendmailDist:
    """Sendmail binaries and m4 files unpacked from the Debian packages.

    :param cache_dir: holds the ``.deb`` files and ``root/`` (the unpacked
        tree); filled by :meth:`ensure` on first use.
    """

    cache_dir: Path = DEFAULT_CACHE_DIR

    @property
    def root(self) -> Path:
        return self.cache_dir / "root"

    @property
    def sendmail(self) -> Path:
        """The sendmail binary (a copy without the setgid bit)."""
        return self.root / "usr" / "libexec" / "sendmail" / "sendmail.nosgid"

    @property
    def makemap(self) -> Path:
        return self.root / "usr" / "libexec" / "sendmail" / "makemap"

    @property
    def cf_dir(self) -> Path:
        """``.../usr/share/sendmail/cf`` (``m4/cf.m4``, features, mailers)."""
        return self.root / "usr" / "share" / "sendmail" / "cf"

    def ensure(self) -> "SendmailDist":
        """Download and unpack the packages unless already done (file-locked,
        so parallel test processes share one cache)."""
        if self.sendmail.exists() and (self.cf_dir / "m4" / "cf.m4").exists():
            return self
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        with open(self.cache_dir / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if self.sendmail.exists():
                return self
            for pkg in DEBIAN_PACKAGES:
                if not list(self.cache_dir.glob(f"{pkg}_*.deb")):
                    proc = subprocess.run(["apt-get", "download", pkg], cwd=self.cache_dir,
                                          capture_output=True, text=True, timeout=300)
                    if proc.returncode != 0:
                        raise SendmailError(f"apt-get download {pkg} failed (apt-get update?): "
                                            f"{proc.stderr.strip()}")
                debs = sorted(self.cache_dir.glob(f"{pkg}_*.deb"))
                _run(["dpkg-deb", "-x", str(debs[-1]), str(self.root)])
            original = self.sendmail.with_name("sendmail")
            shutil.copy2(original, self.sendmail)
            self.sendmail.chmod(0o755)  # no setgid: root runs it, and libsasl2 trusts it
        return self


# --------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------

def sasl_plugin_dir() -> Path:
    """libsasl2's plugin directory (Debian: ``/usr/lib/<multiarch>/sasl2``),
    which is also on its config path (``/etc/sasl2:/etc/sasl:<plugins>``)."""
    for candidate in sorted(Path("/usr/lib").glob("*/sasl2")):
        if list(candidate.glob("libsasldb.so*")):
            return candidate
    raise SendmailError("no libsasl2 plugin directory with libsasldb "
                        "(install libsasl2-modules libsasl2-modules-db)")


def access_prefixes(networks: Iterable[str]) -> list[str]:
    """Sendmail access-db ``Connect:`` keys for CIDR networks.

    The access db matches IPv4 addresses by leading octets, so only /8, /16,
    /24 and /32 networks can be expressed; IPv6 networks become
    ``IPv6:`` prefixes of whole 16-bit groups.
    """
    keys = []
    for spec in networks:
        net = ipaddress.ip_network(spec, strict=False)
        if net.version == 4:
            if net.prefixlen % 8:
                raise ValueError(f"{spec}: Sendmail's access db needs an octet boundary "
                                 "(/8, /16, /24, /32)")
            octets = str(net.network_address).split(".")[: net.prefixlen // 8]
            keys.append(".".join(octets))
        else:
            if net.prefixlen % 16:
                raise ValueError(f"{spec}: IPv6 networks need a /16-multiple prefix")
            groups = net.network_address.exploded.split(":")[: net.prefixlen // 16]
            keys.append("IPv6:" + ":".join(g.lstrip("0") or "0" for g in groups))
    return keys


def render_fragment(text: str, *, milter: str, submission_port: int,
                    addr: str = "127.0.0.1", reports_port: int | None = None) -> str:
    """The shipped fragment with the milter socket and the MSA port (and,
    given ``reports_port``, the report daemon's port 10587) swapped.

    ``milter=""`` drops the ``INPUT_MAIL_FILTER`` line (no filter).
    """
    if f"S={SHIPPED_MILTER}" not in text:
        raise SendmailError(f"contrib outpost.mc no longer names {SHIPPED_MILTER}; "
                            "update SHIPPED_MILTER in the harness")
    if "Port=submission" not in text:
        raise SendmailError("contrib outpost.mc has no `Port=submission' MSA; update the harness")
    if milter:
        text = text.replace(f"S={SHIPPED_MILTER}", f"S={milter}")
    else:
        text = re.sub(r"(?m)^INPUT_MAIL_FILTER\(.*\n", "", text)
    if reports_port is not None:
        if "Port=10587, Addr=127.0.0.1, Name=OutpostReports" not in text:
            raise SendmailError("contrib outpost.mc has no report daemon on 10587; update the harness")
        text = text.replace("Port=10587, Addr=127.0.0.1", f"Port={reports_port}, Addr=127.0.0.1")
    return text.replace("Port=submission", f"Port={submission_port}, Addr={addr}")


def _group_alive(pgid: int) -> bool:
    """True while a live (non-zombie) process is in process group ``pgid``."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        if fields[0] not in ("Z", "X") and int(fields[2]) == pgid:
            return True
    return False


class _SyslogReceiver:
    """Reads syslog datagrams from a unix socket and appends them to a file."""

    def __init__(self, socket_path: Path, log_path: Path) -> None:
        self.socket_path = socket_path
        self.log_path = log_path
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._sock is not None:
            return
        self.socket_path.unlink(missing_ok=True)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(str(self.socket_path))
        self.socket_path.chmod(0o666)
        self._sock = sock
        self._thread = threading.Thread(target=self._loop, args=(sock,), daemon=True,
                                        name=f"syslog {self.socket_path}")
        self._thread.start()

    def _loop(self, sock: socket.socket) -> None:
        rx = re.compile(rb"^<\d+>")
        with open(self.log_path, "ab", buffering=0) as out:
            while True:
                try:
                    data = sock.recv(65536)
                except OSError:  # closed by stop()
                    return
                if not data:
                    return
                out.write(rx.sub(b"", data).rstrip(b"\n") + b"\n")

    def stop(self) -> None:
        if self._sock is None:
            return
        sock, self._sock = self._sock, None
        # Wake the reader with an empty datagram, then close.
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.sendto(b"", str(self.socket_path))
        if self._thread is not None:
            self._thread.join(5)
        sock.close()


# --------------------------------------------------------------------------
# The instance
# --------------------------------------------------------------------------

class SendmailInstance(MtaInstance):
    """A private Sendmail under ``base_dir`` relaying everything to a sink.

    :param base_dir: created if missing; holds ``etc/`` (``sendmail.mc``,
        ``sendmail.cf``, ``outpost.mc`` as rendered, access db, hosts,
        ``sasl2/Sendmail.conf``), ``queue/``, ``sasldb2``, ``maillog`` and (by
        default) ``milter/outpost.sock``.  Default: a fresh
        ``/tmp/outpost-sendmail-*`` directory, removed by :meth:`cleanup`.
    :param sink_port: port of the SMTP sink on 127.0.0.1 (``SMART_HOST``).
    :param milter: ``S=`` spec of the filter: ``unix:/path``,
        ``inet:PORT@127.0.0.1``, ``""`` for none.  Default:
        ``unix:<base_dir>/milter/outpost.sock``.
    :param mynetworks: CIDR networks the ``relay_port`` listener relays for
        (octet boundaries only; see :func:`access_prefixes`).
    :param hostname: the fully qualified ``$j``; also the SASL realm.
    :param require_tls: keep the shipped ``confAUTH_OPTIONS`` (``p``: no
        PLAIN/LOGIN before STARTTLS).  Default False appends
        ``define(`confAUTH_OPTIONS', `A y')`` so tests can AUTH in clear.
        STARTTLS is offered either way (self-signed key in ``tls/``).
    :param mc_extra: extra ``.mc`` lines, appended after the fragment.
    :param mc_tail: ``.mc`` lines after the ``MAILER()`` lines (where
        ``contrib/sendmail/outpost-feedback.mc`` goes).
    :param dist: where the Sendmail binaries come from.
    """

    error = SendmailError

    def __init__(self, base_dir: str | os.PathLike | None = None, *, sink_port: int,
                 milter: str | None = None,
                 mynetworks: Iterable[str] = DEFAULT_MYNETWORKS,
                 hostname: str = "outpost-test.localdomain",
                 require_tls: bool = False,
                 mc_extra: Sequence[str] = (),
                 mc_tail: Sequence[str] = (),
                 fragment: str | os.PathLike = CONTRIB_FRAGMENT,
                 dist: SendmailDist | None = None) -> None:
        if "." not in hostname:
            raise ValueError(f"hostname must be fully qualified, got {hostname!r}")
        self._layout(base_dir, "outpost-sendmail-", sink_port=sink_port, milter=milter,
                     mynetworks=mynetworks, hostname=hostname, require_tls=require_tls)
        self.sasl_dir = self.config_dir / "sasl2"
        self.cf_path = self.config_dir / "sendmail.cf"
        self.pid_path = self.base_dir / "sendmail.pid"
        access_prefixes(self.mynetworks)  # validate early
        self.mc_extra = tuple(mc_extra)
        self.mc_tail = tuple(mc_tail)
        self.fragment = Path(fragment)
        self.dist = dist or SendmailDist()
        self.submission_port = free_port()
        self.relay_port = free_port()
        self.reports_port = free_port()        # the report daemon (no filter, AUTH only)
        self._syslog = _SyslogReceiver(self.base_dir / "log.sock", self.maillog_path)
        self._built = False

    # ---------------------------------------------------------------- info

    @property
    def ports(self) -> dict[str, int]:
        """``{attribute name: port}`` of every listener."""
        return {"submission_port": self.submission_port, "relay_port": self.relay_port,
                "reports_port": self.reports_port}

    # ------------------------------------------------------------- config

    def rendered_fragment(self) -> str:
        """The shipped fragment as this instance uses it."""
        return render_fragment(self.fragment.read_text(), milter=self.milter,
                               submission_port=self.submission_port,
                               reports_port=self.reports_port)

    def mc(self) -> str:
        """The instance's ``sendmail.mc`` (it includes ``etc/outpost.mc``)."""
        cf = self.dist.cf_dir
        lines = [
            "divert(-1)",
            "divert(0)dnl",
            f"include(`{cf}/m4/cf.m4')dnl",
            "OSTYPE(`linux')dnl",
            f"define(`confDOMAIN_NAME', `{self.hostname}')dnl",
            f"define(`QUEUE_DIR', `{self.queue_dir}')dnl",
            f"define(`STATUS_FILE', `{self.base_dir}/statistics')dnl",
            f"define(`confPID_FILE', `{self.pid_path}')dnl",
            f"define(`ALIAS_FILE', `{self.config_dir}/aliases')dnl",
            f"define(`confSERVICE_SWITCH_FILE', `{self.config_dir}/service.switch')dnl",
            f"define(`confHOSTS_FILE', `{self.config_dir}/hosts')dnl",
            "define(`confCF_VERSION', `outpost-test')dnl",
            "define(`confBIND_OPTS', `-DNSRCH -DEFNAMES')dnl",
            "define(`confDONT_PROBE_INTERFACES', `True')dnl",
            "define(`confDONT_BLAME_SENDMAIL', `TrustStickyBit')dnl",
            "define(`confDELIVERY_MODE', `background')dnl",
            "define(`confLOG_LEVEL', `14')dnl",
            # A loaded 2-core test machine must not refuse or queue-only.
            "define(`confQUEUE_LA', `999')dnl",
            "define(`confREFUSE_LA', `999')dnl",
            "define(`confDELAY_LA', `0')dnl",
            "define(`confMIN_FREE_BLOCKS', `0')dnl",
            "define(`confMAX_DAEMON_CHILDREN', `0')dnl",
            "define(`confCONNECTION_RATE_THROTTLE', `0')dnl",
            "define(`confMIN_QUEUE_AGE', `0')dnl",
            "define(`confTO_ICONNECT', `5s')dnl",
            "define(`confTO_CONNECT', `5s')dnl",
            "define(`confTO_HOSTSTATUS', `0s')dnl",
            "define(`confTO_IDENT', `0s')dnl",
            "define(`confPRIVACY_FLAGS', `authwarnings')dnl",
            # STARTTLS offered on every listener (a throw-away self-signed key).
            f"define(`confCACERT_PATH', `{self.tls_dir}')dnl",
            f"define(`confCACERT', `{self.tls_dir}/cert.pem')dnl",
            f"define(`confSERVER_CERT', `{self.tls_dir}/cert.pem')dnl",
            f"define(`confSERVER_KEY', `{self.tls_dir}/key.pem')dnl",
            "FEATURE(`nocanonify')dnl",
            "FEATURE(`accept_unresolvable_domains')dnl",
            f"FEATURE(`access_db', `hash -T<TMPF> {self.config_dir}/access')dnl",
            f"DAEMON_OPTIONS(`Port={self.relay_port}, Addr=127.0.0.1, Name=MTA')dnl",
            "define(`SMART_HOST', `relay:[127.0.0.1]')dnl",
            f"define(`RELAY_MAILER_ARGS', `TCP $h {self.sink_port}')dnl",
            f"include(`{self.config_dir}/outpost.mc')dnl",
        ]
        if not self.require_tls:
            lines.append("define(`confAUTH_OPTIONS', `A y')dnl")
        lines += [*self.mc_extra, "MAILER(`local')dnl", "MAILER(`smtp')dnl", *self.mc_tail, ""]
        return "\n".join(lines)

    def _write_config(self) -> None:
        (self.config_dir / "outpost.mc").write_text(self.rendered_fragment())
        (self.config_dir / "sendmail.mc").write_text(self.mc())
        proc = _run(["m4", str(self.config_dir / "sendmail.mc")])
        if "ERROR" in proc.stderr or "*** " in proc.stderr:
            raise SendmailError(f"m4 sendmail.mc: {proc.stderr.strip()}")
        self.cf_path.write_text(proc.stdout)
        access = "".join(f"Connect:{key}\tRELAY\n" for key in access_prefixes(self.mynetworks))
        _run([str(self.dist.makemap), "-C", str(self.cf_path), "hash",
              str(self.config_dir / "access")], input=access)

    def build(self) -> None:
        """Unpack Sendmail if needed; create directories and config (idempotent)."""
        self.dist.ensure()
        for d in (self.base_dir, self.config_dir, self.queue_dir, self.sasl_dir,
                  self.base_dir / "ns"):
            d.mkdir(parents=True, exist_ok=True)
        self.base_dir.chmod(0o755)
        self.queue_dir.chmod(0o700)
        self.milter_dir.mkdir(exist_ok=True)
        self.milter_dir.chmod(0o755)
        (self.config_dir / "hosts").write_text(
            f"127.0.0.1\tlocalhost\n127.0.1.1\t{self.hostname} {self.hostname.split('.')[0]}\n"
            "::1\tlocalhost ip6-localhost ip6-loopback\n")
        (self.config_dir / "service.switch").write_text("hosts\tfiles\naliases\tfiles\n")
        (self.config_dir / "aliases").write_text("")
        (self.config_dir / "aliases.db").unlink(missing_ok=True)
        (self.sasl_dir / "Sendmail.conf").write_text(
            "pwcheck_method: auxprop\nauxprop_plugin: sasldb\n"
            f"mech_list: PLAIN LOGIN\nsasldb_path: {self.sasldb_path}\n")
        # libsasl2 reads <app>.conf from its plugin directory too: the
        # namespace mounts a copy of that directory with Sendmail.conf added.
        shutil.copytree(sasl_plugin_dir(), self.sasl_dir, symlinks=True, dirs_exist_ok=True)
        (self.base_dir / "statistics").touch()
        if not (self.tls_dir / "cert.pem").exists():
            self.tls_dir.mkdir(mode=0o700, exist_ok=True)
            _run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                  "ec_paramgen_curve:prime256v1", "-nodes", "-days", "7",
                  "-subj", f"/CN={self.hostname}",
                  "-keyout", str(self.tls_dir / "key.pem"),
                  "-out", str(self.tls_dir / "cert.pem")])
            (self.tls_dir / "key.pem").chmod(0o600)
        self._write_config()
        self._built = True
        self._make_report_credential()          # reports_yaml(): Outpost's side of it

    # ------------------------------------------------------------ control

    def _ns_argv(self, argv: Sequence[str]) -> list[str]:
        logsock = str(self._syslog.socket_path) if self._syslog.socket_path.exists() else ""
        return ["unshare", "-u", "-m", "--propagation", "private", "sh", "-c", _NS_SCRIPT,
                "sendmail-ns", self.hostname, str(self.base_dir), logsock, str(self.sasl_dir),
                str(sasl_plugin_dir()),
                *argv]

    def sendmail(self, *args: str, check: bool = True, timeout: float = 60,
                 input: str | None = None) -> subprocess.CompletedProcess:
        """Run ``sendmail -C sendmail.cf ARGS`` in the instance's namespaces."""
        argv = [str(self.dist.sendmail), "-C", str(self.cf_path),
                "-ODontBlameSendmail=TrustStickyBit", *args]
        return _run(self._ns_argv(argv), check=check, timeout=timeout, input=input)

    @property
    def daemon_pid(self) -> int | None:
        """PID of the running daemon, or None (a zombie counts as gone)."""
        try:
            pid = int(self.pid_path.read_text().split()[0])
        except (FileNotFoundError, ValueError, IndexError):
            return None
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, IndexError):
            return None
        return None if state in ("Z", "X") else pid

    @property
    def running(self) -> bool:
        return self.daemon_pid is not None

    def start(self, timeout: float = 15.0) -> None:
        """Build if needed, start the daemon (queue run every second) and wait
        until every listener answers."""
        if not self._built:
            self.build()
        if self.running:
            return
        self._syslog.start()
        self.sendmail("-bd", "-q1s")
        deadline = time.monotonic() + timeout
        pending = set(self.ports.values())
        while pending:
            pending = {p for p in pending if not port_open(p)}
            if pending and time.monotonic() > deadline:
                raise SendmailError(f"Sendmail ports {sorted(pending)} not listening after "
                                    f"{timeout}s\n{self.maillog()[-2000:]}")
            if pending:
                time.sleep(0.02)

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM the daemon's process group (the daemon, queue runners,
        deliveries) and wait until all are gone and the ports are closed."""
        pid = self.daemon_pid
        if pid is not None:
            pgid = os.getpgid(pid)
            if pgid != pid:  # never signal a group the daemon did not create
                raise SendmailError(f"Sendmail daemon {pid} is not its group's leader ({pgid})")
            os.killpg(pgid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while (_group_alive(pgid) or any(port_open(p) for p in self.ports.values())):
                if time.monotonic() > deadline:
                    raise SendmailError(f"Sendmail {pid} still running {timeout}s after SIGTERM")
                time.sleep(0.02)
        self._syslog.stop()

    def cleanup(self) -> None:
        """Stop, and remove the directory if this instance created it."""
        self.stop()
        if self._owns_dir:
            shutil.rmtree(self.base_dir, ignore_errors=False)

    def reload(self) -> None:
        """Rebuild the config and restart (Sendmail re-execs on SIGHUP; a
        restart is simpler and just as quick)."""
        self._write_config()
        if self.running:
            self.stop()
            self.start()

    # ---------------------------------------------------------------- SASL

    def add_sasl_user(self, login: str, password: str) -> None:
        """Create or update a SASL user in the instance's sasldb."""
        if not self._built:
            self.build()
        _run(["saslpasswd2", "-p", "-c", "-f", str(self.sasldb_path), "-u", self.hostname, login],
             input=password)
        self.sasldb_path.chmod(0o600)

    # --------------------------------------------------------------- queue

    def _read_qf(self, path: Path, queue_name: str) -> QueueEntry | None:
        try:
            text = path.read_text(errors="replace")
        except FileNotFoundError:
            return None
        sender, rcpts, reason = "", [], None
        for line in text.splitlines():
            if line.startswith("S"):
                sender = line[1:].strip("<>")
            elif line.startswith("R"):
                rcpts.append(line.split(":", 1)[-1].strip("<>"))
            elif line.startswith("q"):
                reason = line[1:]
        return QueueEntry(path.name[2:], queue_name, sender, rcpts,
                          {"file": str(path), "quarantine_reason": reason})

    def queue(self) -> list[QueueEntry]:
        """Every queued message: ``queue_name`` is ``"active"`` for normal
        control files (``qf*``) and ``"hold"`` for quarantined ones (``hf*``)."""
        entries = []
        for path in sorted(self.queue_dir.iterdir()):
            kind = {"qf": "active", "hf": "hold"}.get(path.name[:2])
            if kind and _QID_RE.match(path.name[2:]):
                entry = self._read_qf(path, kind)
                if entry is not None:
                    entries.append(entry)
        return entries

    def hold_queue(self) -> list[str]:
        """Queue ids of quarantined messages (Sendmail's quarantine queue)."""
        return [e.queue_id for e in self.queue() if e.queue_name == "hold"]

    def mailq(self, *args: str) -> str:
        """``mailq`` output (``sendmail -bp``); ``mailq("-qQ")`` lists quarantined mail."""
        return self.sendmail("-bp", *args).stdout

    def flush(self) -> None:
        """Run the queue once now, in the foreground (``sendmail -q``)."""
        self.sendmail("-q")

    def release(self, queue_id: str) -> None:
        """Release a quarantined message (``sendmail -Q -qQ -qI<id>``) and
        deliver it now."""
        if not _QID_RE.match(queue_id):
            raise ValueError(f"not a queue id: {queue_id!r}")
        if queue_id not in self.hold_queue():
            raise SendmailError(f"{queue_id} is not in the quarantine queue")
        self.sendmail("-Q", "-qQ", f"-qI{queue_id}")
        self.sendmail(f"-qI{queue_id}")

    def quarantine(self, queue_id: str, reason: str) -> None:
        """Quarantine a queued message by hand (``sendmail -Q<reason> -qI<id>``)."""
        self.sendmail(f"-Q{reason}", f"-qI{queue_id}")
