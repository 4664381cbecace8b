"""Everything on, on filler and on real mail: Postfix alone, the do-nothing
milter, OpenDKIM and Outpost in one interleaved run.

    load (N parallel sessions) -> throw-away Postfix [+ milter] -> smtp-sink

Workloads (each measured for every configuration in every round):

* ``2048``, ``20480``  smtp-source's filler of that size (``--sizes``);
* ``corpus``           the corpus mix replayed by ``CorpusLoad``: every
                       message of the SpamAssassin 2002 corpus (ham, hard
                       ham, spam at their own sizes and structure; transport
                       headers dropped), From and envelope sender
                       ``userN@example.com`` (a mapped user's domain), one
                       message per SMTP session from ``--sessions`` parallel
                       sessions (threads; the same messages for every
                       configuration of a round).

Configurations (each its own Postfix; one loaded at a time):

* ``postfix``    Postfix alone;
* ``noop``       the do-nothing pymilter (bench/noop_milter.py);
* ``opendkim``   OpenDKIM (Debian ``opendkim``), signing only, relaxed/relaxed;
* ``outpost``    Outpost with everything on: the mapping, rate limits in
                 SQLite, the spam engine (Bayes, rules, bulk), the stamped
                 headers and DKIM signing with the same RSA key as OpenDKIM
                 (``--bits``, 2048).  ``on_spam: accept`` and no automatic
                 locks, so that every message is scanned, signed and
                 delivered; ``--workers 1,2,0`` runs it with 1 and 2 workers
                 and the default (0: the number of cores) side by side;
* ``--without spam|dkim|spam+dkim``: Outpost without the spam engine,
                 without DKIM signing, or without both (``outpost-no-spam``,
                 ``outpost-no-dkim``, ``outpost-no-spam-dkim``): what each
                 part costs, in the same run;
* ``--compare NAME=DIR``: the same Outpost configuration run from another
                 checkout (its ``milter/`` on PYTHONPATH), e.g. before a change.

Before timing, a sample through every configuration goes to a capturing
sink and must carry a valid signature where the configuration signs.
Reported per workload: msgs/s (median, min-max), the ratios to Postfix
alone, to the do-nothing milter and to OpenDKIM (medians of same-round
ratios; quartiles of the ratio to OpenDKIM) and the CPU of the milter's
processes per message (median over rounds, from /proc).

    .venv/bin/python -m bench.realistic [--messages 1000] [--rounds 5]
        [--workloads 2048,20480,corpus] [--workers 0] [--without spam+dkim]
        [--compare before=DIR]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from bench.dkim_throughput import (
    DOMAIN,
    SELECTOR,
    Setup,
    check_signing,
    make_key,
    opendkim_setup,
    start_setups,
    stop_setups,
)
from bench.mailmix import corpus_mix
from bench.throughput import BenchError, bench_site, count_sent, run_rounds, run_source

REPO = Path(__file__).resolve().parents[1]
CORPUS = "corpus"


# --------------------------------------------------------------------------
# The corpus load generator
# --------------------------------------------------------------------------

def dot_stuff(message: bytes) -> bytes:
    """DATA payload: CRLF line ends, leading dots doubled, the final dot."""
    data = message.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    if not data.endswith(b"\r\n"):
        data += b"\r\n"
    if data.startswith(b"."):
        data = b"." + data
    return data.replace(b"\r\n.", b"\r\n..") + b".\r\n"


@dataclass
class Envelope:
    sender: bytes
    data: bytes            # dot-stuffed DATA payload with the final dot


class SmtpError(RuntimeError):
    pass


def _reply(f) -> bytes:
    """One (multi-line) SMTP reply; returns the last line."""
    while True:
        line = f.readline(4096)
        if not line:
            raise SmtpError("connection closed")
        if line[3:4] != b"-":
            return line


def _expect(f, code: bytes, what: str) -> None:
    line = _reply(f)
    if not line.startswith(code):
        raise SmtpError(f"{what}: {line.decode('latin-1').strip()}")


def send_one(port: int, env: Envelope, rcpt: bytes) -> None:
    """One SMTP session delivering one message (no pipelining)."""
    with socket.create_connection(("127.0.0.1", port), timeout=120) as s:
        f = s.makefile("rb")
        _expect(f, b"220", "greeting")
        s.sendall(b"EHLO load.example.org\r\n")
        _expect(f, b"250", "EHLO")
        s.sendall(b"MAIL FROM:<" + env.sender + b">\r\n")
        _expect(f, b"250", "MAIL")
        s.sendall(b"RCPT TO:<" + rcpt + b">\r\n")
        _expect(f, b"250", "RCPT")
        s.sendall(b"DATA\r\n")
        _expect(f, b"354", "DATA")
        s.sendall(env.data)
        _expect(f, b"250", "end of data")
        s.sendall(b"QUIT\r\n")
        _reply(f)


class CorpusLoad:
    """Replays the corpus mix from parallel sessions; each configuration
    walks the same sequence (its own cursor), so a round gives every
    configuration the same messages."""

    def __init__(self, limit: int = 0) -> None:
        self.mix = [Envelope(raw.split(b"From: ", 1)[1].split(b"\r\n", 1)[0].strip(b"<>"),
                             dot_stuff(raw)) for _, raw in corpus_mix(limit, domain=DOMAIN)]
        self.cursor: dict[int, int] = {}
        self.bytes = statistics.median(len(e.data) for e in self.mix)

    def run(self, port: int, messages: int, sessions: int, rcpt: str) -> float:
        """Send ``messages`` from ``sessions`` threads; msgs/s accepted."""
        start = self.cursor.get(port, 0)
        self.cursor[port] = start + messages
        todo = iter(range(start, start + messages))
        lock = threading.Lock()
        errors: list[str] = []

        def worker() -> None:
            while True:
                with lock:
                    i = next(todo, None)
                if i is None or errors:
                    return
                try:
                    send_one(port, self.mix[i % len(self.mix)], rcpt.encode())
                except (OSError, SmtpError) as exc:
                    errors.append(f"message {i % len(self.mix)}: {exc}")
                    return

        threads = [threading.Thread(target=worker, daemon=True) for _ in range(sessions)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - t0
        if errors:
            raise BenchError(errors[0])
        return messages / elapsed


def make_send(load: CorpusLoad | None):
    """``run_source`` for filler sizes, the corpus load for ``corpus``."""
    def send(instance, args: argparse.Namespace, messages: int, workload) -> float:
        if workload != CORPUS:
            return run_source(instance, args, messages, workload)
        assert load is not None
        before = count_sent(instance)
        rate = load.run(instance.relay_port, messages, args.sessions, args.recipient)
        instance.wait_queue_empty(timeout=max(120.0, messages / 5), include_hold=True)
        sent = count_sent(instance) - before
        if sent != messages:
            raise BenchError(f"{sent} of {messages} corpus messages delivered to the sink")
        return rate
    return send


# --------------------------------------------------------------------------
# Outpost with everything on
# --------------------------------------------------------------------------

#: What ``--without`` can leave out of Outpost's configuration.
PARTS = ("spam", "dkim")


def parse_without(value: str) -> frozenset[str]:
    """``spam``, ``dkim`` or ``spam+dkim``: the parts one variant leaves out."""
    parts = frozenset(value.split("+"))
    if not parts or not parts <= set(PARTS):
        raise argparse.ArgumentTypeError(f"{value!r}: parts are {', '.join(PARTS)}, joined by '+'")
    return parts


def outpost_full(name: str, root: Path, key: Path, repo: Path, python: str,
                 workers: int, without: frozenset[str] = frozenset()) -> Setup:
    """Outpost from ``repo``: mapping, limits (sqlite), spam engine, headers,
    DKIM; ``workers`` 0: Outpost's default; ``without``: the parts left
    out (the spam engine, DKIM signing), to see what each one costs."""
    wdir = root / f"{name}.outpost"
    wdir.mkdir()
    secret = wdir / "secret"
    fd = os.open(secret, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(os.urandom(32))
    cfg = wdir / "outpost.yml"
    cfg.write_text(
        f"secret_file: {secret}\n"
        f"store: sqlite:///{wdir}/state.db\n"
        "hostname: relay.example.net\n"
        "report_abuse_to: abuse@example.net\n"
        "reports: {enabled: false}\n"
        + (f"domains: [{DOMAIN}]\n" if "dkim" in without else
           f"domains:\n  - {{name: {DOMAIN}, dkim: [{{selector: {SELECTOR}, key: {key}}}]}}\n")
        + ("spam: {enabled: false}\n" if "spam" in without else "")
        + "defaults:\n"
        # every message scanned and delivered: spam is accepted (and
        # stamped), no identity is locked for it
        "  spam: {on_spam: accept}\n"
        "  lock: {after_spam: off, user_after_spam: off}\n"
        "  limits: {messages: [1000000/1m, 10000000/1h], recipients: [10000000/1d]}\n"
        "  user_limits: {messages: [100000000/1d]}\n"
        "users:\n"
        "  - {name: bench, type: ip, ips: [127.0.0.0/8], domains: [" + DOMAIN + "],"
        " connection_limit: 1000}\n")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(repo / "milter")] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    argv = [python, "-m", "outpost", "run", "-c", str(cfg), "--socket", "{socket}"]
    if workers:
        argv += ["--workers", str(workers)]
    return Setup(name, argv, signs="dkim" not in without, env=env, cwd=repo)


# --------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------

def _ratios(a: list[float], b: list[float]) -> list[float]:
    return [x / y for x, y in zip(a, b)]


def report(setups: list[Setup], workloads: list, args: argparse.Namespace,
           load: CorpusLoad | None) -> None:
    by = {s.name: s for s in setups}
    base, noop, odk = by["postfix"], by.get("noop"), by.get("opendkim")
    print(f"\n{args.messages} messages x {args.sessions} sessions, {args.rounds} rounds, "
          f"RSA-{args.bits}, one message per session; msgs/s = median (min-max); "
          "ratios = median of same-round ratios (quartiles to OpenDKIM); "
          "CPU = milter processes' µs per message, median over rounds")
    if load is not None:
        print(f"corpus mix: {len(load.mix)} messages, median {load.bytes:.0f} bytes")
    w = max(12, *(len(s.name) + 2 for s in setups))
    header = (f"{'config':<{w}}{'load':>8}{'msgs/s':>8}{'range':>12}{'vs postfix':>12}"
              f"{'vs noop':>9}{'vs opendkim':>13}{'quartiles':>12}{'CPU µs':>8}{'CPU/odk':>9}")
    print(header)
    print("-" * len(header))
    for wl in workloads:
        for s in setups:
            r = s.rates[wl]
            vs = [f"{statistics.median(_ratios(r, ref.rates[wl])):.2f}" if ref else "-"
                  for ref in (base, noop, odk)]
            quart = "-"
            if odk is not None and len(r) >= 2:
                q1, _, q3 = statistics.quantiles(_ratios(r, odk.rates[wl]), n=4,
                                                 method="inclusive")
                quart = f"{q1:.2f}-{q3:.2f}"
            cpu = s.cpu.get(wl)
            cpu_s = f"{statistics.median(cpu):.0f}" if cpu else "-"
            cpu_odk = "-"
            if cpu and odk is not None and odk.cpu.get(wl):
                cpu_odk = f"{statistics.median(_ratios(cpu, odk.cpu[wl])):.2f}"
            label = "corpus" if wl == CORPUS else f"{int(wl) // 1024}K"
            print(f"{s.name:<{w}}{label:>8}{statistics.median(r):>8.0f}"
                  f"{f'{min(r):.0f}-{max(r):.0f}':>12}{vs[0]:>12}{vs[1]:>9}{vs[2]:>13}"
                  f"{quart:>12}{cpu_s:>8}{cpu_odk:>9}")


def parse_compare(spec: str) -> tuple[str, Path]:
    name, sep, path = spec.partition("=")
    if not sep or not name or not (Path(path) / "milter" / "outpost").is_dir():
        raise argparse.ArgumentTypeError(f"expected NAME=CHECKOUT (with milter/outpost), got {spec!r}")
    return name, Path(path).resolve()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=1000, help="messages per run")
    parser.add_argument("--sessions", type=int, default=10, help="parallel SMTP sessions")
    parser.add_argument("--workloads", default="2048,20480,corpus",
                        help="filler sizes in bytes and/or 'corpus'")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds")
    parser.add_argument("--warmup", type=int, default=100, help="warm-up messages per config")
    parser.add_argument("--verify", type=int, default=10,
                        help="sample messages per config checked for a valid signature")
    parser.add_argument("--bits", type=int, default=2048, help="RSA key size")
    parser.add_argument("--workers", default="0",
                        help="Outpost worker counts side by side (0: its default, the cores)")
    parser.add_argument("--corpus-limit", type=int, default=0,
                        help="replay only this many corpus messages (0: all)")
    parser.add_argument("--compare", action="append", type=parse_compare, default=[],
                        metavar="NAME=CHECKOUT", help="also Outpost from another checkout")
    parser.add_argument("--without", action="append", type=parse_without, default=[],
                        metavar="PART[+PART]",
                        help="also Outpost without the spam engine (spam), DKIM signing "
                             "(dkim) or both (spam+dkim): what each part costs, same run")
    parser.add_argument("--skip", action="append", default=[], metavar="NAME",
                        help="leave out noop or opendkim")
    parser.add_argument("--sender", default=f"bench@{DOMAIN}")
    parser.add_argument("--recipient", default="rcpt@example.net")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args(argv)
    args.reuse = False                   # bench.throughput.run_source: one message per session
    workloads: list = [CORPUS if w == CORPUS else int(w) for w in args.workloads.split(",")]
    workers = [int(w) for w in args.workers.split(",")]
    load = CorpusLoad(args.corpus_limit) if CORPUS in workloads else None
    send = make_send(load)

    with bench_site(args.keep) as (root, sink_port):
        key, txt = make_key(root, args.bits)
        makers = [("postfix", lambda: Setup("postfix", None, signs=False)),
                  ("noop", lambda: Setup("noop", [sys.executable, str(REPO / "bench" / "noop_milter.py"),
                                                  "{socket}"], signs=False)),
                  ("opendkim", lambda: opendkim_setup(root, key))]
        for n in workers:
            name = "outpost" if not n else f"outpost-w{n}"
            makers.append((name, lambda name=name, n=n: outpost_full(name, root, key, REPO,
                                                                      sys.executable, n)))
        for parts in args.without:
            name = "outpost-no-" + "-".join(p for p in PARTS if p in parts)
            makers.append((name, lambda name=name, parts=parts: outpost_full(
                name, root, key, REPO, sys.executable, workers[0], parts)))
        for cname, path in args.compare:
            makers.append((cname, lambda cname=cname, path=path: outpost_full(
                cname, root, key, path, sys.executable, workers[0])))
        from tests.services.sink import SmtpSink
        setups: list[Setup] = []
        capture = SmtpSink()
        try:
            setups = [make() for name, make in makers if name not in args.skip]
            capture.start()
            start_setups(setups, sink_port, capture.port, root)
            for s in setups:
                print(check_signing(s, argparse.Namespace(**{**vars(args)}), 2048, capture, txt),
                      flush=True)
                for wl in workloads:
                    send(s.instance, args, args.warmup, wl)
            run_rounds(setups, args, workloads, send=send)
            report(setups, workloads, args, load)
        finally:
            stop_setups(setups)
            capture.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
