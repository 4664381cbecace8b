"""Helpers for the spam tests: messages are built in the tests."""

from __future__ import annotations

import os
from email.message import EmailMessage
from pathlib import Path
from typing import Optional

import pytest

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
    """The sa-2002 corpus directory (with ``spam/`` and ``ham/``): the one
    ``$OUTPOST_CORPUS`` names (the sa-2002 directory or its parent) if set,
    else ``shared/corpus/sa-2002`` beside the checkout or beside its parent
    (a worktree under ``wt/``).  None if not there."""
    if os.environ.get("OUTPOST_CORPUS"):
        env = Path(os.environ["OUTPOST_CORPUS"])
        cands = [env, env / "sa-2002"]
    else:
        cands = [base / "shared" / "corpus" / "sa-2002" for base in (REPO.parent, REPO.parent.parent)]
        cands.append(Path("/work/shared/corpus/sa-2002"))
    for c in cands:
        if (c / "spam").is_dir() and (c / "ham").is_dir():
            return c
    return None


def require_corpus() -> Path:
    """The corpus, or skip the test (which fails it in CI: tests/conftest.py)."""
    c = find_corpus()
    if c is None:
        where = os.environ.get("OUTPOST_CORPUS") or "../shared/corpus/sa-2002"
        pytest.skip(f"SpamAssassin corpus not found in {where}: set OUTPOST_CORPUS to "
                    "the sa-2002 directory")
    return c
