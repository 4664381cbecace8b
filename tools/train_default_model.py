#!/usr/bin/env python3
"""Train the Bayes model shipped with Outpost.

Usage: tools/train_default_model.py [CORPUS_DIR] [OUTPUT]

CORPUS_DIR defaults to $OUTPOST_CORPUS or ../shared/corpus/sa-2002 (spam/
versus ham/ + hard-ham/); OUTPUT to milter/outpost/data/default_model.bin.
Messages are looked at as outbound mail (transport headers and list footers
dropped, the corpus owners' addresses blanked).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from outpost.spam.bayes import train_from_dirs

ROOT = Path(__file__).resolve().parent.parent


def find_corpus() -> Path:
    env = os.environ.get("OUTPOST_CORPUS")
    candidates = [Path(env)] if env else []
    candidates += [ROOT.parent / "shared" / "corpus" / "sa-2002",
                   ROOT.parent.parent / "shared" / "corpus" / "sa-2002",
                   Path("/work/shared/corpus/sa-2002")]
    for c in candidates:
        if (c / "spam").is_dir():
            return c
    raise SystemExit("corpus not found; set OUTPOST_CORPUS to the sa-2002 directory")


def main(argv: list[str]) -> int:
    corpus = Path(argv[1]) if len(argv) > 1 else find_corpus()
    out = Path(argv[2]) if len(argv) > 2 else ROOT / "milter" / "outpost" / "data" / "default_model.bin"
    model = train_from_dirs(corpus / "spam", [corpus / "ham", corpus / "hard-ham"],
                            min_count=2, max_tokens=60_000, redact_corpus_owner=True)
    data = model.to_bytes()
    out.write_bytes(data)
    print("trained on %d spam, %d ham: %d tokens, %d bytes -> %s"
          % (model.nspam, model.nham, len(model), len(data), out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
