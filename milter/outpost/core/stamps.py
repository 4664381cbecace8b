"""The header edits of an accepted message: forged copies of our headers and
identity headers marked ``remove`` taken out, our stamps, the verdict
headers and the monitor-mode ``X-Outpost-Would`` added.

Header occurrences are counted the one way MTAs count them (per name, case
insensitively, 1-based, in message order): :func:`occurrences`, used here
for removals and by DKIM signing for its ``h=`` list."""

from __future__ import annotations

from typing import TYPE_CHECKING, AnyStr, Iterable, Iterator, Optional, Sequence

from ..config.model import User
from . import headers as hdr
from .addresses import header_from_address, split_address
from .types import Message, Session

if TYPE_CHECKING:
    from ..spam.engine import Verdict

Fields = tuple[tuple[str, str], ...]
Removals = tuple[tuple[str, int], ...]


def occurrences(names: Iterable[AnyStr]) -> Iterator[tuple[AnyStr, int]]:
    """(lower-cased name, its occurrence number) for each header name in
    order: the n-th field of a name (any case) is occurrence n."""
    seen: dict[AnyStr, int] = {}
    for name in names:
        low = name.lower()
        n = seen[low] = seen.get(low, 0) + 1
        yield low, n


def removals(msg: Optional[Message], user: Optional[User]) -> Removals:
    """Forged copies of our headers, and identity headers marked remove, as
    (name, occurrence), last first so earlier indexes stay valid."""
    if msg is None:
        return ()
    drop = {h.header.lower() for h in (user.identity_headers if user else ()) if h.remove}
    out = []
    seen: dict[str, int] = {}               # occurrences(), written out: one loop per message
    for name, _ in msg.headers:
        low = name.lower()
        n = seen[low] = seen.get(low, 0) + 1
        if low in drop or hdr.is_owned(name):
            out.append((name, n))
    out.reverse()
    return tuple(out)


def kept(headers: Sequence[tuple[str, str]], removed: Removals) -> list[tuple[str, str]]:
    """``headers`` without the ``removed`` occurrences (what the MTA sends)."""
    gone: dict[str, set[int]] = {}
    for name, idx in removed:
        gone.setdefault(name.lower(), set()).add(idx)
    return [field for field, (low, n) in zip(headers, occurrences(n for n, _ in headers))
            if n not in gone.get(low, ())]


def would_header(msg: Optional[Message]) -> Fields:
    """``X-Outpost-Would``: what monitor mode let through."""
    if msg is None or not msg.would:
        return ()
    return (("X-Outpost-Would", hdr.safe_value("; ".join(msg.would))),)


def from_domain(msg: Message) -> str:
    """The header From domain ('' when there is none), parsed once."""
    if msg.from_domain is None:
        addr, _ = header_from_address([v for n, v in msg.headers if n.lower() == "from"])
        msg.from_domain = split_address(addr or "")[1]
    return msg.from_domain


def stamped(session: Session, msg: Message, user: User, token: str, report_abuse_to: str) -> Fields:
    """The headers every accepted message carries (``headers.STAMPED``)."""
    domain = msg.sender_domain or from_domain(msg)
    return (
        ("X-Outpost-User", hdr.safe_value(user.name)),
        ("X-Outpost-Domain", hdr.safe_value(domain or "")),
        ("X-Originating-IP", hdr.safe_value(f"[{session.client_ip}]" if session.client_ip else "unknown")),
        ("X-Outpost-ID", token),
        ("X-Report-Abuse-To", hdr.safe_value(user.policy.abuse_contact or report_abuse_to)),
    )


def verdict_headers(msg: Message, verdict: "Verdict", max_evidence_len: int, max_scan: int) -> Fields:
    """``X-Outpost-Class``, ``-Score``, ``-Evidence`` and, for a message
    scanned in part, ``X-Outpost-Scan``."""
    from ..spam.engine import evidence_header
    out = [("X-Outpost-Class", msg.spam_class or verdict.cls),
           ("X-Outpost-Score", f"{verdict.score:.1f}")]
    evidence = evidence_header(verdict, max_evidence_len, ellipsis="...")
    if evidence:
        out.append(("X-Outpost-Evidence", hdr.safe_value(evidence)))
    if verdict.partial:
        out.append(("X-Outpost-Scan", f"partial (first {max_scan} of "
                                      f"{msg.body_size} body bytes scanned)"))
    return tuple(out)
