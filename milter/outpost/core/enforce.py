"""How a check's refusal becomes the answer: the mode (monitor or enforce),
the store-error policy, the shared replies, and running a sequence of
checks until one blocks."""

from __future__ import annotations

import logging
from typing import Callable, Iterable, Optional, TypeVar

from ..config.model import Config, User
from ..store.base import StoreError
from .types import CONTINUE, Action, Decision, Message, Reply, Session

log = logging.getLogger("outpost.policy")

T = TypeVar("T")

TOO_MANY_CONNECTIONS = Reply(
    "421", "4.7.0", "Too many concurrent SMTP connections from this IP address; please try again later")
#: The store failed and ``on_store_error`` is ``tempfail``.
STORE_DOWN = Reply("451", "4.3.0", "Temporary local problem; please try again later")
#: DKIM signing failed: the message is never relayed unsigned (same words
#: as any local problem: the client can do nothing about it but retry).
SIGNING_FAILED = Reply("451", "4.3.0", "Temporary local problem; please try again later")

#: A check of one stage on (session, message, user): the blocking decision,
#: or None (or a decision that does not block, e.g. CONTINUE in monitor
#: mode) to go on.
Check = Callable[[Session, Message, User], Optional[Decision]]


class StoreUnavailable(Exception):
    """The store failed and the policy says tempfail."""


def store_down() -> Decision:
    return Decision(Action.TEMPFAIL, STORE_DOWN, "store_error")


def first_block(checks: Iterable[Check], session: Session, msg: Message, user: User) -> Optional[Decision]:
    """Run ``checks`` in order; the first decision that blocks, or None."""
    for check in checks:
        d = check(session, msg, user)
        if d is not None and d.blocks:
            return d
    return None


class Enforcer:
    """The mode and the store-error policy of one configuration."""

    def __init__(self, config: Config) -> None:
        self.config = config

    def mode(self, user: Optional[User]) -> str:
        return user.policy.mode if user is not None else self.config.defaults.mode

    def monitoring(self, user: Optional[User]) -> bool:
        return self.mode(user) == "monitor"

    def block(self, msg: Optional[Message], user: Optional[User], decision: Decision) -> Decision:
        """Enforce a blocking decision, or in monitor mode note it and go on."""
        if self.monitoring(user):
            if msg is not None:
                msg.would.append(f"{decision.action.value} ({decision.reason}: {decision.reply})")
            log.info("monitor: would %s (%s)", decision.action.value, decision.reason)
            return CONTINUE
        return decision

    def store_call(self, fn: Callable[..., T], *args: object, **kwargs: object) -> Optional[T]:
        """``fn(*args, **kwargs)`` on the store; on a store error None
        (``on_store_error: accept``) or :class:`StoreUnavailable`."""
        try:
            return fn(*args, **kwargs)
        except StoreError as exc:
            log.error("store error (%s): %s", self.config.on_store_error, exc)
            if self.config.on_store_error == "accept":
                return None
            raise StoreUnavailable(str(exc)) from exc
