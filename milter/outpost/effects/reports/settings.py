"""Settings of the abuse-report mechanism (filled by the YAML loader)."""

from __future__ import annotations

import os
import re
import socket
from dataclasses import dataclass, field
from typing import Optional

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
        """Read the AUTH password (first line of ``password_file``)."""
        if self.password_file is None:
            return None
        with open(self.password_file, encoding="utf-8") as fh:
            if os.fstat(fh.fileno()).st_mode & 0o004:
                raise PermissionError(f"{self.password_file} is readable by others")
            return fh.readline().rstrip("\r\n")


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

    def __post_init__(self) -> None:
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
