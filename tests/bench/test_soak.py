"""bench/soak.py in miniature: a few sessions of good, spam and hostile mail
through real Postfix and Outpost, one worker killed, and its invariants."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]          # bench/ is a package of the repository


def figure(out: str, label: str) -> int:
    match = re.search(rf"^  {re.escape(label)} +(\d+)", out, re.M)
    assert match, f"no {label!r} line in:\n{out}"
    return int(match.group(1))


def test_short_soak_loses_nothing_and_stamps_everything():
    proc = subprocess.run([sys.executable, "-m", "bench.soak", "--minutes", "0.25", "--sessions", "5",
                           "--kill-every", "10", "--drain-timeout", "60"],
                          capture_output=True, text=True, cwd=ROOT, timeout=150)
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    assert figure(out, "delivered unstamped") == 0
    assert figure(out, "lost") == 0
    assert figure(out, "delivered though refused") == 0
    assert figure(out, "workers killed") == 1
    assert figure(out, "messages in") > 20
    assert figure(out, "accepted (2xx)") > 0 and figure(out, "refused (5xx)") > 0, out
    assert "OK: nothing unstamped, nothing lost, memory flat" in out
