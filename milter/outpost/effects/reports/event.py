"""What the policy core hands over when it blocks something."""

from __future__ import annotations

import re
import time
import unicodedata
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Optional

from .settings import check_address

#: Actions a block can take.  ``lock``: the identity (or, with identity '', the user) was locked.
ACTIONS = frozenset({"reject", "tempfail", "quarantine", "discard", "lock"})
_KIND_RE = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
_BLANK_CATEGORIES = frozenset({"Cc", "Cs", "Zl", "Zp"})   # controls, surrogates, separators


def clean(value: object, limit: int = 256) -> str:
    """One-line, bounded, valid-Unicode text for a header field or the text
    part: CR, LF, NUL, other control characters, line/paragraph separators
    and lone surrogates become spaces, runs of blanks collapse, and the
    result is cut at ``limit`` characters (marked with ``...``)."""
    text = str(value)[: limit * 4 + 16]
    text = text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
    text = "".join(" " if unicodedata.category(c) in _BLANK_CATEGORIES else c for c in text)
    text = " ".join(text.split())
    if len(text) > limit:
        text = text[: max(0, limit - 3)] + "..."
    return text


def _evidence_text(item: object) -> str:
    # Accept outpost.spam.base.Evidence (name, points, detail) or plain text.
    name = getattr(item, "name", None)
    if name is not None and hasattr(item, "points"):
        detail = getattr(item, "detail", "") or ""
        text = f"{name} ({float(item.points):+.2f})"
        return f"{text}: {detail}" if detail else text
    return str(item)


@dataclass(frozen=True)
class BlockEvent:
    """One block the policy core wants reported.

    ``kind`` is the block reason (``spam``, ``lock``, ``limit``, any other
    short token plugs in); ``action`` what was done (``reject``,
    ``tempfail``, ``quarantine``, ``discard``, ``lock``).  ``identity`` may be
    '' when the user has no identities.  ``arrival_time`` and ``lock_until``
    are Unix times; a ``lock`` event with ``lock_until=None`` is a permanent
    lock.  ``original`` is the message as received (headers only is fine);
    it is trimmed when spooled.  ``remedy`` is the exact command the
    operator runs (``outpost unlock webfarm/alice``).  ``report_to``
    overrides the configured report recipient (per-user abuse contact; a
    configured value, never one taken from the message).
    ``evidence`` accepts strings or ``outpost.spam.base.Evidence`` objects.
    """

    kind: str
    action: str
    user: str
    identity: str = ""
    arrival_time: float = field(default_factory=time.time)
    login: Optional[str] = None
    client_ip: Optional[str] = None
    sender: str = ""
    recipients: tuple[str, ...] = ()
    queue_id: Optional[str] = None
    outpost_id: Optional[str] = None
    verdict_class: Optional[str] = None
    verdict_score: Optional[float] = None
    evidence: tuple[str, ...] = ()
    reason: str = ""
    lock_until: Optional[float] = None
    reported_domain: str = ""
    original: Optional[bytes] = None
    remedy: str = ""
    report_to: Optional[str] = None

    def __post_init__(self) -> None:
        if not isinstance(self.kind, str) or not _KIND_RE.match(self.kind):
            raise ValueError(f"BlockEvent.kind: {self.kind!r} is not a short lower-case token")
        if self.action not in ACTIONS:
            raise ValueError(f"BlockEvent.action: {self.action!r} not one of {sorted(ACTIONS)}")
        if not self.user:
            raise ValueError("BlockEvent.user is required")
        if self.original is not None and not isinstance(self.original, (bytes, bytearray)):
            raise ValueError("BlockEvent.original must be bytes or None")
        if self.original is not None:
            object.__setattr__(self, "original", bytes(self.original))
        object.__setattr__(self, "recipients", tuple(str(r) for r in self.recipients))
        object.__setattr__(self, "evidence", tuple(_evidence_text(e) for e in self.evidence))
        object.__setattr__(self, "arrival_time", float(self.arrival_time))
        if self.verdict_score is not None:
            object.__setattr__(self, "verdict_score", float(self.verdict_score))
        if self.lock_until is not None:
            object.__setattr__(self, "lock_until", float(self.lock_until))
        if self.report_to is not None:
            check_address(self.report_to, "BlockEvent.report_to")
        if not self.reported_domain and "@" in self.sender:
            domain = self.sender.rsplit("@", 1)[1].strip("<> ").lower()
            object.__setattr__(self, "reported_domain", domain)

    @property
    def key(self) -> str:
        """``user/identity`` (or ``user``): what reports are counted per."""
        return f"{self.user}/{self.identity}" if self.identity else self.user

    def to_json(self) -> dict[str, Any]:
        """Everything but ``original``, JSON-serialisable."""
        data = asdict(self)
        data.pop("original")
        data["recipients"] = list(self.recipients)
        data["evidence"] = list(self.evidence)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any], original: Optional[bytes] = None) -> "BlockEvent":
        """Inverse of :meth:`to_json`; unknown keys are ignored so that
        spool files written by a newer version still load."""
        names = {f.name for f in fields(cls)} - {"original"}
        kwargs = {k: v for k, v in data.items() if k in names}
        kwargs["recipients"] = tuple(kwargs.get("recipients", ()))
        kwargs["evidence"] = tuple(kwargs.get("evidence", ()))
        return cls(original=original, **kwargs)

