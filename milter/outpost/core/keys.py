"""The store key scheme (the one place it is spelled), as typed values.

A :class:`Target` is what a lock, a count or a limit is about: one identity
of a user (``user/identity``), or the user as a whole (identity '').  User
names hold no ``/`` (the loader refuses them) and an identity is never
empty, so the keys of a user as a whole are keys no identity can have:

- ``user:NAME`` — the lock of user NAME as a whole (every identity);
  ``NAME/IDENTITY`` — the lock of one identity;
- ``spam:NAME/IDENTITY``, ``hits:NAME/IDENTITY``,
  ``complaints:NAME/IDENTITY`` — spam verdicts, rate-limit refusals and
  receivers' complaints (``outpost feedback``) of one identity;
- ``uspam:NAME/``, ``uhits:NAME/``, ``ucomplaints:NAME/`` — the same summed over all of the user's
  identities (the trailing ``/`` ends the name, so a prefix reset of
  ``uspam:web/`` never touches ``uspam:webfarm/``);
- ``rl:id:NAME/IDENTITY:WHAT:SECONDS``, ``rl:user:NAME:WHAT:SECONDS`` — a
  rate-limit window (:class:`WindowKey`; WHAT is ``msg`` or ``rcpt``);
- ``NAME/IDENTITY`` is also the key of an identity's volume record
  (``Store.volume_add``), which ``Store.reset`` names ``vol:NAME/IDENTITY``
  (:data:`VOLUME_PREFIX`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..store.volume import VOLUME_PREFIX  # what Store.reset prefixes to a volume record's key

#: What a rate-limit window counts.
Counted = Literal["msg", "rcpt"]
#: What an abuse event is (a spam verdict, a rate-limit refusal, or a
#: receiver's complaint about a message: ``outpost feedback``).
EventKind = Literal["spam", "limit", "complaint"]

USER_LOCK_PREFIX = "user:"
_EVENT: dict[str, str] = {"spam": "spam", "limit": "hits", "complaint": "complaints"}


@dataclass(frozen=True)
class Target:
    """One identity of a user, or (``identity`` '') the user as a whole."""

    user: str
    identity: str = ""

    @property
    def whole_user(self) -> bool:
        return not self.identity

    def __str__(self) -> str:
        """How an operator names it: ``NAME/IDENTITY`` or ``NAME``."""
        return f"{self.user}/{self.identity}" if self.identity else self.user

    @property
    def lock_key(self) -> str:
        return identity_key(self.user, self.identity) if self.identity else user_lock_key(self.user)

    def event_key(self, kind: EventKind) -> str:
        """Key of this target's ``kind`` events."""
        if self.identity:
            return event_key(kind, self.user, self.identity)
        return user_event_key(kind, self.user)

    @property
    def event_keys(self) -> tuple[str, str, str]:
        """The keys of every kind of event (what an unlock clears)."""
        return self.event_key("limit"), self.event_key("spam"), self.event_key("complaint")

    @property
    def volume_reset(self) -> str:
        """What ``Store.reset`` is given to forget this identity's volume
        record ('' for a user as a whole: it has none)."""
        return f"{VOLUME_PREFIX}{identity_key(self.user, self.identity)}" if self.identity else ""

    @property
    def window_prefix(self) -> str:
        """The prefix of all this target's rate-limit windows (a reset)."""
        if self.identity:
            return f"rl:id:{identity_key(self.user, self.identity)}:"
        return f"rl:user:{self.user}:"

    @classmethod
    def of_lock_key(cls, key: str) -> "Target":
        """The target a lock key names (``user:NAME`` or ``NAME/IDENTITY``)."""
        user = lock_user(key)
        if user:
            return cls(user)
        name, _, identity = key.partition("/")
        return cls(name, identity)


@dataclass(frozen=True)
class WindowKey:
    """One rate-limit window of a target: ``counted`` (messages or
    recipients) over ``seconds``."""

    target: Target
    counted: Counted
    seconds: int

    def __str__(self) -> str:
        return f"{self.target.window_prefix}{self.counted}:{self.seconds}"


def identity_key(user: str, identity: str) -> str:
    return f"{user}/{identity}"


def user_lock_key(user: str) -> str:
    return f"{USER_LOCK_PREFIX}{user}"


def lock_user(key: str) -> str:
    """The user name of a ``user:NAME`` lock key, or '' for an identity key."""
    if key.startswith(USER_LOCK_PREFIX) and "/" not in key:
        return key[len(USER_LOCK_PREFIX):]
    return ""


def event_key(kind: EventKind, user: str, identity: str) -> str:
    """Key of one identity's ``kind`` events (``spam`` or ``limit``)."""
    return f"{_EVENT[kind]}:{identity_key(user, identity)}"


def user_event_key(kind: EventKind, user: str) -> str:
    """Key of the ``kind`` events of all of the user's identities."""
    return f"u{_EVENT[kind]}:{user}/"


def complaint_claim_key(digest: str) -> str:
    """The store's claim of one reported message (``outpost feedback``):
    ``fbclaim:DIGEST``, a window of limit 1, so a message is counted once."""
    return f"fbclaim:{digest}"
