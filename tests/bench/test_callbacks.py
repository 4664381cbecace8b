"""bench/callbacks.py runs both milters through every stage and reports them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]          # bench/ is a package of the repository


@pytest.mark.parametrize("config", ["bare", "full"])
def test_every_stage_is_reported_for_both_milters(config):
    out = subprocess.run([sys.executable, "-m", "bench.callbacks", "--messages", "40", "--rounds", "1",
                          "--config", config], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr      # Outpost must accept the message (CONTINUE at eom)
    rows = {line.split()[0]: line.split()[1:] for line in out.stdout.splitlines()[2:]}
    for stage in ("negotiate", "connect", "mail", "rcpt", "headers", "body", "eom", "close"):
        noop, ours, diff = (float(x) for x in rows[stage])
        assert noop > 0 and ours > 0 and abs(ours - noop - diff) < 0.11, (stage, rows[stage])
    assert float(rows["total"][1]) > float(rows["total"][0])   # Outpost does more than nothing
    assert "x the do-nothing milter" in out.stdout
    assert out.stdout.startswith(f"{config} configuration")
