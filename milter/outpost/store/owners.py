"""Owners of connection slots: a slot id names its process
(``"<host>:<pid>:<n>"``) so that slots of dead processes can be freed."""

from __future__ import annotations

import os


def slot_owner(slot: str) -> tuple[str, int]:
    """``(host, pid)`` of a slot id ``"<host>:<pid>:<n>"``."""
    try:
        host, pid, _n = slot.rsplit(":", 2)
        return host, int(pid)
    except ValueError:
        raise ValueError(f"slot id {slot!r} is not '<host>:<pid>:<n>'") from None


def pid_exists(pid: int) -> bool:
    """Whether a process with that pid exists on this host (a zombie counts
    as existing until its parent reaps it)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
