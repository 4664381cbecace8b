"""``make demo`` (``python -m scripts.demo``) through a real Postfix: every
step shows what it is there to show, so a change that breaks the front
page's first command fails here."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_make_demo_shows_every_step():
    done = subprocess.run([sys.executable, "-m", "scripts.demo"], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    out = re.sub(r"\x1b\[[0-9;]*m", "", done.stdout)          # no colours
    assert done.returncode == 0, out + done.stderr
    expected = [
        r"1\. alice authenticates.*\n   SMTP: 250 ",                       # accepted and stamped
        r"X-Outpost-ID: \S+",
        r"2\. an unknown server.*\n   SMTP: 550 5\.7\.1 ",                   # refused unmapped
        r"forged copies removed",
        r"4\. alice's account sends spam\n   SMTP: 550 5\.7\.1 Message rejected as spam",
        r"received an ARF report",
        r"X-Outpost-Evidence: volume_spike\(",                              # the burst: evidence,
        r"then held by the MTA",                                           # then held,
        r"another identity of webfarm .*no evidence",                      # the other untouched
        r"the abuse desk got: \[Outpost\] volume",
        r"outpost_messages_total",
        r"counted complaint against alice/alice@example\.com",             # a complaint attributed
        r"its decision log holds \d+ messages",                            # the panel answered
    ]
    missing = [p for p in expected if not re.search(p, out)]
    assert not missing, f"missing from the demo's output: {missing}\n{out}"
