"""Header names Outpost owns, and safe header values."""

from __future__ import annotations

import re

#: Headers Outpost stamps; any copy arriving from the client is a forgery.
PREFIX = "X-Outpost-"
STAMPED = ("X-Outpost-User", "X-Outpost-Domain", "X-Originating-IP", "X-Outpost-ID",
           "X-Report-Abuse-To")
_OWNED_EXACT = frozenset(h.lower() for h in STAMPED)
_PREFIX_LOWER = PREFIX.lower()

#: libmilter refuses header lines of 2048 bytes or more; keep well under.
MAX_VALUE = 1900
_LINE = 78
#: Never in a header, log line or reply: C0 controls but TAB (CR, LF and NUL
#: among them), DEL, C1 controls (U+0080-U+009F, NEL among them), the line and
#: paragraph separators U+2028/2029 and the bidi embeddings, overrides and
#: isolates (they reorder what a reader sees).
CONTROL = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_BLANKS = re.compile(r"[ \t]{2,}")
_FOLDING = re.compile(r"\r?\n(?=[ \t])")


def is_owned(name: str) -> bool:
    """True for a header Outpost stamps (any case): X-Outpost-*, X-Originating-IP,
    X-Report-Abuse-To."""
    lname = name.strip().lower()
    return lname.startswith(_PREFIX_LOWER) or lname in _OWNED_EXACT


def unfold(value: str) -> str:
    """A header value as one logical line (folding removed, ends stripped)."""
    if "\n" in value:
        value = _FOLDING.sub("", value)
    return value.strip()


def clean(value: str, limit: int = MAX_VALUE) -> str:
    """One-line value: CR, LF, NUL and other controls (``CONTROL``) become spaces, runs of
    blanks collapse, the result is cut to ``limit`` characters (ending in
    ``...``, ASCII like the rest of a header)."""
    if (len(value) <= limit and value.isprintable() and "  " not in value
            and value[:1] != " " and value[-1:] != " "):
        return value                    # nothing to clean (the common case)
    value = CONTROL.sub(" ", value)
    value = _BLANKS.sub(" ", value).strip()
    if len(value) > limit:
        value = value[: limit - 3].rstrip() + "..."
    return value


def fold(value: str, width: int = _LINE) -> str:
    """Fold a cleaned value at blanks with LF + TAB (libmilter adds the CR).
    A word longer than the width stays whole (lines remain far below 998)."""
    words = value.split(" ")
    lines: list[str] = []
    cur = ""
    for word in words:
        if cur and len(cur) + 1 + len(word) > width:
            lines.append(cur)
            cur = word
        else:
            cur = f"{cur} {word}" if cur else word
    lines.append(cur)
    return "\n\t".join(lines)


def safe_value(value: str, limit: int = MAX_VALUE) -> str:
    """Clean then fold: what to pass to ``addheader``."""
    return fold(clean(value, limit))
