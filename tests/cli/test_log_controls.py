"""Log lines carry no controls a client sent (CR, LF, NUL, C1, U+2028/2029):
one record is one line, whatever the values it logs."""

import io
import logging
import sys

from outpost.config.model import LogSettings
from outpost.core.headers import CONTROL
from outpost.logs import make_handler


def record(msg, *args, exc_info=None):
    return logging.LogRecord("outpost.policy", logging.WARNING, __file__, 1, msg, args, exc_info)


def emitted(rec, **settings) -> str:
    stream = io.StringIO()
    handler, _ = make_handler(LogSettings(**settings), stream)
    handler.handle(rec)
    return stream.getvalue()


def test_values_with_controls_log_one_clean_line():
    out = emitted(record("locked %s: %s", "web/x\x85\u2028\r\nFAKE 250 ok\x1b[2J@example.com", "r"))
    line = out.rstrip("\n")
    assert "\n" not in line and not CONTROL.search(line)
    assert line.endswith("locked web/x    FAKE 250 ok [2J@example.com: r")


def test_the_line_before_a_traceback_is_cleaned_too():
    try:
        raise ValueError("boom")
    except ValueError:
        rec = record("error for %s", "a\u2029b\nc", exc_info=sys.exc_info())
    first, rest = emitted(rec).split("\n", 1)
    assert first.endswith("error for a b c") and "Traceback" in rest


def test_json_lines_are_one_line_too():
    out = emitted(record("x %s", "a\r\nb\x00c"), format="json")
    assert out.count("\n") == 1 and "a  b c" in out
