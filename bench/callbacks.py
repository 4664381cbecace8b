"""Python time per message, stage by stage, in one process: Outpost's
milter class against the do-nothing pymilter, called the way libmilter
calls them through ``Milter.runmilter`` (negotiate, connect, MAIL, RCPT, six
headers, one body chunk, end of message, close).

Usage: ``python -m bench.callbacks [--messages 8000] [--rounds 5] [--body 2048]
[--config bare|limits|full|everything] [--clock wall|cpu]``

It isolates the Python each message costs from the MTA and the kernel
(``bench/throughput.py`` measures the whole path through Postfix).  The
context object handed to the callbacks stands in for pymilter's C
``milterContext``: it answers the macros Postfix sends and records nothing,
so what is timed is the milter's own code.  Outpost runs one of the
configurations of ``bench/outpost_throughput.sh`` (``bench/outpost_configs.sh``;
by default bare: mapping, domain policy, headers, the connection slot in a
throw-away SQLite store; ``everything``: ``full`` with DKIM signing
(RSA-2048) and no automatic locks, as ``bench/realistic.py`` runs it), the
log line written to a temporary file.  The body
is smtp-source's: ``X`` in lines of 80 bytes.  The
configurations alternate round by round; each figure is the lowest of the
rounds' medians (in µs), with the ratio to the do-nothing milter.  A last
line times the policy core alone on the same message, driven by the one
transaction driver (``outpost.core.transaction.drive``) without pymilter.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import Milter
import yaml

from bench.noop_milter import NoopMilter
from outpost.adapter.milter import OutpostMilter
from outpost.cli import _setup_logging as setup_logging
from outpost.config import parse_config
from outpost.core.idtoken import new_secret
from outpost.core.transaction import Transaction, drive
from outpost.runtime import Runtime

REPO = Path(__file__).resolve().parents[1]
STAGES = ("negotiate", "connect", "mail", "rcpt", "headers", "body", "eom", "close")
HEADERS = [
    ("Received", b"from bench.example.org (localhost [127.0.0.1])\n\tby relay.example.net (Postfix) "
                 b"with ESMTP id 4XyZ01\n\tfor <rcpt@example.net>; Sat, 28 Nov 2026 03:00:00 +0000 (UTC)"),
    ("Date", b"Sat, 28 Nov 2026 03:00:00 +0000"), ("From", b"bench@example.com"),
    ("To", b"rcpt@example.net"), ("Subject", b"bench"),
    ("Message-Id", b"<20261128030000.4XyZ01@bench.example.org>"),
]


class Context:
    """Stands in for pymilter's ``milterContext``: the macros Postfix
    sends, and the calls a milter makes on it."""

    MACROS = {"{client_addr}": "127.0.0.1", "i": "4XyZ01", "j": "relay.example.net"}

    def __init__(self) -> None:
        self.priv = None

    def getsymval(self, name: str):
        return self.MACROS.get(name)

    def getpriv(self):
        return self.priv

    def setpriv(self, priv) -> None:
        self.priv = priv

    def setreply(self, *args) -> None:
        pass

    def addheader(self, *args) -> None:
        pass

    def chgheader(self, *args) -> None:
        pass


#: What a stage is timed with (``--clock``): elapsed time, or the CPU time
#: of the calling thread (steadier on a loaded machine: time the thread
#: waits for a core is not counted).
CLOCKS = {"wall": time.perf_counter, "cpu": time.thread_time}
clock = CLOCKS["wall"]


def one_message(body: bytes, times: dict[str, list[float]]) -> None:
    """One connection with one message, through runmilter's dispatch."""
    ctx = Context()
    t0 = clock()
    Milter.negotiate_callback(ctx, [Milter.CURR_ACTS, 0x1FFFFF, 0, 0])
    t1 = clock()
    Milter.connect_callback(ctx, "localhost", socket.AF_INET, ("127.0.0.1", 40000))
    t2 = clock()
    ctx.getpriv().envfrom_bytes(b"<bench@example.com>")
    t3 = clock()
    ctx.getpriv().envrcpt_bytes(b"<rcpt@example.net>")
    t4 = clock()
    for name, value in HEADERS:
        ctx.getpriv().header_bytes(name, value)
    ctx.getpriv().eoh()                      # end of headers, timed with them
    t5 = clock()
    ctx.getpriv().body(body)
    t6 = clock()
    rc = ctx.getpriv().eom()
    t7 = clock()
    Milter.close_callback(ctx)
    t8 = clock()
    if rc != Milter.CONTINUE:
        raise SystemExit(f"end of message answered {rc}, not CONTINUE: the benchmark is broken")
    for stage, a, b in zip(STAGES, (t0, t1, t2, t3, t4, t5, t6, t7), (t1, t2, t3, t4, t5, t6, t7, t8)):
        times[stage].append(b - a)


def measure(factory: Callable, messages: int, body: bytes) -> dict[str, float]:
    """Median µs per stage over ``messages`` messages."""
    Milter.factory = factory
    times: dict[str, list[float]] = {s: [] for s in STAGES}
    for _ in range(messages):
        one_message(body, times)
    return {s: sorted(v)[len(v) // 2] * 1e6 for s, v in times.items()}


def measure_core(runtime: Runtime, messages: int, body: bytes) -> float:
    """Median µs of one transaction through the policy core alone (the same
    client, envelope, headers and body as :func:`one_message`)."""
    tx = Transaction(sender="<bench@example.com>", recipients=("<rcpt@example.net>",),
                     headers=[(n, " " + v.decode()) for n, v in HEADERS], body=body,
                     client_ip="127.0.0.1", hostname="localhost", client_port="40000", queue_id="4XyZ01")
    times = []
    for _ in range(messages):
        t0 = clock()
        out = drive(runtime.policy, tx)
        times.append(clock() - t0)
        if out.stage != "end of message" or out.decision is None or out.decision.blocks:
            raise SystemExit(f"the core refused the message at {out.stage}: the benchmark is broken")
    return sorted(times)[len(times) // 2] * 1e6


def everything(text: str, work: str) -> str:
    """``full`` as ``bench/realistic.py`` runs it: the domain signs with an
    RSA-2048 key, spam is accepted and locks nobody."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    key = os.path.join(work, "dkim.pem")
    with open(os.open(key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as f:
        f.write(rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption()))
    data = yaml.safe_load(text)
    data["hostname"] = "relay.example.net"
    data["domains"] = [{"name": d, "dkim": [{"selector": "bench", "key": key}]} for d in data["domains"]]
    data["defaults"]["lock"] = {"after_spam": False, "user_after_spam": False}   # YAML's off
    return yaml.safe_dump(data)


def outpost_factory(work: str, kind: str) -> tuple[Callable, Runtime]:
    secret = os.path.join(work, "secret")
    with open(os.open(secret, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as f:
        f.write(new_secret())
    os.chmod(secret, 0o600)                  # a group/world-readable secret is refused
    text = subprocess.run(
        ["bash", "-c", '. "$0"; outpost_config "$@"', str(REPO / "bench" / "outpost_configs.sh"),
         "full" if kind == "everything" else kind, secret, os.path.join(work, "bench.db")],
        check=True, capture_output=True, text=True).stdout
    config = parse_config(everything(text, work) if kind == "everything" else text)
    runtime = Runtime.build(config)
    return functools.partial(OutpostMilter, runtime), runtime


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=8000, help="messages per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--body", type=int, default=2048, help="body bytes (one chunk)")
    parser.add_argument("--config", choices=("bare", "limits", "full", "everything"), default="bare",
                        help="Outpost configuration (bench/outpost_configs.sh)")
    parser.add_argument("--clock", choices=tuple(CLOCKS), default="wall",
                        help="wall: elapsed time; cpu: the thread's CPU time (for a loaded machine)")
    args = parser.parse_args(argv)
    global clock
    clock = CLOCKS[args.clock]
    line = b"X" * 78 + b"\r\n"                  # smtp-source's filler
    body = (line * (args.body // len(line) + 1))[:args.body]
    with tempfile.TemporaryDirectory(prefix="outpost-callbacks-") as work:
        log = open(os.path.join(work, "outpost.log"), "w", encoding="utf-8")
        setup_logging("info", log)                    # as `outpost run` sets it up
        outpost, runtime = outpost_factory(work, args.config)
        configs = {"noop": NoopMilter, "outpost": outpost}
        best: dict[str, dict[str, float]] = {name: {} for name in configs}
        core = float("inf")
        try:
            for factory in configs.values():              # warm-up
                measure(factory, 300, body)
            for rnd in range(args.rounds):
                order = list(configs.items())
                for name, factory in (order if rnd % 2 == 0 else order[::-1]):
                    for stage, us in measure(factory, args.messages, body).items():
                        best[name][stage] = min(best[name].get(stage, float("inf")), us)
                core = min(core, measure_core(runtime, args.messages, body))
        finally:
            runtime.close()
            logging.shutdown()
            log.close()
    print(f"{args.config} configuration, {args.messages} messages x {args.rounds} rounds, "
          f"{args.body} B body; {args.clock} "
          "µs per message: lowest of the rounds' medians")
    print(f"{'stage':<10}{'noop':>8}{'outpost':>10}{'difference':>12}")
    for stage in STAGES:
        noop, ours = best["noop"][stage], best["outpost"][stage]
        print(f"{stage:<10}{noop:>8.1f}{ours:>10.1f}{ours - noop:>12.1f}")
    noop_total, ours_total = sum(best["noop"].values()), sum(best["outpost"].values())
    print(f"{'total':<10}{noop_total:>8.1f}{ours_total:>10.1f}{ours_total - noop_total:>12.1f}"
          f"   ({ours_total / noop_total:.1f}x the do-nothing milter)")
    print(f"policy core alone (core.transaction.drive, no pymilter): {core:.1f} µs per message")
    return 0


if __name__ == "__main__":
    sys.exit(main())
