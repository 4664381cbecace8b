"""Python time per message, stage by stage, in one process: Outpost's
milter class against the do-nothing pymilter, called the way libmilter
calls them through ``Milter.runmilter`` (negotiate, connect, MAIL, RCPT, six
headers, one body chunk, end of message, close).

Usage: ``python -m bench.callbacks [--messages 8000] [--rounds 5] [--body 2048]
[--config bare|limits|full|everything] [--clock wall|cpu] [--store-trips]``

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

``--store-trips`` times nothing: it counts, stage by stage (two RCPTs), the
store calls a message makes and what SQLite itself executes for them
(``sqlite3`` trace callback on every connection of the store: transactions,
reads, writes; and the takes of the writer lock), then one flush of the
statistics and decision log (every 2 s in a worker).
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import Milter
import yaml

from bench.noop_milter import NoopMilter
from outpost.adapter.milter import OutpostMilter
from outpost.cli import _setup_logging as setup_logging
from outpost.config import parse_config
from outpost.core.idtoken import new_secret
from outpost.core.transaction import Transaction, drive
from outpost.runtime import Runtime

if TYPE_CHECKING:
    from outpost.store.sqlite import SqliteStore

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
CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.thread_time}


def one_message(body: bytes, times: dict[str, list[float]], clock: Callable[[], float]) -> None:
    """One connection with one message, through runmilter's dispatch,
    each stage timed with ``clock``."""
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


#: The body of ``--store-trips``: text, so that the bulk check has content
#: fingerprints to count (smtp-source's ``X`` lines normalise to nothing).
TEXT_BODY = (
    b"Hello team,\r\n\r\nThe quarterly report is ready for review. Please read the summary "
    b"and the budget tables before Thursday's meeting, and send me your comments on the "
    b"hiring plan and the new office lease.\r\n\r\nThe full document is at "
    b"https://docs.example.org/reports/q3-summary\r\n\r\nThanks,\r\nAlex\r\n")

TRIP_STAGES = ("connect", "mail", "rcpt 1", "rcpt 2", "headers+body", "eom", "close")


def trace_sqlite(store: "SqliteStore", callback: Callable[[str], object]) -> None:
    """Every connection of the sqlite ``store`` from now on calls
    ``callback`` with each statement it runs (``sqlite3``'s trace callback,
    values expanded); the pooled connections are closed, so none escapes."""
    connect = store._connect

    def traced_connect() -> sqlite3.Connection:
        db = connect()
        db.set_trace_callback(callback)
        return db

    store._connect = traced_connect                       # type: ignore[method-assign]
    with store._pool_mutex:
        pool, store._pool = store._pool, []
    for db in pool:
        db.close()


class StoreTrips:
    """Counts, per stage, the store calls of a :class:`~outpost.runtime.Runtime`
    and the statements SQLite executes for them (its trace callback)."""

    COLUMNS = ("calls", "transactions", "writer lock", "statements", "reads", "writes")

    def __init__(self, runtime: Runtime) -> None:
        from outpost.store.base import Store
        from outpost.store.sqlite import SqliteStore
        self.stage = "setup"
        self.counts: dict[str, dict[str, int]] = {}
        self.calls: dict[str, dict[str, int]] = {}
        store = runtime.store
        inner = getattr(store, "inner", store)           # under the ResilientStore
        names = [n for n, v in vars(Store).items()
                 if callable(v) and not n.startswith("_") and n not in ("close",)]
        for name in names:
            if hasattr(inner, name):
                setattr(inner, name, self._counted(name, getattr(inner, name)))
        if isinstance(inner, SqliteStore):
            acquire = inner._writer.acquire

            def counted_acquire():
                self._add("writer lock")
                acquire()

            trace_sqlite(inner, self._statement)
            inner._writer.acquire = counted_acquire       # type: ignore[method-assign]

    def _add(self, column: str, n: int = 1) -> None:
        row = self.counts.setdefault(self.stage, dict.fromkeys(self.COLUMNS, 0))
        row[column] += n

    def _counted(self, name: str, fn: Callable) -> Callable:
        def call(*args, **kwargs):
            self._add("calls")
            per = self.calls.setdefault(self.stage, {})
            per[name] = per.get(name, 0) + 1
            return fn(*args, **kwargs)
        return call

    def _statement(self, sql: str) -> None:
        word = sql.lstrip().split(None, 1)[0].upper() if sql.strip() else ""
        if word == "BEGIN":
            self._add("transactions")
        elif word in ("SELECT", "WITH"):
            self._add("statements")
            self._add("reads")
        elif word in ("INSERT", "UPDATE", "DELETE", "REPLACE"):
            self._add("statements")
            self._add("writes")

    def message(self, body: bytes) -> None:
        """One connection with one message to two recipients (as
        :func:`one_message`, each stage counted)."""
        ctx = Context()
        self.stage = "connect"
        Milter.negotiate_callback(ctx, [Milter.CURR_ACTS, 0x1FFFFF, 0, 0])
        Milter.connect_callback(ctx, "localhost", socket.AF_INET, ("127.0.0.1", 40000))
        self.stage = "mail"
        ctx.getpriv().envfrom_bytes(b"<bench@example.com>")
        self.stage = "rcpt 1"
        ctx.getpriv().envrcpt_bytes(b"<rcpt@example.net>")
        self.stage = "rcpt 2"
        ctx.getpriv().envrcpt_bytes(b"<rcpt2@example.net>")
        self.stage = "headers+body"
        for name, value in HEADERS:
            ctx.getpriv().header_bytes(name, value)
        ctx.getpriv().eoh()
        ctx.getpriv().body(body)
        self.stage = "eom"
        rc = ctx.getpriv().eom()
        self.stage = "close"
        Milter.close_callback(ctx)
        if rc != Milter.CONTINUE:
            raise SystemExit(f"end of message answered {rc}, not CONTINUE: the benchmark is broken")


def store_trips(runtime: Runtime, factory: Callable, messages: int, body: bytes,
                config: str) -> None:
    """Print what the store does per message and per statistics flush."""
    Milter.factory = factory
    for _ in range(20):                                   # warm-up: pool, first sweep
        one_message(body, {s: [] for s in STAGES}, time.perf_counter)
    runtime.stats.flush()
    trips = StoreTrips(runtime)
    for _ in range(messages):
        trips.message(body)
    trips.stage = "flush (2 s)"
    runtime.stats.flush()
    print(f"{config} configuration, {runtime.store.url}: store work per message "
          f"(mean of {messages} messages to 2 recipients) and per flush of the statistics")
    head = f"{'stage':<14}" + "".join(f"{c:>14}" for c in StoreTrips.COLUMNS) + "   store calls"
    print(head)
    print("-" * len(head))
    total = dict.fromkeys(StoreTrips.COLUMNS, 0)
    for stage in TRIP_STAGES + ("flush (2 s)",):
        per = 1 if stage.startswith("flush") else messages
        row = trips.counts.get(stage, dict.fromkeys(StoreTrips.COLUMNS, 0))
        calls = ", ".join(f"{n} {k / per:g}" for k, n in
                          sorted(((v, k) for k, v in trips.calls.get(stage, {}).items()), reverse=True))
        if per == messages:
            for c in total:
                total[c] += row[c]
        else:
            print(f"{'per message':<14}" + "".join(f"{total[c] / messages:>14.2f}" for c in total))
        print(f"{stage:<14}" + "".join(f"{row[c] / per:>14.2f}" for c in StoreTrips.COLUMNS)
              + f"   {calls}")


def measure(factory: Callable, messages: int, body: bytes,
            clock: Callable[[], float]) -> dict[str, float]:
    """Median µs per stage over ``messages`` messages, timed with ``clock``."""
    Milter.factory = factory
    times: dict[str, list[float]] = {s: [] for s in STAGES}
    for _ in range(messages):
        one_message(body, times, clock)
    return {s: sorted(v)[len(v) // 2] * 1e6 for s, v in times.items()}


def measure_core(runtime: Runtime, messages: int, body: bytes, clock: Callable[[], float]) -> float:
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
    parser.add_argument("--store-trips", action="store_true",
                        help="count the store calls and SQLite statements per stage instead")
    args = parser.parse_args(argv)
    clock = CLOCKS[args.clock]
    line = b"X" * 78 + b"\r\n"                  # smtp-source's filler
    body = (line * (args.body // len(line) + 1))[:args.body]
    with tempfile.TemporaryDirectory(prefix="outpost-callbacks-") as work:
        log = open(os.path.join(work, "outpost.log"), "w", encoding="utf-8")
        setup_logging("info", log)                    # as `outpost run` sets it up
        outpost, runtime = outpost_factory(work, args.config)
        if args.store_trips:
            try:
                store_trips(runtime, outpost, min(args.messages, 1000), TEXT_BODY, args.config)
            finally:
                runtime.close()
                logging.shutdown()
                log.close()
            return 0
        configs = {"noop": NoopMilter, "outpost": outpost}
        best: dict[str, dict[str, float]] = {name: {} for name in configs}
        core = float("inf")
        try:
            for factory in configs.values():              # warm-up
                measure(factory, 300, body, clock)
            for rnd in range(args.rounds):
                order = list(configs.items())
                for name, factory in (order if rnd % 2 == 0 else order[::-1]):
                    for stage, us in measure(factory, args.messages, body, clock).items():
                        best[name][stage] = min(best[name].get(stage, float("inf")), us)
                core = min(core, measure_core(runtime, args.messages, body, clock))
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
