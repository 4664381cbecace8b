"""The service user the production units name, and an interpreter it can
run Outpost with, for tests that run Outpost as that user."""

from __future__ import annotations

import os
import pwd
import subprocess
import sys
import sysconfig
from pathlib import Path


def ensure_user(name: str = "outpost") -> pwd.struct_passwd:
    """The system user (created once with ``useradd --system`` and left in
    place: test machines are throw-away)."""
    try:
        return pwd.getpwnam(name)
    except KeyError:
        subprocess.run(["useradd", "--system", "--user-group", "--home-dir", "/var/lib/outpost",
                        "--no-create-home", "--shell", "/usr/sbin/nologin", name], check=True)
        return pwd.getpwnam(name)


def _world_readable(path: str) -> bool:
    """Every directory up to ``path`` searchable, and ``path`` readable, by others."""
    p = Path(path)
    return all(q.stat().st_mode & 0o001 for q in p.parents) and bool(p.stat().st_mode & 0o004)


def service_python() -> tuple[str, list[str]] | None:
    """An interpreter whose standard library any user can read, and the
    extra ``sys.path`` entries (this virtualenv's packages) it needs; None if
    there is none.  Outpost imports modules after it dropped root; a test
    interpreter under /root (pyenv) is unreadable then, Debian's
    /usr/bin/python3.X of the same version is not (in production the
    interpreter lives in /usr or /opt)."""
    paths = sysconfig.get_paths()
    if _world_readable(paths["stdlib"]):
        return sys.executable, []
    system = f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}"
    if not os.path.exists(system) or not _world_readable(system):
        return None
    return system, sorted({paths["purelib"], paths["platlib"]})
