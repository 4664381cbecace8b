"""What the bulk check's store call costs as a fingerprint gets busy: one
message's six fingerprints counted (``Store.fingerprint_add_message``) when
each already has N entries in the window, for the memory store (the
ratios' base, the same run) and the sqlite store.

    python -m bench.fingerprint_store [--entries 0,1000,5000,10000] [--distinct 0,10000] [--messages 200]
    python -m bench.fingerprint_store --sweep --distinct 10000,30000,100000

A bulk sender, or a spam run, sends one body many times an hour; every
message of it is counted under the same fingerprints, up to
``store.max_fingerprint_entries`` (10 000) entries each.  Ordinary mail
is the other way round: every message brings new fingerprints, and an
hour's window holds many distinct ones (``--distinct``: the messages of
other senders, six new fingerprints each, in the window before the
measured messages).  CPU time of this thread, µs per message.
``--sweep``: the memory store's sweep (also each worker's fallback under
``on_store_error: local``), the one call that runs it.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from typing import Callable

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


def fill_distinct(store: Store, messages: int,
                  tick: Callable[[int], object] = lambda i: None) -> None:
    """Count ``messages`` messages of six new fingerprints each (``tick(i)``
    before the i-th: a store's clock moved on)."""
    for i in range(messages):
        tick(i)
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


def sweep_ms(distinct: int, due: int) -> float:
    """CPU ms of the memory store's call that sweeps, with the fingerprints
    of ``distinct`` messages in the window, the ``due`` oldest of them out
    of it (its clock moved on: counted one a millisecond, swept at the
    window's end for the ``due``-th)."""
    now = [1.0e9]
    memory = MemoryStore(StoreSettings(), clock=lambda: now[0])
    fill_distinct(memory, distinct, lambda i: now.__setitem__(0, 1.0e9 + i / 1000))
    now[0] = 1.0e9 + WINDOW + due / 1000
    memory._next_sweep = 0.0                     # the sweep is due at the next call
    t = time.thread_time()
    memory.fingerprint_add_message(FPS, "bench", 1, WINDOW)
    return (time.thread_time() - t) * 1e3


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--entries", default="0,1000,5000,10000",
                    help="entries per fingerprint before the measured messages")
    ap.add_argument("--distinct", default="0",
                    help="messages of six other fingerprints each in the window before, comma-separated")
    ap.add_argument("--messages", type=int, default=200, help="measured messages per size")
    ap.add_argument("--sweep", action="store_true",
                    help="time the memory store's sweep instead, at each --distinct")
    args = ap.parse_args(argv)
    if args.sweep:
        print("memory store: CPU ms of the call that sweeps, messages in the window, none or "
              "6 000 of them due (a minute at 100 msgs/s)")
        print(f"{'messages':>10}{'none due':>12}{'6 000 due':>12}")
        for d in (int(x) for x in args.distinct.split(",")):
            print(f"{d:>10}{sweep_ms(d, 0):>12.1f}{sweep_ms(d, min(d, 6000)):>12.1f}")
        return 0
    print(f"µs per message (6 fingerprints, {args.messages} messages, CPU of this thread)")
    print(f"{'entries':>8}{'distinct':>10}{'memory':>10}{'sqlite':>10}{'sqlite/memory':>15}")
    for d in (int(x) for x in args.distinct.split(",")):
        for n in (int(x) for x in args.entries.split(",")):
            m, s = measure(n, d, args.messages)
            print(f"{n:>8}{d:>10}{m:>10.0f}{s:>10.0f}{s / m:>15.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
