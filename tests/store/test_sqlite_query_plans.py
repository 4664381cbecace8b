"""No statement on the sqlite store's message path scans a table.

The state tables grow with the traffic of the window (an hour of mail is
hundreds of thousands of fingerprint rows), so a statement that reads a
whole table costs more as the relay gets busier: a row-value
``(fp, member) IN (VALUES ...)`` did, 5.9 ms a message at 10 000 messages in
the window, and no functional test could see it.  Here every statement the
store runs for real messages through the policy core (everything on: the
connection slot, the locks, the rate limits, the bulk fingerprints), for a
flush of the statistics and decision log, for what automatic locks and
volume anomalies add to a message and for the sweep, is traced and
asked for its query plan; a ``SCAN`` of a table fails the test.
"""

from __future__ import annotations

import re
import sqlite3
import time

import pytest

from bench.callbacks import outpost_factory, trace_sqlite
from outpost.core.transaction import Transaction, drive
from outpost.store.base import DecisionEntry, VolumeSpec
from outpost.store.sqlite import SqliteStore

TEXT = ("Dear customer, our spring catalogue is out: gardening tools, seeds and planters "
        "at the prices you know, delivered to your door within the week. ")


def message(i: int) -> Transaction:
    body = (f"Order number {i}. " + TEXT * 6 + f"\r\nhttp://shop{i}.example.org/spring\r\n").encode()
    headers = [("From", " Shop <bench@example.com>"), ("To", " <rcpt@example.net>"),
               ("Subject", f" Spring catalogue {i}"), ("Date", " Thu, 03 Dec 2026 06:00:00 +0000"),
               ("Message-ID", f" <{i}@example.com>")]
    return Transaction(sender="<bench@example.com>", recipients=("<rcpt@example.net>", "<r2@example.org>"),
                       headers=headers, body=body, client_ip="127.0.0.1", hostname="localhost",
                       client_port="40000", queue_id=f"4XyZ{i:02d}")


def shape(sql: str) -> str:
    """``sql`` with its values (the trace expands them) made ``?``."""
    return re.sub(r"'[^']*'|\b\d+(\.\d+)?\b", "?", sql)


def scans(db: sqlite3.Connection, sql: str) -> list[str]:
    """The steps of ``sql``'s plan that read a whole table of the store (a
    list of values in the statement, ``VALUES`` or a ``WITH`` of them, is
    scanned as it should be)."""
    tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    return [detail for *_, detail in db.execute("EXPLAIN QUERY PLAN " + sql)
            if detail.startswith("SCAN ") and detail.split()[1] in tables]


@pytest.fixture
def traced(tmp_path):
    """(runtime, the sqlite store, the statements it ran)."""
    _, runtime = outpost_factory(str(tmp_path), "full")
    store = runtime.store
    inner = getattr(store, "inner", store)                 # under the ResilientStore
    assert isinstance(inner, SqliteStore)
    statements: list[str] = []
    trace_sqlite(inner, statements.append)
    yield runtime, inner, statements
    runtime.close()


def test_the_message_path_reads_no_whole_table(traced):
    runtime, store, statements = traced
    for i in range(3):
        out = drive(runtime.policy, message(i))
        assert out.stage == "end of message" and not out.decision.blocks, out
    # what other configurations add to a message: automatic locks (the
    # events counted, a lock set, looked at, lifted) and volume anomalies
    assert store.record_event("spam:bench", 3600.0) == 1
    store.set_lock("bench", "spam", 600.0)
    assert store.get_lock("bench") is not None and store.remove_lock("bench")
    store.volume_add("bench/bench@example.com", ["d1", "d2"], 2,
                     VolumeSpec(window=3600.0, decay=0.5, ttl=86400.0))
    store.stat_add([("accepted", 3)], [("user:bench", 3)])
    store.decision_add([DecisionEntry(time=time.time(), action="accept", queue_id="4XyZ00",
                                      user="bench", sender="bench@example.com", recipients=2)])
    store.stat_read("m", 5)
    store.fingerprint_add_message(["old"], "bench", 1, 0.001)
    time.sleep(0.01)
    store._next_sweep = 0.0                                 # and a sweep, with something to delete
    store.fingerprint_add_message(["new"], "bench", 1, 60.0)

    words = {"SELECT", "INSERT", "UPDATE", "DELETE", "REPLACE", "WITH"}
    run = {s for s in statements if s.lstrip().split(None, 1)[0].upper() in words}
    kinds = " ".join(run)
    for table in ("fingerprint", "fingerprint_member", "fingerprint_total", "rl_subwindow", "lock",
                  "stat", "decision", "volume", "event"):
        assert f"INTO {table} " in kinds, f"the workload never wrote {table}: the test is broken"
    assert "DELETE FROM fingerprint WHERE rowid" in kinds, "the sweep deleted nothing: the test is broken"
    with sqlite3.connect(store.path) as db:
        found = {shape(sql): scans(db, sql) for sql in sorted(run)}
    assert "\n".join(f"{sql}: {s}" for sql, s in sorted(found.items()) if s) == ""
