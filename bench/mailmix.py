"""Messages for the benchmarks: smtp-source's filler and real corpus mail.

``filler(size)`` is what ``smtp-source -l SIZE`` sends (numbered lines of
``X``, its four header fields).  ``corpus_mix(...)`` reads the SpamAssassin
2002 corpus (``OUTPOST_CORPUS`` or ``../shared/corpus/sa-2002``, found by
``tests/spam/helpers.find_corpus``) as outbound mail: transport headers
dropped, From set to a sender of the bench's mapped domain
(``tests/corpus.corpus_message``); ham, hard ham and spam at their own sizes
and structure, in the corpus' proportions, in a fixed shuffled order.
"""

from __future__ import annotations

import random
from pathlib import Path

from tests.corpus import corpus_message
from tests.spam.helpers import find_corpus

KINDS = ("ham", "hard-ham", "spam")


def filler(size: int, sender: str = "bench@example.com", rcpt: str = "rcpt@example.net") -> bytes:
    """A message like smtp-source's: four header fields, then numbered
    80-column lines of ``X`` up to ``size`` bytes of body."""
    head = (f"From: <{sender}>\r\nTo: <{rcpt}>\r\nDate: Wed, 2 Dec 2026 11:54:32 +0000\r\n"
            f"Message-Id: <1.0001.0000@bench.example.org>\r\n\r\n").encode()
    lines, n, total = [], 1, 0
    while total < size:
        line = (str(n) + "X" * 78)[:78].encode() + b"\r\n"
        lines.append(line)
        total += len(line)
        n += 1
    return head + b"".join(lines)[:size]


def corpus_dir() -> Path:
    found = find_corpus()
    if found is None:
        raise SystemExit("SpamAssassin corpus not found: set OUTPOST_CORPUS to the sa-2002 directory")
    return found


def corpus_mix(limit: int = 0, senders: int = 50, domain: str = "example.com",
               seed: int = 17) -> list[tuple[str, bytes]]:
    """``(kind, message)`` for every corpus message (or ``limit`` of them,
    a proportional sample), From rewritten to ``userN@domain`` (N < senders),
    CRLF line ends, in a fixed shuffled order."""
    root = corpus_dir()
    names = [(kind, p.name) for kind in KINDS for p in sorted((root / kind).iterdir())
             if p.is_file()]
    rnd = random.Random(seed)
    rnd.shuffle(names)
    if limit:
        names = names[:limit]
    return [(kind, corpus_message(kind, name, f"user{i % senders}@{domain}"))
            for i, (kind, name) in enumerate(names)]
