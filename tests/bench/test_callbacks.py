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


def test_store_trips_per_stage():
    """``--store-trips`` counts what the store does per stage: with
    everything on, the RCPT look at the limits is a read (no transaction,
    no writer lock) and the end of the message makes the two write
    transactions (bulk counts, rate-limit count).  The statements are a
    few per fingerprint, whatever its volume: 29 in all since the running
    totals of the bulk fingerprints (13 before them, when a count summed
    the fingerprint's entries and cost 3.5 ms at 1 000 of them; 54 and three
    transactions before that)."""
    out = subprocess.run([sys.executable, "-m", "bench.callbacks", "--messages", "30", "--config", "full",
                          "--store-trips"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[1].split()[:7] == ["stage", "calls", "transactions", "writer", "lock", "statements", "reads"]
    rows = {}
    for line in lines[3:]:
        name, _, rest = line.partition("  ")
        rows[name.strip()] = [float(x) for x in rest.split()[:6]]
    calls, tx, lock, statements, reads, writes = rows["rcpt 1"]
    assert (tx, lock, statements, reads, writes) == (0, 0, 1, 1, 0)
    assert rows["eom"][1:3] == [2, 2]
    calls, tx, lock, statements, reads, writes = rows["per message"]
    assert (tx, lock) == (2, 2) and statements <= 30
    assert rows["flush (2 s)"][1] == 2


def test_stages_are_timed_with_the_clock_passed_in():
    """``--clock`` reaches the timing as an argument, not as module state."""
    import itertools

    from bench import callbacks
    assert not hasattr(callbacks, "clock")
    ticks = itertools.count()
    got = callbacks.measure(callbacks.NoopMilter, 3, b"x\r\n", lambda: float(next(ticks)))
    assert set(got) == set(callbacks.STAGES) and set(got.values()) == {1e6}   # one tick each
