"""Settings of the abuse-report mechanism (filled by the YAML loader)."""

from __future__ import annotations

import os
import re
import socket
import stat
from dataclasses import dataclass, field
from typing import Literal, Optional, get_args

#: A conservative addr-spec check for configured addresses (not for
#: addresses taken from mail, which are never used as recipients).
_ADDR_RE = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]{1,64}@[A-Za-z0-9.-]{1,253}$")
_HOST_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,62})(\.[A-Za-z0-9]([A-Za-z0-9-]{0,62}))*\.?$")


def check_address(value: str, what: str) -> str:
    """Return ``value`` if it is a plain ``local@domain`` address, else
    raise ValueError naming ``what``."""
    if not isinstance(value, str) or not _ADDR_RE.match(value) or ".." in value:
        raise ValueError(f"{what}: {value!r} is not a plain address like abuse@example.net")
    return value


def _default_hostname() -> str:
    name = socket.getfqdn()
    return name if _HOST_RE.match(name) else "localhost"


@dataclass(frozen=True)
class SmtpSettings:
    """How reports reach the relay.

    The default targets a dedicated Postfix listener on ``127.0.0.1:10587``
    that has no ``smtpd_milters``, so reports are not filtered by Outpost
    itself (see ``contrib/postfix/master.cf``).
    """

    host: str = "127.0.0.1"
    port: int = 10587
    starttls: bool = False
    username: Optional[str] = None
    #: file holding the AUTH password (first line); required with username
    password_file: Optional[str] = None
    timeout: float = 30.0
    #: CA bundle to verify the relay's STARTTLS certificate (default: system)
    tls_ca_file: Optional[str] = None

    def __post_init__(self) -> None:
        if not self.host or any(c in self.host for c in "\r\n\0 "):
            raise ValueError(f"reports.smtp.host: invalid host {self.host!r}")
        if not 0 < int(self.port) < 65536:
            raise ValueError(f"reports.smtp.port: {self.port!r} is not a TCP port")
        if not self.timeout > 0:
            raise ValueError("reports.smtp.timeout must be > 0 seconds")
        if (self.username is None) != (self.password_file is None):
            raise ValueError("reports.smtp: username and password_file go together")
        if self.username is not None and any(c in self.username for c in "\r\n\0"):
            raise ValueError("reports.smtp.username contains CR/LF/NUL")
        if self.username is not None and not self.starttls and self.host not in (
                "127.0.0.1", "::1", "localhost"):
            raise ValueError("reports.smtp: AUTH to a remote relay needs starttls: true")

    def password(self) -> Optional[str]:
        """Read the AUTH password (first line of ``password_file``).  The
        file must be a regular file that neither group nor others can read
        (the rule for DKIM keys): it is what keeps other local processes off
        the unfiltered report listener."""
        if self.password_file is None:
            return None
        with open(self.password_file, encoding="utf-8") as fh:
            st = os.fstat(fh.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise PermissionError(f"{self.password_file} is not a regular file")
            if st.st_mode & 0o077:
                raise PermissionError(f"{self.password_file}: mode {stat.S_IMODE(st.st_mode):04o} "
                                      "gives access to group/others; chmod 600")
            password = fh.readline().rstrip("\r\n")
        if not password:
            raise PermissionError(f"{self.password_file}: the first line (the password) is empty")
        return password


ListenerAuth = Literal["sasl", "none"]
LISTENER_AUTH: tuple[str, ...] = get_args(ListenerAuth)

#: check-config's warning for ``listener_auth: none``.
PLAIN_LISTENER_WARNING = (
    "reports.listener_auth is none: reports go to {host}:{port} without SMTP AUTH, so any "
    "process on that host that can reach the listener relays mail past Outpost (the report "
    "listener has no milter); use SMTP AUTH (see contrib/postfix/master.cf)")


@dataclass(frozen=True)
class SpoolLimits:
    """``reports.max_spool``: how much the spool may hold (events and
    reports in every state).  When full, further blocks are only counted
    (per user) and reported later as ``Incidents``, never written as files."""

    files: int = 10_000
    bytes: int = 200_000_000

    def __post_init__(self) -> None:
        if self.files < 10:
            raise ValueError("reports.max_spool.files must be >= 10")
        if self.bytes < 1_000_000:
            raise ValueError("reports.max_spool.bytes must be >= 1000000")


@dataclass(frozen=True)
class ReportSettings:
    """``reports:`` section of the configuration.

    ``to`` defaults (in the loader) to the top-level ``report_abuse_to``.
    Times are seconds.
    """

    to: str
    from_addr: str = ""              # '' -> outpost-reports@<hostname>
    smtp: SmtpSettings = field(default_factory=SmtpSettings)
    spool_dir: str = "/var/spool/outpost/reports"
    include_body: bool = True
    max_body_size: int = 1_000_000
    max_per_hour: int = 10           # reports per identity per window
    max_per_user: int = 30           # reports per user (all its identities) per window
    max_total: int = 300             # reports in all per window
    window: float = 3600.0           # the "hour" of the three limits above
    max_spool: SpoolLimits = field(default_factory=SpoolLimits)
    on_limit: bool = False           # report rate-limit blocks too
    retry_initial: float = 30.0
    retry_max: float = 3600.0
    give_up_after: float = 3 * 86400.0
    max_list: int = 100              # recipients / queue ids / evidence shown
    poll_interval: float = 5.0       # run_forever: pause between passes
    hostname: str = ""               # '' -> socket.getfqdn()
    #: How the report listener keeps other local processes out: ``sasl``
    #: (smtp.username + password_file, the contrib default) or ``none``
    #: (plain loopback: any local process can relay through the listener).
    listener_auth: ListenerAuth = "sasl"

    def __post_init__(self) -> None:
        if self.listener_auth not in LISTENER_AUTH:
            raise ValueError(f"reports.listener_auth: {self.listener_auth!r} is not one of "
                             f"{', '.join(LISTENER_AUTH)}")
        check_address(self.to, "reports.to")
        host = self.hostname or _default_hostname()
        if not _HOST_RE.match(host):
            raise ValueError(f"reports.hostname: {host!r} is not a host name")
        object.__setattr__(self, "hostname", host.rstrip("."))
        if not self.from_addr:
            object.__setattr__(self, "from_addr", f"outpost-reports@{self.hostname}")
        check_address(self.from_addr, "reports.from_addr")
        if not isinstance(self.smtp, SmtpSettings):
            raise ValueError("reports.smtp must be an SmtpSettings")
        if not self.spool_dir or not os.path.isabs(self.spool_dir):
            raise ValueError(f"reports.spool_dir must be an absolute path, not {self.spool_dir!r}")
        if self.max_body_size < 1024:
            raise ValueError("reports.max_body_size must be at least 1024 bytes")
        for name in ("max_per_hour", "max_per_user", "max_total"):
            if getattr(self, name) < 1:
                raise ValueError(f"reports.{name} must be >= 1")
        if not isinstance(self.max_spool, SpoolLimits):
            raise ValueError("reports.max_spool must be a SpoolLimits")
        if not self.window > 0:
            raise ValueError("reports.window must be > 0")
        if not 0 < self.retry_initial <= self.retry_max:
            raise ValueError("reports.retry_initial must be > 0 and <= retry_max")
        if not self.give_up_after > 0:
            raise ValueError("reports.give_up_after must be > 0")
        if self.max_list < 1:
            raise ValueError("reports.max_list must be >= 1")
        if not self.poll_interval > 0:
            raise ValueError("reports.poll_interval must be > 0")

    def listener_problem(self) -> Optional[str]:
        """Why reports cannot go to an authenticated listener as configured
        (None when they can, or when ``listener_auth: none`` says plain)."""
        if self.listener_auth == "none":
            return None
        smtp = self.smtp
        if smtp.username is None:
            return ("reports: the report listener needs SMTP AUTH (listener_auth: sasl): set "
                    "reports.smtp.username and reports.smtp.password_file (see "
                    "contrib/postfix/master.cf), or reports.listener_auth: none for plain "
                    "loopback (any local process can then relay through that listener)")
        try:
            smtp.password()
        except OSError as exc:
            return f"reports.smtp.password_file: {exc}"
        return None

    def listener_warning(self) -> Optional[str]:
        """check-config's warning for a plain (unauthenticated) listener."""
        if self.listener_auth != "none":
            return None
        return PLAIN_LISTENER_WARNING.format(host=self.smtp.host, port=self.smtp.port)
