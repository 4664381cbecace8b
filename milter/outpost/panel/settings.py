"""The ``panel:`` block of the configuration (parsed by
:func:`outpost.config.parse.parse_config` with ``settings_from``)."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Optional

#: Roles of a panel account: ``viewer`` reads every page; ``operator`` also
#: locks, unlocks, resets, retries and purges reports, releases and deletes
#: quarantined messages.
ROLES = ("viewer", "operator")

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
_HOST_PORT = re.compile(r"^(?:\[([0-9A-Fa-f:.]+)\]|([0-9.]+|localhost)):(\d{1,5})$")


@dataclass(frozen=True)
class PanelUser:
    """One panel account (``panel.users`` item)."""

    name: str
    password_hash: str           # from ``outpost panel passwd NAME``
    role: str = "viewer"

    def __post_init__(self) -> None:
        if not _NAME.match(self.name or ""):
            raise ValueError(f"panel user name {self.name!r} must be 1-64 letters, digits, . _ @ -")
        if self.role not in ROLES:
            raise ValueError(f"panel user {self.name}: role must be one of {', '.join(ROLES)}, "
                             f"got {self.role!r}")
        from .auth import check_hash_format
        problem = check_hash_format(self.password_hash)
        if problem:
            raise ValueError(f"panel user {self.name}: password_hash {problem} "
                             f"(make one with: outpost panel passwd {self.name})")


@dataclass(frozen=True)
class PanelSettings:
    """``panel:`` (optional; ``outpost panel`` refuses to start without users)."""

    #: HOST:PORT to listen on (plain HTTP: put a TLS reverse proxy in front).
    listen: str = "127.0.0.1:9468"
    users: tuple[PanelUser, ...] = ()
    #: Mark the session cookie Secure (set when the panel is reached over HTTPS).
    secure_cookies: bool = False
    #: A session ends this long after login, seconds.
    session_lifetime: float = 8 * 3600.0
    #: Failed logins allowed per client address and per account name in
    #: ``login_window`` seconds; more are answered 429 until the window passes.
    login_attempts: int = 5
    login_window: float = 300.0
    #: Postfix configuration directory whose hold queue is the quarantine
    #: (the Quarantine page; empty: no such page).
    postfix_config: str = ""
    #: Release and delete through this request directory, applied by
    #: ``outpost quarantine apply`` as root (postsuper runs only as root);
    #: empty: run postsuper directly (the panel must then run as root).
    quarantine_spool: str = ""
    #: Threads serving requests.
    threads: int = 4
    #: Path prefix when the reverse proxy serves the panel below a path (``/outpost``).
    url_prefix: str = ""

    def __post_init__(self) -> None:
        self.address()               # validates listen
        names = [u.name for u in self.users]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"panel.users: {', '.join(dup)} listed more than once")
        for name in ("session_lifetime", "login_window"):
            if not getattr(self, name) > 0:
                raise ValueError(f"panel.{name} must be > 0")
        if not 1 <= self.login_attempts <= 1000:
            raise ValueError("panel.login_attempts must be 1..1000")
        if not 1 <= self.threads <= 64:
            raise ValueError("panel.threads must be 1..64")
        if self.quarantine_spool and not self.quarantine_spool.startswith("/"):
            raise ValueError("panel.quarantine_spool must be an absolute path")
        if self.url_prefix and (not self.url_prefix.startswith("/") or self.url_prefix.endswith("/")):
            raise ValueError("panel.url_prefix must start with / and not end with / (e.g. /outpost)")

    def address(self) -> tuple[str, int]:
        m = _HOST_PORT.match(self.listen.strip())
        port = int(m.group(3)) if m else 0
        if not m or not 0 < port < 65536:
            raise ValueError(f"panel.listen '{self.listen}' is not HOST:PORT "
                             f"(127.0.0.1:9468, [::1]:9468)")
        host = m.group(1) or m.group(2)
        ipaddress.ip_address(host if host != "localhost" else "127.0.0.1")
        return host, port

    def user(self, name: str) -> Optional[PanelUser]:
        return next((u for u in self.users if u.name == name), None)
