"""Operator views and actions on the shared state (``outpost locks``,
``lock``, ``unlock``, ``usage``, ``reset``).  Each function returns text (and
an exit code) so the CLI stays a thin wrapper and tests can call them."""

from __future__ import annotations

import time
from typing import Optional

from .config import Config
from .core import keys
from .core.types import Message
from .core.policy import Policy
from .store.base import Store


class OpsError(ValueError):
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


def split_identity(config: Config, text: str) -> tuple[str, str]:
    """``user/identity`` → (user, identity); the user must exist."""
    user, sep, ident = text.partition("/")
    names = {u.name for u in config.users}
    if not sep or not ident:
        raise OpsError(f"'{text}' is not USER/IDENTITY (e.g. webfarm/alice@example.com)")
    if user not in names:
        raise OpsError(f"no user '{user}' in the configuration")
    return user, ident.lower()


def split_target(config: Config, text: str) -> tuple[str, str]:
    """``USER/IDENTITY`` → (user, identity); ``USER`` → (user, '') for the
    user as a whole (its lock key is ``user:USER``)."""
    if "/" in text:
        return split_identity(config, text)
    if text not in {u.name for u in config.users}:
        raise OpsError(f"no user '{text}' in the configuration")
    return text, ""


def locks_data(store: Store) -> list[dict]:
    """The locks in force, JSON-ready (``outpost locks --json``)."""
    now = store.now()
    out = []
    for lk in sorted(store.list_locks(), key=lambda l: l.since):
        user = keys.lock_user(lk.key)
        out.append({"key": lk.key, "user": user or lk.key.partition("/")[0],
                    "identity": None if user else lk.key.partition("/")[2],
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
    user, ident = split_target(config, identity)
    key = keys.identity_key(user, ident) if ident else keys.user_lock_key(user)
    got = store.set_lock(key, reason, duration, by="operator")
    return f"locked {got.key} {('until ' + _when(got.until)) if got.until else 'until unlocked'}"


def unlock(config: Config, store: Store, identity: str) -> tuple[str, int]:
    """Unlock ``USER/IDENTITY`` (and clear its hit history), or with
    ``USER`` the user's own lock (and the user's summed history; locks of
    single identities stay)."""
    user, ident = split_target(config, identity)
    if not ident:
        key = keys.user_lock_key(user)
        if store.remove_lock(key):
            store.reset(keys.user_event_key("limit", user))
            store.reset(keys.user_event_key("spam", user))
            return f"unlocked {key}", 0
        return f"{key} was not locked", 1
    key = f"{user}/{ident}"
    if store.remove_lock(key):
        store.reset(f"hits:{key}")
        store.reset(f"spam:{key}")
        return f"unlocked {key}", 0
    return f"{key} was not locked", 1


def reset(config: Config, store: Store, target: str) -> str:
    if "/" in target:
        user, ident = split_identity(config, target)
        key = f"{user}/{ident}"
        n = store.reset(f"rl:id:{key}:") + store.reset(f"hits:{key}") + store.reset(f"spam:{key}")
        return f"reset {n} counters of identity {key}"
    if target not in {u.name for u in config.users}:
        raise OpsError(f"no user '{target}' in the configuration")
    n = store.reset(f"rl:user:{target}:")
    n += store.reset(keys.user_event_key("limit", target)) + store.reset(keys.user_event_key("spam", target))
    return f"reset {n} counters of user {target}"


def usage_data(config: Config, store: Store, policy: Policy, target: Optional[str]) -> list[dict]:
    """Each limit window of a user or identity, JSON-ready (``outpost usage --json``)."""
    if target and "/" in target:
        user_name, ident = split_identity(config, target)
        user = policy.index.by_name[user_name]
        msg = Message(user_name=user_name, identity=ident)
        buckets = [b for b in policy.buckets(msg, user, 1) if b.key.startswith("rl:id:")]
        blocks = [("identity", user_name, ident, buckets)]
    else:
        users = config.users
        if target:
            if target not in policy.index.by_name:
                raise OpsError(f"no user '{target}' in the configuration")
            users = tuple(u for u in users if u.name == target)
        blocks = []
        for user in users:
            msg = Message(user_name=user.name, identity="-")
            blocks.append(("user", user.name, None,
                           [b for b in policy.buckets(msg, user, 1) if b.key.startswith("rl:user:")]))
    return [{"kind": kind, "user": user, "identity": ident,
             "windows": windows(store.peek(buckets)) if buckets else []}
            for kind, user, ident, buckets in blocks]


def windows(states) -> list[dict]:
    return [{"what": "recipients" if ":rcpt:" in st.key else "messages", "label": st.label,
             "window": st.window, "used": st.used, "limit": st.limit,
             "resets_in": st.resets_in if st.used else 0.0} for st in states]


def usage(config: Config, store: Store, policy: Policy, target: Optional[str]) -> str:
    """Each window as ``used/limit, resets in …``."""
    out = []
    for block in usage_data(config, store, policy, target):
        out.append(f"identity {block['user']}/{block['identity']}" if block["kind"] == "identity"
                   else f"user {block['user']}")
        if not block["windows"]:
            out.append("  no limits")
            continue
        for w in block["windows"]:
            resets = f"resets in {_span(w['resets_in'])}" if w["used"] else "idle"
            out.append(f"  {w['what']:10} {w['label']:>9}  {w['used']}/{w['limit']}, {resets}")
    return "\n".join(out)


def top_data(config: Config, store: Store, policy: Policy, limit: int = 20) -> list[dict]:
    """Identities (active in the last hour, from the message statistics) and
    users nearest their limits: each one's fullest window as ``used/limit``,
    highest first (``outpost top``)."""
    from .stats import recent_identities
    recent = recent_identities(store.stat_read("m", 60))
    rows = []
    by_name = policy.index.by_name
    targets: list[tuple[str, str, Optional[str], list]] = []
    for key, messages in recent.items():
        user_name, _, ident = key.partition("/")
        user = by_name.get(user_name)
        if user is None or not ident:
            continue                      # a user no longer configured
        msg = Message(user_name=user_name, identity=ident)
        targets.append(("identity", user_name, ident,
                        [b for b in policy.buckets(msg, user, 1) if b.key.startswith("rl:id:")]))
    for user in config.users:
        msg = Message(user_name=user.name, identity="-")
        targets.append(("user", user.name, None,
                        [b for b in policy.buckets(msg, user, 1) if b.key.startswith("rl:user:")]))
    flat = [b for *_, buckets in targets for b in buckets]
    states = iter([st for i in range(0, len(flat), 500) for st in store.peek(flat[i:i + 500])])
    for kind, user_name, ident, buckets in targets:
        ws = windows([next(states) for _ in buckets])
        if not ws:
            continue
        nearest = max(ws, key=lambda w: w["used"] / w["limit"])
        if not nearest["used"]:
            continue
        rows.append({"kind": kind, "user": user_name, "identity": ident,
                     "messages_last_hour": recent.get(f"{user_name}/{ident}", 0) if ident else None,
                     "fill": round(nearest["used"] / nearest["limit"], 4), "nearest": nearest,
                     "windows": ws})
    rows.sort(key=lambda r: (-r["fill"], r["user"], r["identity"] or ""))
    return rows[:limit]


def top(rows: list[dict]) -> str:
    if not rows:
        return "no identity or user has used any of its limits"
    lines = [f"{'identity or user':44} {'fill':>6}  nearest limit"]
    for r in rows:
        n = r["nearest"]
        name = f"{r['user']}/{r['identity']}" if r["kind"] == "identity" else f"user {r['user']}"
        lines.append(f"{name:44} {r['fill'] * 100:5.0f}%  {n['what']} {n['label']} "
                     f"{n['used']}/{n['limit']}, resets in {_span(n['resets_in'])}")
    return "\n".join(lines)
