"""What the bulk check's store call costs as a fingerprint gets busy: one
message's six fingerprints counted (``Store.fingerprint_add_message``) when
each already has N entries in the window, for the memory store (the
ratios' base, the same run) and the sqlite store.

    python -m bench.fingerprint_store [--entries 0,1000,5000,10000] [--distinct 0,10000] [--messages 200]

A bulk sender, or a spam run, sends one body many times an hour; every
message of it is counted under the same fingerprints, up to
``store.max_fingerprint_entries`` (10 000) entries each.  Ordinary mail
is the other way round: every message brings new fingerprints, and an
hour's window holds many distinct ones (``--distinct``: the messages of
other senders, six new fingerprints each, in the window before the
measured messages).  CPU time of this thread, µs per message.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

from outpost.store import Store, StoreSettings
from outpost.store.memory import MemoryStore
from outpost.store.sqlite import SqliteStore

FPS = [f"busy-{i}" for i in range(6)]
WINDOW = 3600.0


def per_message(store: Store, messages: int) -> float:
    t = time.thread_time()
    for _ in range(messages):
        store.fingerprint_add_message(FPS, "bench", 1, WINDOW)
    return (time.thread_time() - t) / messages * 1e6


def fill(store: Store, entries: int) -> None:
    for i in range(entries):
        store.fingerprint_add_message(FPS, f"member-{i % 3}", 1, WINDOW)


def fill_distinct(store: Store, messages: int) -> None:
    for i in range(messages):
        store.fingerprint_add_message([f"other-{i}-{k}" for k in range(len(FPS))],
                                      f"sender-{i % 50}", 1, WINDOW)


def measure(entries: int, distinct: int, messages: int) -> tuple[float, float]:
    """(memory, sqlite) µs per message."""
    with tempfile.TemporaryDirectory() as work:
        sqlite = SqliteStore(os.path.join(work, "bench.db"), StoreSettings())
        memory = MemoryStore(StoreSettings())
        try:
            for store in (memory, sqlite):
                fill_distinct(store, distinct)
                fill(store, entries)
            return per_message(memory, messages), per_message(sqlite, messages)
        finally:
            sqlite.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--entries", default="0,1000,5000,10000",
                    help="entries per fingerprint before the measured messages")
    ap.add_argument("--distinct", default="0",
                    help="messages of six other fingerprints each in the window before, comma-separated")
    ap.add_argument("--messages", type=int, default=200, help="measured messages per size")
    args = ap.parse_args(argv)
    print(f"µs per message (6 fingerprints, {args.messages} messages, CPU of this thread)")
    print(f"{'entries':>8}{'distinct':>10}{'memory':>10}{'sqlite':>10}{'sqlite/memory':>15}")
    for d in (int(x) for x in args.distinct.split(",")):
        for n in (int(x) for x in args.entries.split(",")):
            m, s = measure(n, d, args.messages)
            print(f"{n:>8}{d:>10}{m:>10.0f}{s:>10.0f}{s / m:>15.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
