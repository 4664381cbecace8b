"""The state commands: operator views and actions on the locks and rate-limit
windows in the shared store (``outpost locks``, ``lock``, ``unlock``,
``reset``, ``usage``, ``top``).  Each function returns text (and an exit
code) or JSON-ready data, so the CLI stays a thin wrapper and tests can call
them.  Keys come from the typed scheme (:mod:`outpost.core.keys`), windows
from the configuration (:mod:`outpost.core.limits`)."""

from __future__ import annotations

import time
from typing import Any, Optional

from .config import Config
from .config.model import User
from .core.keys import Target
from .core.limits import LimitWindow
from .core.limits import windows as limit_windows
from .store.base import BucketState, Store


class TargetError(ValueError):
    """An operator mistake (unknown user, malformed identity)."""


def _span(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            rest = seconds % size
            sub = {"d": ("h", 3600), "h": ("m", 60), "m": ("s", 1)}[unit]
            return f"{seconds // size}{unit}" + (f"{rest // sub[1]}{sub[0]}" if rest // sub[1] else "")
    return f"{seconds}s"


def _when(epoch: Optional[float]) -> str:
    if epoch is None:
        return "until unlocked by an operator"
    return time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(epoch))


def _user(config: Config, name: str) -> User:
    for user in config.users:
        if user.name == name:
            return user
    raise TargetError(f"no user '{name}' in the configuration")


def identity_target(config: Config, text: str) -> Target:
    """``USER/IDENTITY`` → its target; the user must exist."""
    user, sep, ident = text.partition("/")
    if not sep or not ident:
        raise TargetError(f"'{text}' is not USER/IDENTITY (e.g. webfarm/alice@example.com)")
    return Target(_user(config, user).name, ident.lower())


def target(config: Config, text: str) -> Target:
    """``USER/IDENTITY`` → one identity; ``USER`` → the user as a whole
    (its lock key is ``user:USER``)."""
    if "/" in text:
        return identity_target(config, text)
    return Target(_user(config, text).name)


def locks_data(store: Store) -> list[dict[str, Any]]:
    """The locks in force, JSON-ready (``outpost locks --json``)."""
    now = store.now()
    out = []
    for lk in sorted(store.list_locks(), key=lambda lock: lock.since):
        locked = Target.of_lock_key(lk.key)
        out.append({"key": lk.key, "user": locked.user,
                    "identity": None if locked.whole_user else locked.identity,
                    "by": lk.by, "reason": lk.reason, "since": lk.since, "until": lk.until,
                    "expires_in": None if lk.until is None else max(0.0, lk.until - now),
                    "auto_unlocks": lk.auto_unlocks})
    return out


def list_locks(store: Store) -> str:
    """Locked identities (``USER/IDENTITY``) and users locked as a whole
    (``user:USER``)."""
    locks = locks_data(store)
    if not locks:
        return "no identity is locked"
    lines = [f"{'identity (user:NAME = every identity)':40} {'by':9} {'since':24} {'until':30} reason"]
    for lock in locks:
        until = _when(lock["until"]) + (f" (in {_span(lock['expires_in'])})" if lock["until"] else "")
        lines.append(f"{lock['key']:40} {lock['by']:9} {_when(lock['since']):24} {until:30} {lock['reason']}"
                     + (f"  [auto-unlocks so far: {lock['auto_unlocks']}]" if lock["auto_unlocks"] else ""))
    return "\n".join(lines)


def lock(config: Config, store: Store, identity: str, duration: Optional[float], reason: str) -> str:
    """Lock ``USER/IDENTITY``, or with ``USER`` the user as a whole."""
    got = store.set_lock(target(config, identity).lock_key, reason, duration, by="operator")
    return f"locked {got.key} {('until ' + _when(got.until)) if got.until else 'until unlocked'}"


def unlock(config: Config, store: Store, identity: str) -> tuple[str, int]:
    """Unlock ``USER/IDENTITY`` (and clear its hit history), or with
    ``USER`` the user's own lock (and the user's summed history; locks of
    single identities stay)."""
    which = target(config, identity)
    key = which.lock_key
    if store.remove_lock(key):
        for events in which.event_keys:
            store.reset(events)
        return f"unlocked {key}", 0
    return f"{key} was not locked", 1


def reset(config: Config, store: Store, text: str) -> str:
    """Clear the rate-limit windows and event counts of an identity or of a
    user as a whole (and an identity's volume record: its baseline starts again)."""
    which = target(config, text)
    n = store.reset(which.window_prefix) + sum(store.reset(k) for k in which.event_keys)
    if which.volume_reset:
        n += store.reset(which.volume_reset)
    return f"reset {n} counters of {'user' if which.whole_user else 'identity'} {which}"


def _windows(config: Config, which: Target) -> list[LimitWindow]:
    return limit_windows(_user(config, which.user), which)


def usage_data(config: Config, store: Store, text: Optional[str]) -> list[dict[str, Any]]:
    """Each limit window of a user or identity, JSON-ready (``outpost usage --json``)."""
    if text and "/" in text:
        which = [identity_target(config, text)]
    elif text:
        which = [Target(_user(config, text).name)]
    else:
        which = [Target(u.name) for u in config.users]
    out = []
    for t in which:
        ws = _windows(config, t)
        out.append({"kind": "user" if t.whole_user else "identity", "user": t.user,
                    "identity": None if t.whole_user else t.identity,
                    "windows": windows(ws, store.peek([w.bucket() for w in ws])) if ws else []})
    return out


def windows(limits: list[LimitWindow], states: list[BucketState]) -> list[dict[str, Any]]:
    """The windows' states (``store.peek`` of their buckets, in order), JSON-ready."""
    return [{"what": w.counts, "label": st.label,
             "window": st.window, "used": st.used, "limit": st.limit,
             "resets_in": st.resets_in if st.used else 0.0} for w, st in zip(limits, states)]


def usage(config: Config, store: Store, text: Optional[str]) -> str:
    """Each window as ``used/limit, resets in …``."""
    out = []
    for block in usage_data(config, store, text):
        out.append(f"identity {block['user']}/{block['identity']}" if block["kind"] == "identity"
                   else f"user {block['user']}")
        if not block["windows"]:
            out.append("  no limits")
            continue
        for w in block["windows"]:
            resets = f"resets in {_span(w['resets_in'])}" if w["used"] else "idle"
            out.append(f"  {w['what']:10} {w['label']:>9}  {w['used']}/{w['limit']}, {resets}")
    return "\n".join(out)


def top_data(config: Config, store: Store, limit: int = 20) -> list[dict[str, Any]]:
    """Identities (active in the last hour, from the message statistics) and
    users nearest their limits: each one's fullest window as ``used/limit``,
    highest first (``outpost top``)."""
    from .stats import recent_identities
    recent = recent_identities(store.stat_read("m", 60))
    rows = []
    by_name = {u.name: u for u in config.users}
    targets: list[tuple[Target, list[LimitWindow]]] = []
    for key in recent:
        user_name, _, ident = key.partition("/")
        user = by_name.get(user_name)
        if user is None or not ident:
            continue                      # a user no longer configured
        t = Target(user_name, ident)
        targets.append((t, limit_windows(user, t)))
    for user in config.users:
        t = Target(user.name)
        targets.append((t, limit_windows(user, t)))
    flat = [w.bucket() for _, ws in targets for w in ws]
    states = iter([st for i in range(0, len(flat), 500) for st in store.peek(flat[i:i + 500])])
    for t, lws in targets:
        ws = windows(lws, [next(states) for _ in lws])
        if not ws:
            continue
        nearest = max(ws, key=lambda w: w["used"] / w["limit"])
        if not nearest["used"]:
            continue
        rows.append({"kind": "user" if t.whole_user else "identity", "user": t.user,
                     "identity": None if t.whole_user else t.identity,
                     "messages_last_hour": recent.get(str(t), 0) if not t.whole_user else None,
                     "fill": round(nearest["used"] / nearest["limit"], 4), "nearest": nearest,
                     "windows": ws})
    rows.sort(key=lambda r: (-r["fill"], r["user"], r["identity"] or ""))
    return rows[:limit]


def top(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "no identity or user has used any of its limits"
    lines = [f"{'identity or user':44} {'fill':>6}  nearest limit"]
    for r in rows:
        n = r["nearest"]
        name = f"{r['user']}/{r['identity']}" if r["kind"] == "identity" else f"user {r['user']}"
        lines.append(f"{name:44} {r['fill'] * 100:5.0f}%  {n['what']} {n['label']} "
                     f"{n['used']}/{n['limit']}, resets in {_span(n['resets_in'])}")
    return "\n".join(lines)
