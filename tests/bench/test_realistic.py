"""bench/realistic.py without Postfix: the SMTP payload and the summary."""

from __future__ import annotations

import argparse

from bench.dkim_throughput import Setup
from bench.realistic import CORPUS, dot_stuff, report


def test_dot_stuff_doubles_leading_dots_and_ends_the_data():
    assert dot_stuff(b".a\n..b\nc") == b"..a\r\n...b\r\nc\r\n.\r\n"
    assert dot_stuff(b"x\r\n.\r\n") == b"x\r\n..\r\n.\r\n"


def _setup(name: str, rates: list[float], cpu: list[float]) -> Setup:
    s = Setup(name, None if name == "postfix" else ["x"], signs=name != "postfix")
    s.rates = {CORPUS: rates}
    s.cpu = {CORPUS: cpu} if cpu else {}
    return s


def test_report_pairs_rounds_and_compares_cpu_with_opendkim(capsys):
    setups = [_setup("postfix", [100, 200], []), _setup("noop", [50, 100], [800, 800]),
              _setup("opendkim", [40, 80], [2000, 2200]), _setup("outpost", [44, 80], [1800, 2200])]
    args = argparse.Namespace(messages=10, sessions=2, rounds=2, bits=2048)
    report(setups, [CORPUS], args, None)
    row = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("outpost "))
    # msgs/s median 62, vs postfix 0.42, vs noop 0.84, vs opendkim median(1.1, 1.0) = 1.05,
    # CPU median 2000, CPU / OpenDKIM's median(0.9, 1.0) = 0.95
    assert row.split() == ["outpost", "corpus", "62", "44-80", "0.42", "0.84", "1.05",
                           "1.02-1.08", "2000", "0.95"]
