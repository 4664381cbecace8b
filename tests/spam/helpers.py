"""Helpers for the spam tests: messages are built in the tests."""

from __future__ import annotations

import os
from email.message import EmailMessage
from pathlib import Path
from typing import Optional

from outpost.spam.base import ScanContext
from outpost.spam.message import parse_message

REPO = Path(__file__).resolve().parents[2]


def build(subject: str = "Hello", from_: str = "Alice <alice@example.org>",
          to: str = "bob@example.net", text: Optional[str] = "Hi Bob, see you tomorrow.",
          html: Optional[str] = None, headers: Optional[dict] = None,
          attachments: tuple = (), date: bool = True, msgid: bool = True) -> bytes:
    """A message as bytes; ``attachments`` holds (filename, bytes, maintype/subtype)."""
    m = EmailMessage()
    m["From"] = from_
    m["To"] = to
    m["Subject"] = subject
    if date:
        m["Date"] = "Fri, 27 Nov 2026 10:00:00 +0000"
    if msgid:
        m["Message-ID"] = "<1@example.org>"
    for k, v in (headers or {}).items():
        m[k] = v
    if text is not None:
        m.set_content(text)
    if html is not None:
        if text is not None:
            m.add_alternative(html, subtype="html")
        else:
            m.set_content(html, subtype="html")
    for name, data, ctype in attachments:
        maintype, subtype = ctype.split("/")
        m.add_attachment(data, maintype=maintype, subtype=subtype, filename=name)
    return m.as_bytes()


def view(*args, **kwargs):
    return parse_message(build(*args, **kwargs))


CTX = ScanContext(user="u1", identity="alice@example.org", sender="alice@example.org",
                  recipients=("bob@example.net",))


def find_corpus() -> Optional[Path]:
    cands = []
    if os.environ.get("OUTPOST_CORPUS"):
        cands.append(Path(os.environ["OUTPOST_CORPUS"]))
    for base in (REPO.parent, REPO.parent.parent):
        cands.append(base / "shared" / "corpus" / "sa-2002")
    cands.append(Path("/work/shared/corpus/sa-2002"))
    for c in cands:
        if (c / "spam").is_dir() and (c / "ham").is_dir():
            return c
    return None
