"""Soak test: many parallel SMTP sessions of good, spam and hostile mail
through a real Postfix and a real Outpost (master + workers), with a
``kill -9`` of one worker every minute, for a fixed time.

    sessions (threads) -> throw-away Postfix (IP-relay and submission
    listeners of contrib/postfix, milter = Outpost) -> SMTP sink

Traffic, each message a fresh SMTP session (half the messages of every kind
also carry forged Outpost headers, tests/e2e/hostile.py ``forge``):

* good     ham of the SpamAssassin corpus (``/work/shared/corpus``, see
           tests/spam/helpers.py; generated text without it) from customer
           servers 203.0.113.x,
* spam     spam of the corpus (generated spammy text without it) from
           198.51.100.x,
* hostile  every message of tests/e2e/hostile.py (8-bit and invalid UTF-8,
           several From, broken MIME, forged Outpost headers), control
           characters in the XCLIENT login, and 500 recipients, from 192.0.2.x.

Every ``--kill-every`` seconds the youngest worker gets SIGKILL (the master
must start a new one); the oldest worker is spared, so its RSS over the run
shows whether memory stays flat.  At the end the Postfix queue is drained and
every accepted message looked up in the sink (by its ``X-Soak-Seq`` header).

Printed: messages in, accepted (2xx), refused (5xx), tempfailed (4xx),
delivered unstamped (must be 0: every delivered message carries exactly one
X-Outpost-ID / X-Outpost-User set and no forged Outpost header), lost (must
be 0: accepted but not delivered, or no SMTP answer at all), delivered
although refused or tempfailed (must be 0), and the RSS of the master and
the workers at the end of the warm-up and at the end (must be flat: the
spared worker may grow by at most ``--rss-bound-mb``).  Exit status 1 when
an invariant fails.

    sudo python -m bench.soak                         # 50 sessions, 10 minutes
    sudo python -m bench.soak --minutes 1 --sessions 20

Run as root (Postfix instance); everything started is stopped on exit and on
Ctrl-C.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import signal
import sys
import tempfile
import textwrap
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from outpost.effects.dkim import keygen
from outpost.spam.bayes import strip_transport_headers
from tests.e2e import hostile
from tests.e2e.outpost_proc import Outpost
from tests.services.postfix import PostfixInstance
from tests.services.redis import RedisServer
from tests.services.sink import SinkMessage, SmtpSink
from tests.services.smtp import build_message, send
from tests.spam.helpers import find_corpus

CONFIG = textwrap.dedent("""\
    hostname: relay.example.net
    report_abuse_to: abuse@example.net
    connection_limit: 200
    domains:
      - name: example.com
        dkim: {{selector: soak, key: {dkim_key}}}
    reports:
      spool_dir: {spool}
      smtp: {{host: 127.0.0.1, port: {report_port}}}
      listener_auth: none           # reports go straight to the bench's sink
    users:
      - name: good
        type: ip
        ips: [203.0.113.0/24]
        domains: [example.com]
      - name: spammer
        type: ip
        ips: [198.51.100.0/24]
        domains: [example.com]
      - name: hostile
        type: ip
        ips: [192.0.2.0/24]
        domains: [example.com]
      - name: carol
        type: login
        logins: [carol@example.com]
        domains: [example.com]
    """)

SENDER = hostile.SENDER
SEQ_RE = re.compile(rb"(?im)^X-Soak-Seq:[ \t]*(\d+)")
KINDS = (("good", 0.6), ("spam", 0.2), ("hostile", 0.2))
MANY_RCPTS = 500


# --------------------------------------------------------------------------
# Traffic
# --------------------------------------------------------------------------

@dataclass(frozen=True)
class Send:
    """One message to send: how, and what its sender expects."""

    kind: str                  # good | spam | hostile
    name: str
    data: bytes
    ip: str | None = None      # XCLIENT ADDR (IP relay listener)
    login: str | None = None   # XCLIENT LOGIN (submission listener)
    rcpts: tuple[str, ...] = ("x@dest.example",)
    mail_from: str = SENDER
    expect: str | None = None  # accepted | refused, when the catalogue says


class Traffic:
    """Messages of each kind: corpus or generated, and the hostile catalogue."""

    def __init__(self, corpus: Path | None, rng: random.Random) -> None:
        self.rng = rng
        # all of it: ham sent again and again would look like bulk mail
        self.ham = self._load(corpus / "ham") if corpus else []
        self.spam = self._load(corpus / "spam") if corpus else []
        self.source = str(corpus) if corpus else "generated"

    def _load(self, folder: Path) -> list[bytes]:
        return [self._as_sender((folder / name).read_bytes()) for name in sorted(os.listdir(folder))]

    @staticmethod
    def _as_sender(raw: bytes) -> bytes:
        """A corpus message as our customer sends it: transport headers
        dropped, From/Sender/Reply-To replaced, CRLF line ends."""
        raw = strip_transport_headers(raw)
        head, _, body = raw.replace(b"\r\n", b"\n").partition(b"\n\n")
        lines = re.split(rb"\n(?![ \t])", head)
        kept = [ln for ln in lines
                if not re.match(rb"(?i)(from|sender|reply-to|return-path|message-id):", ln)]
        head = b"\n".join([b"From: " + SENDER.encode()] + kept)
        return (head + b"\n\n" + body).replace(b"\n", b"\r\n")

    def _generated(self, spammy: bool) -> bytes:
        words = ("meeting", "report", "tomorrow", "invoice", "project", "lunch", "draft", "notes")
        if spammy:
            body = ("FREE!!! Click here http://cheap-pills.example/buy now to WIN $$$ "
                    "guaranteed CASH, no prescription VIAGRA, unsubscribe never\n") * 5
            return build_message(SENDER, "x@dest.example", subject="$$$ MAKE MONEY FAST $$$", body=body)
        body = " ".join(self.rng.choice(words) for _ in range(60)) + "\n"
        return build_message(SENDER, "x@dest.example", subject="about the " + self.rng.choice(words),
                             body=body)

    def pick(self) -> Send:
        rng = self.rng
        kind = rng.choices([k for k, _ in KINDS], [w for _, w in KINDS])[0]
        if kind == "good":
            data = rng.choice(self.ham) if self.ham else self._generated(False)
            # many senders: a false positive now and then locks one of them, not all good mail
            return Send("good", "ham", self.forged(data), ip=f"203.0.113.{rng.randint(1, 254)}",
                        rcpts=tuple(f"r{i}@dest.example" for i in range(rng.randint(1, 3))),
                        mail_from=f"u{rng.randint(1, 500)}@example.com")
        if kind == "spam":
            data = self.forged(rng.choice(self.spam) if self.spam else self._generated(True))
            # many spammers: each is locked after lock.after_spam blocks
            return Send("spam", "spam", data, ip=f"198.51.100.{rng.randint(1, 254)}",
                        mail_from=f"s{rng.randint(1, 300)}@example.com")
        ip = f"192.0.2.{rng.randint(1, 254)}"
        roll = rng.random()
        if roll < 0.05:
            return Send("hostile", f"{MANY_RCPTS} recipients", hostile.message(), ip=ip,
                        rcpts=tuple(f"m{i}@dest.example" for i in range(MANY_RCPTS)))
        if roll < 0.10:
            return Send("hostile", "CR/LF/NUL in the login", hostile.message(),
                        login=rng.choice(["carol+0D+0Ax", "carol@example.com+0Aforged", "x+00y"]),
                        expect="refused")
        case = rng.choice(hostile.ALL)
        return Send("hostile", case.name, self.forged(case.data), ip=ip,
                    expect="accepted" if case.accepted else "refused")

    def forged(self, data: bytes) -> bytes:
        """Half the messages carry forged Outpost headers too."""
        return hostile.forge(data) if self.rng.random() < 0.5 else data


# --------------------------------------------------------------------------
# Sink: what arrived (the message itself is not kept)
# --------------------------------------------------------------------------

@dataclass
class Arrival:
    rcpts: set = field(default_factory=set)
    copies: int = 0
    problems: list = field(default_factory=list)


class CountingSink(SmtpSink):
    """An SmtpSink that keeps, per X-Soak-Seq, the recipients delivered and
    what is wrong with the stamps; not the data (hours of mail)."""

    def __init__(self) -> None:
        super().__init__()
        self.arrivals: dict[int, Arrival] = defaultdict(Arrival)
        self.unknown = 0                      # arrived without an X-Soak-Seq
        self.samples: list[tuple] = []        # the first bad arrivals: (seq, problems, head)

    def _record(self, msg: SinkMessage) -> None:
        m = SEQ_RE.search(hostile.header_block(msg.data))
        problems = hostile.stamp_problems(msg.data)
        with self._cond:
            if (m is None or problems) and len(self.samples) < 5:
                self.samples.append((m and int(m.group(1)), problems or ["no X-Soak-Seq"],
                                     hostile.header_block(msg.data)[:2000]))
            if m is None:
                self.unknown += 1
                return
            a = self.arrivals[int(m.group(1))]
            a.rcpts.update(msg.rcpt_tos)
            a.copies += 1
            a.problems += problems
            self._cond.notify_all()


# --------------------------------------------------------------------------
# Sessions
# --------------------------------------------------------------------------

@dataclass
class Outcome:
    send: Send
    result: str                   # accepted | refused | tempfailed | unanswered
    accepted_rcpts: tuple = ()
    detail: str = ""


class Ledger:
    """What the clients saw, by sequence number."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.outcomes: dict[int, Outcome] = {}
        self._seq = 0

    def next_seq(self) -> int:
        with self.lock:
            self._seq += 1
            return self._seq

    def record(self, seq: int, outcome: Outcome) -> None:
        with self.lock:
            self.outcomes[seq] = outcome


def run_session(pf: PostfixInstance, traffic: Traffic, ledger: Ledger, seq: int) -> None:
    with ledger.lock:
        s = traffic.pick()
    data = b"X-Soak-Seq: %d\r\n" % seq + s.data
    try:
        if s.login is not None:
            r = send(pf.submission_port, xclient={"LOGIN": s.login}, mail_from=s.mail_from,
                     rcpt_tos=s.rcpts, message=data, timeout=120)
        else:
            r = send(pf.relay_port, xclient={"ADDR": s.ip}, mail_from=s.mail_from,
                     rcpt_tos=s.rcpts, message=data, timeout=120)
    except OSError as exc:                     # no SMTP answer (timeouts included)
        ledger.record(seq, Outcome(s, "unanswered", detail=f"{type(exc).__name__}: {exc}"))
        return
    if r.accepted:
        ok = tuple(a for a in s.rcpts if a not in r.refused_rcpts)
        ledger.record(seq, Outcome(s, "accepted", ok, str(r)))
    elif 500 <= r.code < 600:
        ledger.record(seq, Outcome(s, "refused", detail=str(r)))
    elif 400 <= r.code < 500:
        ledger.record(seq, Outcome(s, "tempfailed", detail=str(r)))
    else:
        ledger.record(seq, Outcome(s, "unanswered", detail=str(r)))


def session_loop(pf, traffic, ledger, stop: threading.Event, errors: list) -> None:
    while not stop.is_set():
        try:
            run_session(pf, traffic, ledger, ledger.next_seq())
        except Exception as exc:  # noqa: BLE001 - a bench bug must show, not hang the run
            errors.append(repr(exc))
            stop.set()


# --------------------------------------------------------------------------
# Processes
# --------------------------------------------------------------------------

def rss_kb(pid: int, field: str = "VmRSS") -> int | None:
    """``VmRSS`` (or ``RssAnon``, ``RssFile``...) of a process in kB."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def start_time(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as fh:
        return int(fh.read().rsplit(")", 1)[1].split()[19])


def socket_inodes(pid: int) -> set[str]:
    out = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:"):
                out.add(target)
    except OSError:
        pass
    return out


def workers(op: Outpost) -> list[int]:
    """The master's children that hold the listening socket (not the report
    sender, which closes it), oldest first."""
    listening = socket_inodes(op.proc.proc.pid)
    found = []
    for pid in op.children():
        try:
            if socket_inodes(pid) & listening:
                found.append((start_time(pid), pid))
        except OSError:
            continue
    return [pid for _, pid in sorted(found)]


# --------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------

@dataclass
class Report:
    args: argparse.Namespace
    ledger: Ledger
    sink: CountingSink
    reports: SmtpSink
    traffic: Traffic
    kills: list = field(default_factory=list)          # (pid, seconds until a new worker)
    respawn_failures: int = 0
    rss: dict = field(default_factory=dict)            # label -> (start kB, end kB)
    rss_trace: list = field(default_factory=list)      # spared worker's (RSS, anon) kB at each kill
    store_bytes: int = 0
    elapsed: float = 0.0
    stuck: int = 0                                     # still queued after the drain deadline
    client_errors: list = field(default_factory=list)

    def figures(self) -> dict:
        outcomes = self.ledger.outcomes
        by_result = Counter(o.result for o in outcomes.values())
        arrivals = self.sink.arrivals
        lost_msgs = []
        for seq, o in outcomes.items():
            if o.result == "accepted":
                got = arrivals[seq].rcpts if seq in arrivals else set()
                if not set(o.accepted_rcpts) <= got:
                    lost_msgs.append(seq)
        unstamped = sum(1 for a in arrivals.values() if a.problems) + self.sink.unknown
        refused_delivered = [seq for seq in arrivals
                             if seq in outcomes and outcomes[seq].result in ("refused", "tempfailed")]
        return {
            "in": len(outcomes),
            "accepted": by_result["accepted"],
            "refused": by_result["refused"],
            "tempfailed": by_result["tempfailed"],
            "unanswered": by_result["unanswered"],
            "unstamped": unstamped,
            "lost": len(lost_msgs) + by_result["unanswered"],
            "lost_seqs": lost_msgs[:10],
            "refused_delivered": len(refused_delivered),
            "delivered": sum(len(a.rcpts) for a in arrivals.values()),
        }

    def problems(self) -> list[str]:
        f = self.figures()
        out = []
        if f["unstamped"]:
            out.append(f"{f['unstamped']} message(s) delivered unstamped or with a forged header")
        if f["lost"]:
            out.append(f"{f['lost']} message(s) lost")
        if f["refused_delivered"]:
            out.append(f"{f['refused_delivered']} message(s) delivered although refused or tempfailed")
        if self.respawn_failures:
            out.append(f"{self.respawn_failures} killed worker(s) not replaced within 15 s")
        start, end = self.rss.get("spared worker", (0, 0))
        if end - start > self.args.rss_bound_mb * 1024:
            out.append(f"the spared worker's RSS grew by {(end - start) / 1024:.1f} MB "
                       f"(bound {self.args.rss_bound_mb} MB)")
        if self.client_errors:
            out.append(f"bench errors: {self.client_errors[:3]}")
        if f["in"] == 0:
            out.append("no message was sent")
        return out

    def print(self) -> None:
        f = self.figures()
        a = self.args
        outcomes = self.ledger.outcomes.values()
        print(f"\nsoak: {a.sessions} sessions for {self.elapsed / 60:.1f} min, {a.workers} workers, "
              f"{a.store} store, "
              f"kill -9 of a worker every {a.kill_every:g} s; traffic: {self.traffic.source}")
        rows = [
            ("messages in", f["in"], f"{f['in'] / max(self.elapsed, 1):.1f}/s"),
            ("accepted (2xx)", f["accepted"], f"{f['delivered']} deliveries at the sink"),
            ("refused (5xx)", f["refused"], ""),
            ("tempfailed (4xx)", f["tempfailed"], ""),
            ("delivered unstamped", f["unstamped"], "must be 0"),
            ("lost", f["lost"], f"must be 0 ({f['unanswered']} without an answer, "
                                f"{self.stuck} stuck in the queue)"),
            ("delivered though refused", f["refused_delivered"], "must be 0"),
        ]
        for label, n, note in rows:
            print(f"  {label:<26} {n:>8}  {note}")
        print("  by kind                  accepted  refused  tempfailed  no answer")
        per_kind = defaultdict(Counter)
        for o in outcomes:
            per_kind[o.send.kind][o.result] += 1
        for kind, _ in KINDS:
            c = per_kind[kind]
            print(f"    {kind:<22} {c['accepted']:>8} {c['refused']:>8} {c['tempfailed']:>11} "
                  f"{c['unanswered']:>10}")
        temp = Counter(f"{o.send.kind}: " + re.sub(r"\S+@\S+", "<addr>", o.detail)[:80]
                       for o in outcomes if o.result == "tempfailed")
        for text, n in temp.most_common(6):
            print(f"      tempfail x{n} {text}")
        internal = Counter(o.send.name for o in outcomes if "4.3.0" in o.detail)
        if internal:
            print(f"      451 4.3.0 by case: {dict(internal.most_common(4))}")
        odd = Counter(f"{o.send.kind} {o.send.name} {o.result}: {o.detail[:70]}" for o in outcomes
                      if (o.send.kind == "good" and o.result == "refused")
                      or (o.send.expect and o.result in ("accepted", "refused") and o.result != o.send.expect))
        for text, n in odd.most_common(5):
            print(f"      unexpected x{n}: {text}")
        print(f"  abuse reports delivered  {len(self.reports.messages):>8}")
        times = [t for _, t in self.kills if t is not None]
        print(f"  workers killed           {len(self.kills):>8}  replaced within "
              f"{max(times, default=0):.1f} s (max), {self.respawn_failures} not replaced")
        for label, (start, end) in self.rss.items():
            print(f"  RSS {label:<20} {start / 1024:>7.1f} MB -> {end / 1024:.1f} MB "
                  f"({(end - start) / 1024:+.1f} MB)")
        if self.rss_trace:
            print("  RSS spared worker, MB at each kill: "
                  + " ".join(f"{kb / 1024:.1f}" for kb, _ in self.rss_trace))
            print("    of which anonymous:               "
                  + " ".join(f"{kb / 1024:.1f}" for _, kb in self.rss_trace))
        if self.store_bytes:
            print(f"  store file at the end    {self.store_bytes / 1e6:>8.1f} MB")
        if f["lost_seqs"]:
            print(f"  lost (first): {f['lost_seqs']}")
        for seq, problems, head in self.sink.samples:
            o = self.ledger.outcomes.get(seq)
            print(f"  delivered with problems: seq {seq} ({o and o.send.kind} {o and o.send.name!r}, "
                  f"{o and o.result}): {problems}\n" + textwrap.indent(head.decode("latin-1"), "      | "))


def drain(pf: PostfixInstance, timeout: float) -> int:
    """Wait until Postfix's queue is empty; the number still queued."""
    deadline = time.monotonic() + timeout
    while True:
        left = len(pf.queue())
        if left == 0 or time.monotonic() > deadline:
            return left
        pf.flush()
        time.sleep(0.5)


def run(args: argparse.Namespace) -> Report:
    rng = random.Random(args.seed)
    traffic = Traffic(find_corpus() if not args.generated else None, rng)
    work = Path(tempfile.mkdtemp(prefix="outpost-soak-"))
    sink, reports, pf, op, redis = CountingSink(), SmtpSink(), None, None, None
    ledger = Ledger()
    report = Report(args, ledger, sink, reports, traffic)
    stop = threading.Event()
    threads: list[threading.Thread] = []
    try:
        sink.start()
        reports.start()
        pf = PostfixInstance(sink_port=sink.port, main_overrides={
            "local_header_rewrite_clients": "", "header_size_limit": "2000000",
            "smtpd_client_connection_count_limit": "0"})
        pf.start()
        key, _ = keygen("example.com", "soak", "rsa", 2048, str(work))
        store = None                                  # Outpost's default: sqlite in its directory
        if args.store == "redis":
            redis = RedisServer().start()
            store = redis.url
        op = Outpost(pf.milter_socket, CONFIG.format(dkim_key=key, spool=work / "spool",
                                                     report_port=reports.port),
                     workers=args.workers, store=store).start()
        deadline = time.monotonic() + 15
        while len(workers(op)) < args.workers:
            if time.monotonic() > deadline:
                raise RuntimeError(f"Outpost has {len(workers(op))} of {args.workers} workers")
            time.sleep(0.1)
        master = op.proc.proc.pid
        spared = workers(op)[0]

        started = time.monotonic()
        for i in range(args.sessions):
            t = threading.Thread(target=session_loop, args=(pf, traffic, ledger, stop, report.client_errors),
                                 name=f"session-{i}", daemon=True)
            t.start()
            threads.append(t)
        duration = args.minutes * 60
        warmup = min(30.0, duration / 5)
        stop.wait(warmup)
        rss_start = {"master": rss_kb(master), "spared worker": rss_kb(spared),
                     "other workers": sum(rss_kb(p) or 0 for p in workers(op) if p != spared)}
        next_kill = started + args.kill_every / 2          # kills at 0.5, 1.5, 2.5 ... periods
        while not stop.is_set():
            now = time.monotonic()
            if now >= started + duration:
                break
            if args.kill_every > 0 and now >= next_kill:
                next_kill += args.kill_every
                report.kills.append(kill_youngest(op, spared, args.workers, report))
                report.rss_trace.append((rss_kb(spared) or 0, rss_kb(spared, "RssAnon") or 0))
            stop.wait(max(0.0, min(next_kill, started + duration) - time.monotonic()))
        stop.set()
        for t in threads:
            t.join(150)
        report.elapsed = time.monotonic() - started
        rss_end = {"master": rss_kb(master), "spared worker": rss_kb(spared),
                   "other workers": sum(rss_kb(p) or 0 for p in workers(op) if p != spared)}
        if rss_end["spared worker"] is None:
            raise RuntimeError("the spared worker died")
        report.rss = {k: (rss_start[k] or 0, rss_end[k] or 0) for k in rss_start}
        report.stuck = drain(pf, args.drain_timeout)     # the sink records before its 250
        report.store_bytes = sum(f.stat().st_size for f in op.dir.glob("state.db*"))
        return report
    finally:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, signal.SIG_IGN)      # a second Ctrl-C must not skip this
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        stop.set()
        until = time.monotonic() + 10                       # sessions end on their own, or with
        for t in threads:                                   # the daemons below (daemon threads)
            t.join(max(0.0, until - time.monotonic()))
        if op is not None:
            op.stop(graceful=False)
            shutil.rmtree(op.dir, ignore_errors=True)
        if pf is not None:
            pf.cleanup()
        if redis is not None:
            redis.close()
        sink.stop()
        reports.stop()
        shutil.rmtree(work, ignore_errors=True)


def kill_youngest(op: Outpost, spared: int, n: int, report: Report) -> tuple[int, float | None]:
    """SIGKILL the youngest worker but the spared one; wait for the master
    to bring the count back to ``n``."""
    victims = [p for p in workers(op) if p != spared]
    if not victims:
        report.respawn_failures += 1
        return (0, None)
    pid = victims[-1]
    os.kill(pid, signal.SIGKILL)
    t0 = time.monotonic()
    while time.monotonic() - t0 < 15:
        current = workers(op)
        if pid not in current and len(current) >= n:
            return (pid, time.monotonic() - t0)
        time.sleep(0.05)
    report.respawn_failures += 1
    return (pid, None)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=10.0, help="how long to send (default 10)")
    p.add_argument("--sessions", type=int, default=50, help="parallel SMTP sessions (default 50)")
    p.add_argument("--kill-every", type=float, default=60.0,
                   help="seconds between two kill -9 of a worker (default 60; 0: none)")
    p.add_argument("--workers", type=int, default=2, help="Outpost workers (default 2)")
    p.add_argument("--rss-bound-mb", type=float, default=16.0,
                   help="largest RSS growth of the spared worker after warm-up (default 16 MB)")
    p.add_argument("--drain-timeout", type=float, default=180.0,
                   help="seconds to wait for Postfix's queue to empty at the end (default 180)")
    p.add_argument("--store", choices=("sqlite", "redis"), default="sqlite",
                   help="Outpost's store (default sqlite; redis: a private redis-server)")
    p.add_argument("--generated", action="store_true", help="generated text, not the corpus")
    p.add_argument("--seed", type=int, default=14)
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        print("soak: run as root (a private Postfix instance)", file=sys.stderr)
        return 2
    for sig in (signal.SIGINT, signal.SIGTERM):                  # stop cleanly on Ctrl-C or kill
        signal.signal(sig, signal.default_int_handler)
    try:
        report = run(args)
    except KeyboardInterrupt:
        print("soak: interrupted; Postfix, Outpost and the sinks are stopped", file=sys.stderr)
        return 130
    report.print()
    problems = report.problems()
    for problem in problems:
        print(f"FAIL: {problem}")
    if not problems:
        print("OK: nothing unstamped, nothing lost, memory flat")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
