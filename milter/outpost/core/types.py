"""Typed inputs and outputs of the policy core (no pymilter here)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Optional

from . import keys
from .headers import clean

if TYPE_CHECKING:
    from ..effects.dkim import BodyHasher
    from ..spam.base import Evidence
    from ..spam.engine import Verdict
    from ..spam.message import TextAfterWindow
    from .limits import WindowsAtOne

#: Longest reply text (RFC 5321 allows 512 octets a reply line).
MAX_REPLY_TEXT = 400


class Action(enum.Enum):
    CONTINUE = "continue"     # go on to the next stage
    ACCEPT = "accept"         # accept the message (at end of message: with edits)
    REJECT = "reject"         # 5xx
    TEMPFAIL = "tempfail"     # 4xx
    DISCARD = "discard"


@dataclass(frozen=True)
class Reply:
    code: str       # "550"
    xcode: str      # "5.7.1"
    text: str

    def __post_init__(self) -> None:
        # Reply text often quotes the client (MAIL FROM, a login, a domain):
        # one line of printable ASCII, bounded, whatever was quoted.
        text = clean(self.text, MAX_REPLY_TEXT)
        if not text.isascii():
            text = text.encode("ascii", "backslashreplace").decode("ascii")
        if text != self.text:
            object.__setattr__(self, "text", text)

    def __str__(self) -> str:
        return f"{self.code} {self.xcode} {self.text}"


@dataclass(frozen=True)
class Decision:
    """What the MTA adapter must do at one stage."""

    action: Action
    reply: Optional[Reply] = None
    reason: str = ""                                        # short tag for logs/metrics
    add_headers: tuple[tuple[str, str], ...] = ()           # appended, in order
    prepend_headers: tuple[tuple[str, str], ...] = ()       # inserted at the top (DKIM-Signature)
    remove_headers: tuple[tuple[str, int], ...] = ()        # (name, 1-based occurrence), apply in order
    quarantine: Optional[str] = None                        # hold the message with this reason

    @property
    def blocks(self) -> bool:
        return self.action in (Action.REJECT, Action.TEMPFAIL, Action.DISCARD)


CONTINUE = Decision(Action.CONTINUE)


def reject(code: str, xcode: str, text: str, reason: str) -> Decision:
    action = Action.TEMPFAIL if code.startswith("4") else Action.REJECT
    return Decision(action, Reply(code, xcode, text), reason)


INTERNAL_ERROR = Reply("451", "4.3.0", "Temporary local problem; please try again later")


@dataclass
class Message:
    """One transaction (MAIL FROM … end of message) as the core sees it."""

    sender: str = ""                     # envelope sender without <>, '' for the null sender
    client_ip: Optional[str] = None
    queue_id: str = ""
    token: str = ""                      # its X-Outpost-ID, once made
    sender_domain: str = ""
    login: Optional[str] = None
    user_name: Optional[str] = None
    mapped_by: str = ""                  # login | domain | ip | local
    identity: str = ""                   # end user inside the user
    recipients: list[str] = field(default_factory=list)
    headers: list[tuple[str, str]] = field(default_factory=list)   # at most max_headers kept
    header_fields: int = 0               # header fields received (kept or not)
    header_bytes: int = 0                # bytes of the header block received
    body_size: int = 0
    body_head: bytearray = field(default_factory=bytearray)   # first bytes of the body, for scanning
    headers_done: bool = False           # end of headers seen (signing domain decided)
    sign_domain: Optional[str] = None    # the domain that signs it, decided at end of headers
    body_hash: Optional["BodyHasher"] = None   # the DKIM body hash, fed as the body streams
    refusal: Optional[Decision] = None   # an answer decided before end of message (header limits)
    text_watch: Optional["TextAfterWindow"] = None  # beyond the scan window: a text part begins?
    unscannable: str = ""                # why the scan could not see the content ('' if it could)
    from_domain: Optional[str] = None                         # header From domain, once parsed
    verdict: Optional["Verdict"] = None                       # the spam engine's verdict
    volume_evidence: tuple["Evidence", ...] = ()              # core/volume.py: added to the verdict
    volume_hold: str = ""                # core/volume.py: held for its volume, and why
    spam_class: Optional[str] = None
    dkim_d: str = ""                     # the DKIM signature made: d= and s= (selectors, comma-separated)
    dkim_s: str = ""
    spf: str = ""                        # the SPF result of the sender's domain for our egress IPs
    spf_header: tuple[tuple[str, str], ...] = ()             # the SPF result header to add
    quarantine: Optional[str] = None     # hold the accepted message with this reason
    would: list[str] = field(default_factory=list)          # monitor mode: what would have happened
    lock_decision: Optional[Decision] = None   # cached lock check (CONTINUE: not locked)
    user_lock_decision: Optional[Decision] = None   # the same for the user as a whole
    early_limit: Optional[Decision] = None     # cached read-only limit check at RCPT
    limit_windows: Optional[tuple[str, "WindowsAtOne"]] = None   # (identity, its windows): core/limits.py
    started: float = 0.0                 # monotonic time of MAIL FROM
    spent: float = 0.0                   # seconds spent inside Outpost for this message

    @property
    def identity_key(self) -> str:
        """``user/identity`` (how operators name it; its lock key)."""
        return keys.identity_key(self.user_name or "", self.identity)


@dataclass
class Session:
    """One SMTP connection."""

    client_ip: Optional[str] = None      # normalised text (IPv4-mapped → IPv4), None if unknown
    local: bool = False                  # Postfix's non-SMTP mail (sendmail(1), pickup): no client
    hostname: str = ""
    helo: str = ""
    conn_slot: Optional[str] = None      # the connection slot held in the store
    conn_key: Optional[str] = None       # what it is counted under (IP, or IPv6 prefix)
    ip_user: Optional[str] = None        # user mapped from the address at connect
    message: Optional[Message] = None
    messages: int = 0
    refusal: Optional[Decision] = None   # answer every MAIL FROM with this (connection limit)
    would: list[str] = field(default_factory=list)   # monitor mode, connection stage
