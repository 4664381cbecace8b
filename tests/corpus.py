"""Corpus messages made to look like outbound mail from a given customer."""

from __future__ import annotations

import re

from outpost.spam.bayes import strip_transport_headers
from tests.spam.helpers import require_corpus

SPAM = "00001.7848dde101aa985090474a91ec93fcf0.eml"
HAM = "00001.7c53336b37003a9286aba55d2945844c.eml"


def corpus_message(kind: str, name: str, sender: str) -> bytes:
    """A corpus message with transport headers dropped and From/Sender/
    Reply-To replaced by ``sender`` (CRLF line ends); skips without corpus
    (a failure in CI)."""
    raw = strip_transport_headers((require_corpus() / kind / name).read_bytes())
    head, sep, body = raw.replace(b"\r\n", b"\n").partition(b"\n\n")
    lines = re.split(rb"\n(?![ \t])", head)
    kept = [ln for ln in lines if not re.match(rb"(?i)(from|sender|reply-to|return-path):", ln)]
    head = b"\n".join([b"From: " + sender.encode()] + kept)
    return (head + b"\n\n" + body).replace(b"\n", b"\r\n")
