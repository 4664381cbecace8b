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


def list_locks(store: Store) -> str:
    """Locked identities (``USER/IDENTITY``) and users locked as a whole
    (``user:USER``)."""
    locks = store.list_locks()
    if not locks:
        return "no identity is locked"
    now = store.now()
    lines = [f"{'identity (user:NAME = every identity)':40} {'by':9} {'since':24} {'until':30} reason"]
    for lock in sorted(locks, key=lambda l: l.since):
        until = _when(lock.until) + (f" (in {_span(lock.until - now)})" if lock.until else "")
        lines.append(f"{lock.key:40} {lock.by:9} {_when(lock.since):24} {until:30} {lock.reason}"
                     + (f"  [auto-unlocks so far: {lock.auto_unlocks}]" if lock.auto_unlocks else ""))
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


def usage(config: Config, store: Store, policy: Policy, target: Optional[str]) -> str:
    """Each window as ``used/limit, resets in …``."""
    if target and "/" in target:
        user_name, ident = split_identity(config, target)
        user = policy.index.by_name[user_name]
        msg = Message(user_name=user_name, identity=ident)
        buckets = [b for b in policy.buckets(msg, user, 1) if b.key.startswith("rl:id:")]
        title = f"identity {user_name}/{ident}"
        blocks = [(title, buckets)]
    else:
        users = config.users
        if target:
            if target not in policy.index.by_name:
                raise OpsError(f"no user '{target}' in the configuration")
            users = tuple(u for u in users if u.name == target)
        blocks = []
        for user in users:
            msg = Message(user_name=user.name, identity="-")
            blocks.append((f"user {user.name}",
                           [b for b in policy.buckets(msg, user, 1) if b.key.startswith("rl:user:")]))
    out = []
    for title, buckets in blocks:
        out.append(title)
        if not buckets:
            out.append("  no limits")
            continue
        for state in store.peek(buckets):
            kind = "recipients" if ":rcpt:" in state.key else "messages"
            resets = f"resets in {_span(state.resets_in)}" if state.used else "idle"
            out.append(f"  {kind:10} {state.label:>9}  {state.used}/{state.limit}, {resets}")
    return "\n".join(out)
