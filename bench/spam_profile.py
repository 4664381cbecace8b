"""CPU of the spam engine per message, in one process, stage by stage.

The engine a default configuration builds (``spam/from_config.py``: the
shipped Bayes model, the rules, the bulk check on a memory store), called
the way the policy core calls it at the end of a message
(``Engine.parse_parts`` on the header block and the body window, then
``Engine.scan``), on smtp-source's filler (2 KB, 20 KB) and on the corpus
mix (``bench/mailmix.py``).  Prints the median and quartiles of ms per
message for parsing and for each check (without the engine's content
cache: each stage runs); then the whole scan (``parse_parts`` + ``scan``)
with the content cache off and on, alternating in ``--rounds`` rounds (a
new, empty cache each round), median and range of the rounds' ms per
message; ``--profile`` adds cProfile's top entries (by own time) for each
workload.

    .venv/bin/python -m bench.spam_profile [--messages 300] [--rounds 5] [--profile 15]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import statistics
import sys
import time

from bench.mailmix import corpus_mix, filler
from outpost.config import parse_config
from outpost.spam.base import ScanContext
from outpost.spam.engine import ContentCache, Engine
from outpost.spam.from_config import build_engine
from outpost.store.memory import MemoryStore

CONFIG = """
report_abuse_to: abuse@example.net
domains: [example.com]
users:
  - {name: bench, type: ip, ips: [127.0.0.0/8], domains: [example.com]}
"""
CTX = ScanContext(user="bench", identity="bench@example.com", sender="bench@example.com",
                  recipients=("rcpt@example.net",))


def split(raw: bytes) -> tuple[bytes, bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    return head, body


def scan_timed(engine: Engine, raw: bytes, times: dict[str, list[float]]) -> None:
    """One message the way the policy scans it; adds seconds per stage."""
    clock = time.process_time          # this process's CPU: other load on the machine does not count
    head, body = split(raw)
    t0 = clock()
    view = engine.parse_parts(head, body[:engine.settings.max_scan], len(body))
    t1 = clock()
    times.setdefault("parse", []).append(t1 - t0)
    total = t1 - t0
    for check in engine.checks:
        a = clock()
        check.check(view, CTX)
        b = clock()
        times.setdefault(check.name, []).append(b - a)
        total += b - a
    times.setdefault("total", []).append(total)


def scan(engine: Engine, raw: bytes) -> None:
    head, body = split(raw)
    view = engine.parse_parts(head, body[:engine.settings.max_scan], len(body))
    engine.scan(view, CTX, engine.header_padding(len(head)))


def cache_rounds(engine: Engine, msgs: list[bytes], rounds: int) -> dict[str, list[float]]:
    """ms per message of the whole scan, cache off and on, alternating."""
    out: dict[str, list[float]] = {"cache off": [], "cache on": []}
    for r in range(rounds):
        order = ("cache off", "cache on") if r % 2 == 0 else ("cache on", "cache off")
        for mode in order:
            engine.cache = ContentCache() if mode == "cache on" else None
            t0 = time.process_time()
            for raw in msgs:
                scan(engine, raw)
            out[mode].append((time.process_time() - t0) / len(msgs) * 1e3)
    engine.cache = None
    return out


def quartiles(v: list[float]) -> tuple[float, float, float]:
    if len(v) < 2:
        return v[0], v[0], v[0]
    q1, q2, q3 = statistics.quantiles(v, n=4, method="inclusive")
    return q1, q2, q3


def workloads(messages: int) -> dict[str, list[bytes]]:
    mix = [raw for _, raw in corpus_mix(limit=messages)]
    return {
        "filler 2 KB": [filler(2048)] * messages,
        "filler 20 KB": [filler(20480)] * messages,
        "corpus mix": mix,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=300, help="messages per workload")
    parser.add_argument("--rounds", type=int, default=5,
                        help="rounds of the whole scan with the content cache off and on")
    parser.add_argument("--profile", type=int, default=0, metavar="N",
                        help="print cProfile's N top entries per workload")
    args = parser.parse_args(argv)
    engine = build_engine(parse_config(CONFIG), MemoryStore())
    assert engine is not None
    cache, engine.cache = engine.cache, None            # the stages: each one runs
    for name, msgs in workloads(args.messages).items():
        for raw in msgs[:20]:                       # warm caches (regexes, model pages)
            scan(engine, raw)
        times: dict[str, list[float]] = {}
        for raw in msgs:
            scan_timed(engine, raw, times)
        size = statistics.median(len(m) for m in msgs)
        print(f"\n{name}: {len(msgs)} messages, median size {size:.0f} B; "
              "ms per message: median (quartiles)")
        for stage, v in sorted(times.items(), key=lambda kv: -statistics.median(kv[1])):
            q1, q2, q3 = quartiles([x * 1e3 for x in v])
            print(f"  {stage:<28}{q2:8.3f}  ({q1:.3f}-{q3:.3f})  mean {statistics.fmean(v) * 1e3:.3f}")
        if args.rounds:
            print(f"  whole scan, {args.rounds} rounds alternating: median (range) ms per message")
            for mode, v in cache_rounds(engine, msgs, args.rounds).items():
                print(f"  {mode:<28}{statistics.median(v):8.3f}  ({min(v):.3f}-{max(v):.3f})")
        if args.profile:
            engine.cache = cache
            prof = cProfile.Profile()
            prof.enable()
            for raw in msgs:
                scan(engine, raw)
            prof.disable()
            engine.cache = None
            out = io.StringIO()
            pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(args.profile)
            print("\n".join(ln for ln in out.getvalue().splitlines()
                            if ln.strip() and not ln.startswith(("   Ordered", "   List"))))
    engine.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
