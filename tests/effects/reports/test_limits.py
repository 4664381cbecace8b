"""#14.7: report limits per user and in total, and a bounded spool (a real
spool directory and a real SMTP sink on loopback)."""

import json
import logging
import time

from outpost.effects.reports import ReportSender, Spool, list_items, overflow_counts
from outpost.effects.reports.settings import SpoolLimits

from .arfcheck import check
from .conftest import make_event, make_settings


def incidents(received):
    return sum(int(check(r.data).fields.get("incidents", ["1"])[0]) for r in received)


def test_rotating_identities_are_limited_per_user(tmp_path, sink):
    """A script with a new identity per message: 100 identities with one
    block each.  The per-identity limit never bites; the per-user limit
    does, and the rest goes out as ONE aggregated report once the window
    has room again.  Another user of the same spool is not held back."""
    settings = make_settings(tmp_path, port=sink.port, max_per_hour=10, max_per_user=5,
                             window=3600.0)
    spool = Spool.from_settings(settings)
    sender = ReportSender(spool, settings)
    t0 = time.time()
    for i in range(100):
        spool.put(make_event(i, identity=f"rot{i:03d}", arrival_time=t0 + i))
    spool.put(make_event(500, user="shop", identity="carol", sender="carol@shop.example"))
    stats = sender.run_once(now=t0 + 120)
    assert (stats.reported, stats.held, stats.sent) == (6, 95, 6)
    users = sorted(check(r.data).fields["original-mail-from"][0] for r in sink.received)
    assert users.count("<alice@shop.example>") == 5 and "<carol@shop.example>" in users
    for k in range(5):                     # within the hour: nothing more
        assert sender.run_once(now=t0 + 200 + k * 60).sent == 0
    stats = sender.run_once(now=t0 + 120 + 3601)
    assert (stats.aggregated, stats.folded, stats.sent) == (1, 95, 1)
    assert len(sink.received) == 7
    assert check(sink.received[-1].data).fields["incidents"] == ["95"]
    assert incidents(sink.received) == 101
    assert list_items(spool) == []


def test_total_limit_holds_every_user(tmp_path, sink):
    settings = make_settings(tmp_path, port=sink.port, max_total=3)
    spool = Spool.from_settings(settings)
    sender = ReportSender(spool, settings)
    t0 = time.time()
    for i in range(6):
        spool.put(make_event(i, user=f"user{i}", arrival_time=t0 + i))
    stats = sender.run_once(now=t0 + 10)
    assert (stats.reported, stats.held, stats.sent) == (3, 3, 3)
    assert sender.run_once(now=t0 + 20).sent == 0
    stats = sender.run_once(now=t0 + 10 + 3601)     # room for three more: one per user
    assert (stats.aggregated, stats.sent) == (3, 3)
    assert incidents(sink.received) == 6


def test_full_spool_counts_instead_of_writing(tmp_path, sink, caplog):
    """The sender is not running and blocks keep coming: at ``max_spool``
    files no more files are written; the blocks are counted per user,
    logged (not once per block), and reported later as Incidents."""
    settings = make_settings(tmp_path, port=sink.port, max_spool=SpoolLimits(files=10))
    spool = Spool.from_settings(settings)
    t0 = time.time()
    with caplog.at_level(logging.WARNING, logger="outpost.reports"):
        ids = [spool.put(make_event(i, arrival_time=t0 + i)) for i in range(150)]
    assert len([i for i in ids if i is not None]) == 10
    assert ids[10:] == [None] * 140
    assert spool.usage()[0] == 10
    counted = json.loads((tmp_path / "spool" / "overflow.json").read_text())
    assert counted["webfarm"]["count"] == 140
    assert counted["webfarm"]["event"]["queue_id"] == "4Q00149"
    assert overflow_counts(spool) == [("webfarm", 140)]            # shown by `outpost reports list`
    full = [r for r in caplog.records if "is full" in r.getMessage()]
    assert [r.getMessage().split("bytes): ")[1].split()[0] for r in full] == ["1", "10", "100"]
    sender = ReportSender(spool, settings)
    stats = sender.run_once(now=t0 + 200)
    assert stats.overflow == 1 and stats.reported == 10 and stats.sent == 11
    assert incidents(sink.received) == 150
    assert not (tmp_path / "spool" / "overflow.json").exists() and overflow_counts(spool) == []
    summary = [r for r in sink.received if b"Incidents: 140" in r.data]
    assert len(summary) == 1 and b"report spool was full" in summary[0].data
    # room again: the next block is spooled as a file (by a worker whose count
    # of the spool is fresh: each worker recounts at most once a second)
    assert Spool.from_settings(settings).put(make_event(999)) is not None


def test_full_spool_bound_counts_bytes(tmp_path):
    settings = make_settings(tmp_path, max_spool=SpoolLimits(files=1000, bytes=1_000_000),
                             include_body=True)
    spool = Spool.from_settings(settings)
    big = b"Subject: x\r\n\r\n" + b"y" * 300_000
    got = [spool.put(make_event(i, original=big)) for i in range(6)]
    assert [g is not None for g in got] == [True, True, True, False, False, False]
    assert spool.usage()[1] <= 1_000_000
