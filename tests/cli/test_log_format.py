"""The daemon's log format: LogFormatter writes what the stock
logging.Formatter would with the same format string."""

import logging
import sys

from outpost.cli import LOG_FORMAT, LogFormatter


def record(msg, *args, exc_info=None, created=1_764_300_000.25):
    r = logging.LogRecord("outpost.message", logging.INFO, __file__, 1, msg, args, exc_info)
    r.created, r.msecs = created, (created - int(created)) * 1000
    return r


def test_same_line_as_the_stock_formatter():
    ours, stock = LogFormatter(), logging.Formatter(LOG_FORMAT)
    for r in (record("qid=Q1 ip=192.0.2.5 action=accept ms=0.4"),
              record("connection limit: %s holds %d of %d", "192.0.2.5", 10, 10),
              record("100% of the time", created=1_764_300_001.999)):
        assert ours.format(r) == stock.format(r)
    line = ours.format(record("hello"))
    assert line.endswith(" INFO outpost.message: hello") and ",250 outpost[" in line


def test_the_stamp_follows_the_clock():
    ours, stock = LogFormatter(), logging.Formatter(LOG_FORMAT)
    first, later = record("a", created=1_764_300_000.0), record("b", created=1_764_303_661.5)
    assert ours.format(first) == stock.format(first)
    assert ours.format(later) == stock.format(later)       # a new second: a new stamp
    assert ours.format(first) != ours.format(record("a", created=1_764_300_001.0))


def test_a_traceback_is_written_as_the_stock_formatter_does():
    try:
        raise KeyError("boom")
    except KeyError:
        info = sys.exc_info()
    ours, stock = LogFormatter(), logging.Formatter(LOG_FORMAT)
    text = ours.format(record("internal error", exc_info=info))
    assert text == stock.format(record("internal error", exc_info=info))
    assert "Traceback (most recent call last)" in text and "KeyError: 'boom'" in text
