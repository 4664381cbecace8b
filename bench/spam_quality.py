#!/usr/bin/env python3
"""Spam verdict quality: Outpost's built-in engine versus SpamAssassin.

K-fold cross-validation on the SpamAssassin 2002 corpus, every message
looked at as outbound mail (transport headers and list footers dropped,
corpus owner addresses blanked).  For each fold a fresh Bayes model is
trained on the other folds; the engine thresholds are tuned by an inner
cross-validation on those training folds only, then the test fold is
scanned.  The same outbound messages go to a local spamd (Debian
``spamassassin``, ``--local``: no network tests, no Bayes, no auto-learn)
with its default threshold 5.0.

Usage: python -m bench.spam_quality [--quick] [--folds K] [--no-sa] [--corpus DIR]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from outpost.spam.base import MessageView, ScanContext
from outpost.spam.bayes import BayesCheck, BayesCheckSettings, Model, strip_transport_headers, tokenize
from outpost.spam.engine import Engine, ScoringSettings
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


@dataclass
class Item:
    label: str
    outbound: bytes
    view: MessageView
    tokens: frozenset[str]


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
            ob = strip_transport_headers(f.read_bytes(), redact_corpus_owner=True)
            v = parse_message(ob)
            items.append(Item(label, ob, v, frozenset(tokenize(v))))
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


def tune(items: list[Item], k: int, seed: int) -> tuple[float, float]:
    """Thresholds from an inner cross-validation over training items."""
    fold = folds_of(items, k, seed + 1)
    scores: list[tuple[str, float]] = []
    for f in range(k):
        eng = engine_for(train([it for it, g in zip(items, fold) if g != f]))
        scores += [(it.label, eng.scan(it.view, CTX).score)
                   for it, g in zip(items, fold) if g == f]

    def rate(label: str, t: float) -> float:
        xs = [s for lab, s in scores if lab == label]
        return sum(s >= t for s in xs) / len(xs) if xs else 0.0

    spam_t = next((t for t in GRID if rate("ham", t) <= TARGET_HAM_FP
                   and rate("hard-ham", t) <= TARGET_HARD_FP), GRID[-1])
    unsure_t = next((t for t in GRID if rate("ham", t) <= TARGET_HAM_UNSURE
                     and rate("hard-ham", t) <= TARGET_HARD_UNSURE), spam_t)
    return min(unsure_t, spam_t), spam_t


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

    def pct(self, d: dict, label: str) -> float:
        return 100.0 * d[label] / self.n[label] if self.n[label] else 0.0

    def line(self, name: str) -> str:
        total = sum(self.n.values())
        return ("%-22s detect %6.2f%% (unsure %5.2f%%) | ham FP %5.2f%% (unsure %5.2f%%) | "
                "hard-ham FP %6.2f%% (unsure %5.2f%%) | %7.2f ms/msg"
                % (name, self.pct(self.spam, "spam"), self.pct(self.unsure, "spam"),
                   self.pct(self.spam, "ham"), self.pct(self.unsure, "ham"),
                   self.pct(self.spam, "hard-ham"), self.pct(self.unsure, "hard-ham"),
                   1000.0 * self.seconds / total if total else 0.0))


def run_outpost(items: list[Item], k: int, seed: int, fixed: ScoringSettings) -> tuple[Tally, Tally, list]:
    fold = folds_of(items, k, seed)
    tuned, default = Tally.new(), Tally.new()
    chosen = []
    for f in range(k):
        training = [it for it, g in zip(items, fold) if g != f]
        testing = [it for it, g in zip(items, fold) if g == f]
        unsure_t, spam_t = tune(training, k - 1, seed + f)
        chosen.append((unsure_t, spam_t))
        model = train(training)
        eng = engine_for(model, unsure_t, spam_t)
        eng_default = engine_for(model, fixed.unsure, fixed.spam)
        for it in testing:
            t0 = time.perf_counter()
            v = parse_message(it.outbound)          # parsing is part of the per-message cost
            verdict = eng.scan(v, CTX)
            tuned.seconds += time.perf_counter() - t0
            tuned.add(it.label, verdict.cls)
            default.add(it.label, eng_default.classify(verdict.score))
    default.seconds = tuned.seconds
    return tuned, default, chosen


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


def spamd_score(port: int, raw: bytes) -> float:
    with socket.create_connection(("127.0.0.1", port), timeout=120) as s:
        s.sendall(b"CHECK SPAMC/1.5\r\nContent-length: %d\r\n\r\n" % len(raw) + raw)
        s.shutdown(socket.SHUT_WR)
        chunks = []
        while True:
            b = s.recv(65536)
            if not b:
                break
            chunks.append(b)
    resp = b"".join(chunks).decode("latin-1")
    for line in resp.split("\r\n"):
        if line.startswith("Spam:"):
            return float(line.split(";")[1].split("/")[0])
    raise RuntimeError("unexpected spamd reply: %r" % resp[:200])


def run_sa(items: list[Item]) -> Tally:
    tally = Tally.new()
    with tempfile.TemporaryDirectory(prefix="outpost-sa-") as tmp:
        os.chmod(tmp, 0o755)
        port = free_port()
        proc = start_spamd(Path(tmp), port)
        try:
            t0 = time.perf_counter()
            with ThreadPoolExecutor(max_workers=2) as pool:
                scores = list(pool.map(lambda it: spamd_score(port, it.outbound), items))
            # wall-clock with two workers, times two: CPU-ish seconds per message
            tally.seconds = (time.perf_counter() - t0) * 2
        finally:
            proc.terminate()
            proc.wait(30)
    for it, s in zip(items, scores):
        tally.add(it.label, "spam" if s >= 5.0 else "unsure" if s >= 3.0 else "ham")
    return tally


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="subsample (200 spam, 500 ham, 100 hard ham)")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=2002)
    ap.add_argument("--no-sa", action="store_true", help="skip SpamAssassin")
    ap.add_argument("--corpus")
    args = ap.parse_args()
    if args.folds < 2:
        ap.error("--folds must be >= 2")
    corpus = find_corpus(args.corpus)
    t0 = time.perf_counter()
    items = load(corpus, args.quick, args.seed)
    print("corpus %s: %s (loaded in %.1fs)" % (corpus, {lab: sum(it.label == lab for it in items)
                                                        for lab in LABELS}, time.perf_counter() - t0))
    fixed = ScoringSettings()
    tuned, default, chosen = run_outpost(items, args.folds, args.seed, fixed)
    print("thresholds chosen by inner CV per fold (unsure, spam): %s" % chosen)
    print(tuned.line("outpost (CV thresholds)"))
    print(default.line("outpost (defaults %.1f/%.1f)" % (fixed.unsure, fixed.spam)))
    if args.no_sa:
        return 0
    if not shutil.which("spamd"):
        print("spamassassin (spamd) not installed: apt-get install spamassassin")
        return 1
    sa = run_sa(items)
    print(sa.line("spamassassin (local)"))

    def ratio(a: float, b: float) -> str:
        return "%.2f" % (a / b) if b else ("inf" if a else "both 0")
    for name, t in (("CV thresholds", tuned), ("defaults", default)):
        print("ratios outpost (%s)/SA: detection %s, ham FP %s, hard-ham FP %s, time %s"
              % (name, ratio(t.pct(t.spam, "spam"), sa.pct(sa.spam, "spam")),
                 ratio(t.pct(t.spam, "ham"), sa.pct(sa.spam, "ham")),
                 ratio(t.pct(t.spam, "hard-ham"), sa.pct(sa.spam, "hard-ham")),
                 ratio(t.seconds, sa.seconds)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
