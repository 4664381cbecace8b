"""Store keys of locks and abuse events (the one place they are spelled).

An identity is ``user/identity``: user names hold no ``/`` (the loader
refuses them) and an identity is never empty.  A lock or count of the whole
user therefore uses keys no identity can have:

- ``user:NAME`` — the lock of user NAME as a whole (every identity);
- ``spam:user/identity``, ``hits:user/identity`` — spam verdicts and
  rate-limit refusals of one identity;
- ``uspam:NAME/``, ``uhits:NAME/`` — the same summed over all of the user's
  identities (the trailing ``/`` ends the name, so a prefix reset of
  ``uspam:web/`` never touches ``uspam:webfarm/``).
"""

from __future__ import annotations

USER_LOCK_PREFIX = "user:"


def identity_key(user: str, identity: str) -> str:
    return f"{user}/{identity}"


def user_lock_key(user: str) -> str:
    return f"{USER_LOCK_PREFIX}{user}"


def lock_user(key: str) -> str:
    """The user name of a ``user:NAME`` lock key, or '' for an identity key."""
    if key.startswith(USER_LOCK_PREFIX) and "/" not in key:
        return key[len(USER_LOCK_PREFIX):]
    return ""


def event_key(kind: str, user: str, identity: str) -> str:
    """Key of one identity's ``kind`` events (``spam`` or ``limit``)."""
    return f"{_EVENT[kind]}:{identity_key(user, identity)}"


def user_event_key(kind: str, user: str) -> str:
    """Key of the ``kind`` events of all of the user's identities."""
    return f"u{_EVENT[kind]}:{user}/"


_EVENT = {"spam": "spam", "limit": "hits"}
