#!/usr/bin/env python3
"""Spam verdict quality: Outpost's built-in engine versus SpamAssassin.

Two measurements on the SpamAssassin 2002 corpus, every message looked at
as outbound mail (transport headers and list footers dropped, corpus owner
addresses blanked):

* random folds: K-fold cross-validation.  For each fold a fresh Bayes model
  is trained on the other folds; the engine thresholds are tuned by an
  inner cross-validation on those training folds only, then the test fold
  is scanned.  Random folds flatter a filter: the same campaigns are on
  both sides.
* temporal split: each label sorted by the message's ``Date:``; the oldest
  ``--train-share`` (70 %) is the training part, the newer rest the test
  part.  The thresholds are calibrated on a temporal validation slice, the
  newest ``--valid-share`` (25 %) of the training part, scored by a model
  trained on the older rest; the model that scans the test part is then
  trained on the whole training part.  A ``Date:`` that cannot be parsed,
  or that lies more than 7 days from the topmost ``Received:`` stamp (the
  corpus owner's own server: forged dates such as the year 102 or 2028),
  is replaced by that stamp; a message with neither sorts last (newest).

The same outbound messages go to a local spamd (Debian ``spamassassin``,
``--local``: no network tests, no Bayes, no auto-learn) with its default
threshold 5.0, alone and as extra evidence of the built-in engine through
Outpost's adapter (``spamassassin(P)`` adds SA's score, ``weight`` 1).

Scan time is parse + scan of one message on one core (this process).

Usage: python -m bench.spam_quality [--quick] [--folds K] [--no-sa] [--corpus DIR]
                                    [--only random|temporal]
"""

from __future__ import annotations

import argparse
import datetime
import email.parser
import email.utils
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from outpost.spam.base import MessageView, ScanContext
from outpost.spam.bayes import BayesCheck, BayesCheckSettings, Model, strip_transport_headers, tokenize
from outpost.spam.engine import Engine, ScoringSettings
from outpost.spam.external import SpamdCheck, SpamdSettings
from outpost.spam.message import parse_message
from outpost.spam.rules import default_rules

ROOT = Path(__file__).resolve().parent.parent

LABELS = ("spam", "ham", "hard-ham")
CTX = ScanContext(user="bench", identity="bench@example.org", sender="bench@example.org")
# Threshold tuning targets on the inner (training-fold) scores.
TARGET_HAM_FP = 0.002        # at most 0.2 % of ham classed spam
TARGET_HARD_FP = 0.005       # at most 0.5 % of hard ham classed spam
TARGET_HAM_UNSURE = 0.005    # at most 0.5 % of ham at or above 'unsure'
TARGET_HARD_UNSURE = 0.05    # at most 5 % of hard ham at or above 'unsure'
GRID = [x / 2 for x in range(2, 25)]    # 1.0 … 12.0


DATE_SLACK = 7 * 86400       # a Date: further than this from the Received: stamp is forged


@dataclass
class Item:
    label: str
    outbound: bytes
    view: MessageView
    tokens: frozenset[str]
    when: float = float("inf")  # seconds since the epoch (inf: no usable date)
    when_from: str = "none"     # 'date', 'received' or 'none'
    name: str = ""
    sa: Optional[float] = None  # SpamAssassin's evidence points, when it ran
    sa_seconds: float = 0.0


def _stamp(value: Optional[str]) -> Optional[float]:
    if not value:
        return None
    try:
        dt = email.utils.parsedate_to_datetime(value.strip())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if dt is None:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=datetime.timezone.utc)
    try:
        return dt.timestamp()
    except (OverflowError, ValueError, OSError):
        return None


def message_time(raw: bytes) -> tuple[float, str]:
    """When a corpus message was written: its ``Date:``, unless that cannot
    be parsed or lies more than ``DATE_SLACK`` from the topmost
    ``Received:`` stamp (then that stamp); ``inf`` when neither is usable."""
    end = raw.find(b"\n\n")
    head = email.parser.BytesHeaderParser().parsebytes(raw[:end if end >= 0 else len(raw)][:65536])
    date = _stamp(head.get("Date"))
    received = head.get_all("Received") or []
    recv = _stamp(str(received[0]).rpartition(";")[2]) if received else None
    if date is not None and (recv is None or abs(date - recv) <= DATE_SLACK):
        return date, "date"
    if recv is not None:
        return recv, "received"
    return float("inf"), "none"


def find_corpus(arg: Optional[str]) -> Path:
    cands = [Path(arg)] if arg else []
    if os.environ.get("OUTPOST_CORPUS"):
        cands.append(Path(os.environ["OUTPOST_CORPUS"]))
    cands += [ROOT.parent / "shared/corpus/sa-2002", ROOT.parent.parent / "shared/corpus/sa-2002",
              Path("/work/shared/corpus/sa-2002")]
    for c in cands:
        if (c / "spam").is_dir():
            return c
    raise SystemExit("corpus not found (use --corpus or OUTPOST_CORPUS)")


def load(corpus: Path, quick: bool, seed: int) -> list[Item]:
    rng = random.Random(seed)
    items = []
    for label in LABELS:
        files = sorted((corpus / label).glob("*.eml"))
        if quick:
            files = rng.sample(files, min(len(files), {"spam": 200, "ham": 500, "hard-ham": 100}[label]))
        for f in files:
            raw = f.read_bytes()
            ob = strip_transport_headers(raw, redact_corpus_owner=True)
            v = parse_message(ob)
            when, when_from = message_time(raw)
            items.append(Item(label, ob, v, frozenset(tokenize(v)), when, when_from, f.name))
    return items


def folds_of(items: list[Item], k: int, seed: int) -> list[int]:
    """Stratified fold number per item."""
    rng = random.Random(seed)
    fold = [0] * len(items)
    for label in LABELS:
        idx = [i for i, it in enumerate(items) if it.label == label]
        rng.shuffle(idx)
        for n, i in enumerate(idx):
            fold[i] = n % k
    return fold


def train(items: list[Item]) -> Model:
    m = Model()
    for it in items:
        m.learn(it.tokens, it.label == "spam")
    return m.pruned(2)


def engine_for(model: Model, unsure: float = 3.0, spam: float = 5.0) -> Engine:
    return Engine([BayesCheck(model, BayesCheckSettings())] + default_rules(),
                  ScoringSettings(unsure=unsure, spam=spam))


def choose_thresholds(scores: list[tuple[str, float]]) -> tuple[float, float]:
    """The lowest (unsure, spam) thresholds of ``GRID`` that keep the
    labelled ``scores`` within the target false-positive rates."""
    def rate(label: str, t: float) -> float:
        xs = [s for lab, s in scores if lab == label]
        return sum(s >= t for s in xs) / len(xs) if xs else 0.0

    spam_t = next((t for t in GRID if rate("ham", t) <= TARGET_HAM_FP
                   and rate("hard-ham", t) <= TARGET_HARD_FP), GRID[-1])
    unsure_t = next((t for t in GRID if rate("ham", t) <= TARGET_HAM_UNSURE
                     and rate("hard-ham", t) <= TARGET_HARD_UNSURE), spam_t)
    return min(unsure_t, spam_t), spam_t


def scan_scores(eng: Engine, items: list[Item]) -> tuple[list[float], float]:
    """Scores of ``items`` (parsed again: parsing is part of the cost) and
    the seconds spent."""
    scores, spent = [], 0.0
    for it in items:
        t0 = time.perf_counter()
        v = parse_message(it.outbound)
        sc = eng.scan(v, CTX).score
        spent += time.perf_counter() - t0
        scores.append(sc)
    return scores, spent


def with_sa(items: list[Item], scores: list[float]) -> list[float]:
    """Outpost's score plus SpamAssassin's evidence, as the adapter adds it."""
    return [round(s + (it.sa or 0.0), 1) for it, s in zip(items, scores)]


def inner_scores(items: list[Item], k: int, seed: int) -> tuple[list[Item], list[float]]:
    """Scores of every training item by an inner cross-validation."""
    fold = folds_of(items, k, seed + 1)
    held_all: list[Item] = []
    scores: list[float] = []
    for f in range(k):
        eng = engine_for(train([it for it, g in zip(items, fold) if g != f]))
        held = [it for it, g in zip(items, fold) if g == f]
        got, _ = scan_scores(eng, held)
        held_all += held
        scores += got
    return held_all, scores


def labelled(items: list[Item], scores: list[float]) -> list[tuple[str, float]]:
    return [(it.label, s) for it, s in zip(items, scores)]


@dataclass
class Tally:
    n: dict
    spam: dict
    unsure: dict
    seconds: float = 0.0

    @classmethod
    def new(cls) -> "Tally":
        z = {lab: 0 for lab in LABELS}
        return cls(dict(z), dict(z), dict(z))

    def add(self, label: str, cls_: str) -> None:
        self.n[label] += 1
        if cls_ == "spam":
            self.spam[label] += 1
        elif cls_ == "unsure":
            self.unsure[label] += 1

    def add_scores(self, items: list[Item], scores: list[float], unsure: float, spam: float) -> None:
        for it, s in zip(items, scores):
            self.add(it.label, "spam" if s >= spam else "unsure" if s >= unsure else "ham")

    def pct(self, d: dict, label: str) -> float:
        return 100.0 * d[label] / self.n[label] if self.n[label] else 0.0

    def line(self, name: str) -> str:
        total = sum(self.n.values())
        return ("%-28s detect %6.2f%% (unsure %5.2f%%) | ham FP %5.2f%% (unsure %5.2f%%) | "
                "hard-ham FP %6.2f%% (unsure %5.2f%%) | %7.2f ms/msg"
                % (name, self.pct(self.spam, "spam"), self.pct(self.unsure, "spam"),
                   self.pct(self.spam, "ham"), self.pct(self.unsure, "ham"),
                   self.pct(self.spam, "hard-ham"), self.pct(self.unsure, "hard-ham"),
                   1000.0 * self.seconds / total if total else 0.0))


@dataclass
class Result:
    """Tallies of one measurement: calibrated thresholds, the defaults and,
    when SpamAssassin ran, the engine with its evidence (calibrated)."""

    tuned: Tally
    default: Tally
    combined: Optional[Tally]
    chosen: list
    chosen_sa: list
    scanned: list = field(default_factory=list)   # the items tested


def run_outpost(items: list[Item], k: int, seed: int, fixed: ScoringSettings, sa: bool) -> Result:
    fold = folds_of(items, k, seed)
    res = Result(Tally.new(), Tally.new(), Tally.new() if sa else None, [], [])
    for f in range(k):
        training = [it for it, g in zip(items, fold) if g != f]
        testing = [it for it, g in zip(items, fold) if g == f]
        held, inner = inner_scores(training, k - 1, seed + f)
        unsure_t, spam_t = choose_thresholds(labelled(held, inner))
        res.chosen.append((unsure_t, spam_t))
        scores, spent = scan_scores(engine_for(train(training)), testing)
        res.tuned.add_scores(testing, scores, unsure_t, spam_t)
        res.default.add_scores(testing, scores, fixed.unsure, fixed.spam)
        res.tuned.seconds += spent
        res.scanned += testing
        if res.combined is not None:
            cu, cs = choose_thresholds(labelled(held, with_sa(held, inner)))
            res.chosen_sa.append((cu, cs))
            res.combined.add_scores(testing, with_sa(testing, scores), cu, cs)
    res.default.seconds = res.tuned.seconds
    return res


def temporal_split(items: list[Item], train_share: float, valid_share: float
                   ) -> tuple[list[Item], list[Item], list[Item]]:
    """(fit, validation, test): per label by time, the oldest ``train_share``
    is the training part (fit + validation, the validation slice being its
    newest ``valid_share``), the rest the test part."""
    fit, valid, test = [], [], []
    for label in LABELS:
        xs = sorted((it for it in items if it.label == label), key=lambda it: (it.when, it.name))
        cut = round(len(xs) * train_share)
        vcut = cut - round(cut * valid_share)
        fit += xs[:vcut]
        valid += xs[vcut:cut]
        test += xs[cut:]
    return fit, valid, test


def run_temporal(items: list[Item], train_share: float, valid_share: float,
                 fixed: ScoringSettings, sa: bool) -> tuple[Result, tuple]:
    fit, valid, test = temporal_split(items, train_share, valid_share)
    vscores, _ = scan_scores(engine_for(train(fit)), valid)
    res = Result(Tally.new(), Tally.new(), Tally.new() if sa else None, [], [])
    res.chosen.append(choose_thresholds(labelled(valid, vscores)))
    scores, spent = scan_scores(engine_for(train(fit + valid)), test)
    res.tuned.add_scores(test, scores, *res.chosen[0])
    res.default.add_scores(test, scores, fixed.unsure, fixed.spam)
    res.tuned.seconds = res.default.seconds = spent
    res.scanned = test
    if res.combined is not None:
        res.chosen_sa.append(choose_thresholds(labelled(valid, with_sa(valid, vscores))))
        res.combined.add_scores(test, with_sa(test, scores), *res.chosen_sa[0])
    return res, (fit, valid, test)


def span(part: list[Item], label: str) -> str:
    xs = [it.when for it in part if it.label == label and it.when != float("inf")]
    if not xs:
        return "%s -" % label
    def day(t: float) -> str:
        return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).strftime("%Y-%m-%d")
    return "%s %d %s..%s" % (label, sum(it.label == label for it in part), day(min(xs)), day(max(xs)))


# -- SpamAssassin ---------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_spamd(workdir: Path, port: int) -> subprocess.Popen:
    cfg = workdir / "cfg"
    cfg.mkdir()
    for p in Path("/etc/spamassassin").glob("*"):
        if p.is_file():
            shutil.copy(p, cfg / p.name)
    with open(cfg / "local.cf", "a") as f:
        f.write("\nuse_bayes 0\nbayes_auto_learn 0\nskip_rbl_checks 1\ndns_available no\n")
    proc = subprocess.Popen(
        ["spamd", "--local", "--siteconfigpath=%s" % cfg, "--listen=127.0.0.1:%d" % port,
         "--max-children=2", "--min-children=2",
         "-u", "debian-spamd" if os.geteuid() == 0 else os.environ.get("USER", "nobody"),
         "--helper-home-dir=%s" % workdir, "--syslog=stderr", "--pidfile=%s" % (workdir / "pid")],
        stdout=subprocess.DEVNULL, stderr=open(workdir / "spamd.log", "wb"), cwd=workdir)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("spamd exited: see %s" % (workdir / "spamd.log"))
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return proc
        except OSError:
            time.sleep(0.5)
    proc.terminate()
    raise RuntimeError("spamd did not start within 90 s")


def run_sa(items: list[Item], cache: Optional[Path] = None) -> Tally:
    """Score every item with spamd through Outpost's adapter
    (:class:`SpamdCheck`, as ``spam.spamassassin`` configures it, with a
    long timeout); sets ``item.sa`` (the evidence's points) and
    ``item.sa_seconds`` (the exchange's wall-clock, two at a time).
    ``cache``: a JSON file of earlier answers by label/file name (read,
    then completed): SpamAssassin's points do not depend on Outpost's code."""
    known: dict = json.loads(cache.read_text()) if cache is not None and cache.exists() else {}
    key = lambda it: "%s/%s" % (it.label, it.name)  # noqa: E731
    todo = [it for it in items if key(it) not in known]
    if todo:
        known.update((key(it), got) for it, got in zip(todo, _spamd_points(todo)))
        if cache is not None:
            cache.write_text(json.dumps(known))
    tally = Tally.new()
    for it in items:
        it.sa, it.sa_seconds = known[key(it)]
        tally.add(it.label, "spam" if it.sa >= 5.0 else "unsure" if it.sa >= 3.0 else "ham")
        tally.seconds += it.sa_seconds
    return tally


def _spamd_points(items: list[Item]) -> list[tuple[float, float]]:
    """(points, seconds of spamd wall-clock) per item."""
    with tempfile.TemporaryDirectory(prefix="outpost-sa-") as tmp:
        os.chmod(tmp, 0o755)
        port = free_port()
        proc = start_spamd(Path(tmp), port)
        check = SpamdCheck(SpamdSettings(port=port, timeout=120.0, command="CHECK"))

        def points(it: Item) -> tuple[float, float]:
            t0 = time.perf_counter()
            ev = check.check(it.view, CTX)          # [] when over max_size (skipped)
            return (ev[0].points if ev else 0.0), time.perf_counter() - t0
        try:
            with ThreadPoolExecutor(max_workers=2) as pool:
                return list(pool.map(points, items))
        finally:
            proc.terminate()
            proc.wait(30)


def ratio(a: float, b: float) -> str:
    return "%.2f" % (a / b) if b else ("inf" if a else "both 0")


def report(title: str, res: Result, fixed: ScoringSettings, sa: Optional[Tally]) -> None:
    print(title)
    print("  thresholds calibrated (unsure, spam): %s" % res.chosen)
    print("  " + res.tuned.line("outpost (calibrated)"))
    print("  " + res.default.line("outpost (defaults %.1f/%.1f)" % (fixed.unsure, fixed.spam)))
    if res.combined is not None and sa is not None:
        res.combined.seconds = res.tuned.seconds + sum(it.sa_seconds for it in res.scanned)
        print("  with SpamAssassin evidence, thresholds calibrated: %s" % res.chosen_sa)
        print("  " + res.combined.line("outpost + spamassassin"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="subsample (200 spam, 500 ham, 100 hard ham)")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=2002)
    ap.add_argument("--no-sa", action="store_true", help="skip SpamAssassin")
    ap.add_argument("--only", choices=("random", "temporal"), help="one of the two measurements")
    ap.add_argument("--train-share", type=float, default=0.7,
                    help="temporal split: oldest share of each label trained on (0.7)")
    ap.add_argument("--valid-share", type=float, default=0.25,
                    help="temporal split: newest share of the training part that calibrates "
                         "the thresholds (0.25)")
    ap.add_argument("--sa-cache", type=Path,
                    help="JSON file keeping SpamAssassin's points between runs (they do not depend "
                         "on Outpost's code)")
    ap.add_argument("--corpus")
    args = ap.parse_args()
    if args.folds < 2:
        ap.error("--folds must be >= 2")
    if not 0 < args.train_share < 1 or not 0 < args.valid_share < 1:
        ap.error("--train-share and --valid-share must be in (0, 1)")
    corpus = find_corpus(args.corpus)
    t0 = time.perf_counter()
    items = load(corpus, args.quick, args.seed)
    print("corpus %s: %s (loaded in %.1fs)" % (corpus, {lab: sum(it.label == lab for it in items)
                                                        for lab in LABELS}, time.perf_counter() - t0))
    sa: Optional[Tally] = None
    if not args.no_sa:
        if not shutil.which("spamd"):
            print("spamassassin (spamd) not installed: apt-get install spamassassin (or --no-sa)")
            return 1
        if args.only == "temporal":     # the fit part needs no SpamAssassin points
            _, valid, test = temporal_split(items, args.train_share, args.valid_share)
            sa = run_sa(valid + test, args.sa_cache)
        else:
            sa = run_sa(items, args.sa_cache)
    fixed = ScoringSettings()
    if args.only != "temporal":
        res = run_outpost(items, args.folds, args.seed, fixed, sa is not None)
        report("random folds (%d-fold cross-validation, thresholds by inner CV):" % args.folds,
               res, fixed, sa)
        if sa is not None:
            print("  " + sa.line("spamassassin alone"))
            for name, t in (("calibrated", res.tuned), ("defaults", res.default)):
                print("  ratios outpost (%s)/SA: detection %s, ham FP %s, hard-ham FP %s, time %s"
                      % (name, ratio(t.pct(t.spam, "spam"), sa.pct(sa.spam, "spam")),
                         ratio(t.pct(t.spam, "ham"), sa.pct(sa.spam, "ham")),
                         ratio(t.pct(t.spam, "hard-ham"), sa.pct(sa.spam, "hard-ham")),
                         ratio(t.seconds, sa.seconds)))
    if args.only != "random":
        res, (fit, valid, test) = run_temporal(items, args.train_share, args.valid_share, fixed,
                                               sa is not None)
        dated = {src: sum(it.when_from == src for it in items) for src in ("date", "received", "none")}
        report("temporal split (dates from %s):" % dated, res, fixed, sa)
        for name, part in (("fit", fit), ("validation", valid), ("test", test)):
            print("  %-10s %s" % (name, "; ".join(span(part, lab) for lab in LABELS)))
        if sa is not None:
            alone = Tally.new()
            for it in test:
                alone.add(it.label, "spam" if it.sa >= 5.0 else "unsure" if it.sa >= 3.0 else "ham")
            alone.seconds = sum(it.sa_seconds for it in test)
            print("  " + alone.line("spamassassin alone (test)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
