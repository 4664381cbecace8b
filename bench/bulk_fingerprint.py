"""Cost of the bulk fingerprints per message, as a ratio to a baseline
measured in the same run (one SHA-256 over the raw text, the cheapest
possible exact fingerprint).

    python -m bench.bulk_fingerprint [--messages N]
"""

from __future__ import annotations

import argparse
import hashlib
import random
import time

from outpost.spam.base import MessageView, ScanContext, Url
from outpost.spam.bulk import BulkSettings, fingerprints

WORDS = ("offer watch premium order shipping free code today save price team regards "
         "meeting report invoice project server customer contract please thanks").split()


def make_text(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) + ("." if rng.random() < 0.08 else "")
                    for _ in range(words))


def best_of(fn, rounds: int = 5) -> float:
    best = float("inf")
    for _ in range(rounds):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=300)
    args = ap.parse_args()
    rng = random.Random(1)
    ctx = ScanContext(user="u", identity="i", sender="a@x.example",
                      recipients=tuple(f"r{k}@y.example" for k in range(10)))
    settings = BulkSettings()
    for words in (60, 600, 3000):
        msgs = [MessageView(headers=(("Subject", "hello"),), text=make_text(rng, words), html="",
                            urls=(Url("https://shop.example/a?x=1", "shop.example"),),
                            attachments=(), size=0, partial=False)
                for _ in range(args.messages)]
        base = best_of(lambda msgs=msgs: [hashlib.sha256(m.text.encode()).hexdigest() for m in msgs])
        ours = best_of(lambda msgs=msgs: [fingerprints(m, ctx, settings) for m in msgs])
        per = ours / len(msgs) * 1e6
        print(f"{words:5d} words: fingerprints {per:8.1f} us/msg, "
              f"{ours / base:6.1f}x the sha256 baseline")


if __name__ == "__main__":
    main()
