"""What ``outpost run`` needs from the service manager and the host.

- :func:`notify`: the ``sd_notify(3)`` protocol (``READY=1``, ``RELOADING=1``,
  ``STOPPING=1``, ``STATUS=…``): one datagram to the Unix socket named by
  ``$NOTIFY_SOCKET``.  A few lines, so no dependency; without the variable
  (not started by systemd, or ``Type=simple``) it does nothing.
- :func:`listen_fds`: the sockets systemd passed (``sd_listen_fds(3)``:
  ``LISTEN_FDS`` descriptors from fd 3, meant for us when ``LISTEN_PID`` is
  our pid).
- :func:`resolve_account`, :func:`prepare_dirs` and :func:`drop_privileges`:
  ``outpost run --user/--group`` on hosts without systemd.  The master reads
  the secret and the DKIM keys and binds the socket as root, creates the
  directories it writes in for the service user, then gives up root for good
  (groups, gid, uid; real, effective and saved) before any worker exists.
"""

from __future__ import annotations

import grp
import logging
import os
import pwd
import socket
import stat
import time
from dataclasses import dataclass
from typing import Iterable, Mapping, MutableMapping, Optional

log = logging.getLogger("outpost.server")

SD_LISTEN_FDS_START = 3


class ServiceError(Exception):
    """The service user, its directories or the inherited sockets are unusable."""


# -- sd_notify ---------------------------------------------------------------------------

def notify(*fields: str, env: Mapping[str, str] = os.environ) -> bool:
    """Send ``fields`` (e.g. ``"READY=1"``, ``"STATUS=serving"``) to the
    service manager; True if a datagram was sent.  Newlines inside a field
    would start a new field: they are replaced by spaces."""
    addr = env.get("NOTIFY_SOCKET", "")
    if not addr:
        return False
    if addr[0] == "@":                        # abstract namespace
        addr = "\0" + addr[1:]
    elif addr[0] != "/":
        log.debug("NOTIFY_SOCKET %r is not a Unix socket path; not notifying", addr)
        return False
    payload = "\n".join(f.replace("\n", " ") for f in fields).encode("utf-8", "replace")
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.sendto(payload, addr)
    except OSError as exc:
        log.warning("cannot notify the service manager at %s: %s", env["NOTIFY_SOCKET"], exc)
        return False
    return True


def monotonic_usec() -> str:
    """``MONOTONIC_USEC=…`` that goes with ``RELOADING=1`` (systemd ≥ 253)."""
    return f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}"


# -- socket activation -----------------------------------------------------------------------

def listen_fds(env: MutableMapping[str, str] = os.environ, pid: Optional[int] = None) -> list[int]:
    """The descriptors passed by socket activation (empty if none are meant
    for this process).  The variables are removed from ``env`` either way
    (as ``sd_listen_fds(1)`` does), so no child takes them for its own."""
    fds, for_pid = env.pop("LISTEN_FDS", None), env.pop("LISTEN_PID", None)
    env.pop("LISTEN_FDNAMES", None)
    if fds is None or for_pid is None:
        return []
    if for_pid.strip() != str(os.getpid() if pid is None else pid):
        log.info("LISTEN_FDS is meant for process %s, not for us; ignored", for_pid)
        return []
    try:
        n = int(fds)
    except ValueError:
        raise ServiceError(f"LISTEN_FDS={fds!r} is not a number") from None
    if n < 1:
        return []
    out = list(range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + n))
    for fd in out:
        try:
            mode = os.fstat(fd).st_mode
        except OSError as exc:
            raise ServiceError(f"socket activation: fd {fd}: {exc.strerror}") from None
        if not stat.S_ISSOCK(mode):
            raise ServiceError(f"socket activation: fd {fd} is not a socket")
    return out


# -- the service user ----------------------------------------------------------------------

@dataclass(frozen=True)
class Account:
    """The user (and group) Outpost runs as after it dropped root."""
    name: str
    uid: int
    gid: int

    @property
    def group_name(self) -> str:
        try:
            return grp.getgrgid(self.gid).gr_name
        except KeyError:
            return str(self.gid)


def resolve_account(user: Optional[str], group: Optional[str]) -> Optional[Account]:
    """``--user``/``--group`` as an :class:`Account` (None: stay as started).
    The group defaults to the user's primary group."""
    if not user and not group:
        return None
    if not user:
        raise ServiceError("--group needs --user")
    try:
        pw = pwd.getpwnam(user) if not user.isdigit() else pwd.getpwuid(int(user))
    except KeyError:
        raise ServiceError(f"user {user!r} does not exist (create it: useradd --system "
                           f"--user-group --home-dir /var/lib/outpost --shell "
                           f"/usr/sbin/nologin {user})") from None
    gid = pw.pw_gid
    if group:
        try:
            gid = grp.getgrnam(group).gr_gid if not group.isdigit() else int(group)
        except KeyError:
            raise ServiceError(f"group {group!r} does not exist") from None
    if pw.pw_uid == 0:
        raise ServiceError(f"--user {user}: that is root; name an unprivileged user")
    if os.geteuid() != 0 and (os.geteuid(), os.getegid()) != (pw.pw_uid, gid):
        raise ServiceError(f"--user {user} needs Outpost to start as root "
                           f"(it runs as uid {os.geteuid()})")
    return Account(pw.pw_name, pw.pw_uid, gid)


def prepare_dirs(account: Account, paths: Iterable[str]) -> None:
    """Create each missing directory in ``paths`` (its parents as root,
    0755) as ``0750`` owned by the service user.  Existing directories are
    left as the operator made them; if the user cannot write there, the
    start check after the drop says so."""
    for path in paths:
        if os.path.isdir(path):
            continue
        parent = os.path.dirname(path.rstrip("/"))
        try:
            os.makedirs(parent, mode=0o755, exist_ok=True)
            os.mkdir(path, 0o750)
            os.chown(path, account.uid, account.gid)
            os.chmod(path, 0o750)                  # whatever the umask
        except FileExistsError:
            continue
        except OSError as exc:
            raise ServiceError(f"cannot create {path} for user {account.name}: {exc}") from None
        log.info("created %s (%s:%s, 0750)", path, account.name, account.group_name)


def code_dirs() -> list[str]:
    """Where this Python's standard library and Outpost's packages are
    (modules are still imported after the drop: call this before it)."""
    import sysconfig

    import Milter

    import outpost
    return [sysconfig.get_paths()["stdlib"], os.path.dirname(os.path.dirname(outpost.__file__)),
            os.path.dirname(os.path.abspath(Milter.__file__))]


def check_readable(account: Account, paths: Iterable[str]) -> None:
    """After the drop: each of ``paths`` (:func:`code_dirs`) must be
    readable, or the next import fails in the middle of serving."""
    for path in paths:
        if not os.access(path, os.R_OK | os.X_OK):
            raise ServiceError(f"user {account.name} cannot read {path}: install Python and "
                               f"Outpost where the service user can read them (e.g. /usr, /opt)")


def drop_privileges(account: Account) -> None:
    """Become ``account`` for good: supplementary groups of the user (as
    systemd's ``User=`` gives), then gid, then uid, each real, effective and
    saved.  Raises :class:`ServiceError` if root could be regained."""
    if (os.getuid(), os.geteuid(), os.getgid(), os.getegid()) == (account.uid,) * 2 + (account.gid,) * 2:
        return
    try:
        os.initgroups(account.name, account.gid)
        os.setresgid(account.gid, account.gid, account.gid)
        os.setresuid(account.uid, account.uid, account.uid)
    except OSError as exc:
        raise ServiceError(f"cannot become {account.name}: {exc}") from None
    try:
        os.setuid(0)
    except PermissionError:
        pass
    else:
        raise ServiceError("root could be regained after dropping privileges")
    log.info("running as %s:%s (uid %d, gid %d)", account.name, account.group_name,
             account.uid, account.gid)
